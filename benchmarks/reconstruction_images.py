"""How many unlabelled images the reconstruction needs: pNN re-fitted on N calibration images with ridge damping D,
evaluated on the 1,000 reference evaluation images with onnxruntime CPU (top-1, and agreement with the FP32
predictions that `make reference` wrote to runs/reference).

    python benchmarks/reconstruction_images.py N:RATIO:DAMP [N:RATIO:DAMP ...]     e.g. 512:0.2:0.001
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT))


def main() -> None:
    import calibration
    from calibration.images import Preprocess
    from compress import export, reconstruct
    from compress import model as models
    from compress.backends import onnxruntime as ort

    model = subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    teacher = models.load("resnet50-v1", model)
    calib = calibration.load(REF / "imagenet-calib", pre, 512, cache)
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    base = np.load(ROOT / "runs" / "reference" / "results" / "onnxruntime-cpu" / "fp32" / "top5.npy")[:, 0]
    with tempfile.TemporaryDirectory(prefix="compress-recon-") as tmp:
        for spec in sys.argv[1:]:
            n, ratio, damp = int(spec.split(":")[0]), float(spec.split(":")[1]), float(spec.split(":")[2])
            started = time.perf_counter()
            net, _ = reconstruct.reconstruct(teacher, calib.head(n), pre, ratio, damp=damp, progress=False)
            seconds = time.perf_counter() - started
            path = Path(tmp) / "model.onnx"
            export.export(net, path, pre.crop, {"compress.preprocess": json.dumps(pre.to_dict())})
            top1 = ort.logits(path, evaluation, pre, as_written=False).argmax(1)
            print(json.dumps({"images": n, "mac_reduction": ratio, "damp": damp, "seconds": round(seconds),
                              "top1": float((top1 == evaluation.labels).mean()),
                              "agreement": float((top1 == base).mean())}), flush=True)


if __name__ == "__main__":
    main()
