"""How many unlabelled images the reconstruction needs: pNN re-fitted on N calibration images (drawn as
`compress run` draws them) with ridge damping D, evaluated with PyTorch on the CPU on the 1,000 reference evaluation
images: top-1, agreement with the FP32 predictions and the RMS difference of the logits from FP32's. ROUNDS
(optional, default `reconstruct.RELU_ROUNDS`): the rounds that fit each conv to what passes its ReLU.

    python benchmarks/reconstruction_images.py N:RATIO:DAMP[:ROUNDS] ...     e.g. 1000:0.3:0.001 256:0.3:0.001:0
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT))


def logits(net, images, pre) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([net.eval()(torch.from_numpy(x)) for x, _ in images.batches(pre, 50)]).numpy()


def scores(out: np.ndarray, base: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1, agreement with FP32's top-1 and the RMS logit difference from FP32's (`base`)."""
    top1 = out.argmax(1)
    return {"top1": float((top1 == labels).mean()), "agreement": float((top1 == base.argmax(1)).mean()),
            "logit_rmse": float(np.sqrt(((out - base) ** 2).mean()))}


def reference_model() -> str:
    """The reference checkpoint's path (fetched and converted by get_resnet50.py on first use)."""
    return subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def reference_sets() -> tuple:
    """(FP32 reference model in eval mode, its preprocessing, the 1,000 calibration images, the 1,000 evaluation
    images), the images cached under runs/reference/cache."""
    import calibration
    from calibration.images import Preprocess
    from compress import model as models

    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    return (models.load("resnet50-v1", reference_model()).eval(), pre,
            calibration.load(REF / "imagenet-calib", pre, None, cache),
            calibration.load(REF / "imagenet-val", pre, None, cache))


def main() -> None:
    import calibration
    from calibration.images import Preprocess
    from compress import model as models
    from compress import reconstruct

    model = reference_model()
    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    teacher = models.load("resnet50-v1", model)
    calib = calibration.load(REF / "imagenet-calib", pre, None, cache)
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    base = logits(teacher, evaluation, pre)
    default_rounds = reconstruct.RELU_ROUNDS
    for spec in sys.argv[1:]:
        fields = spec.split(":")
        n, ratio, damp = int(fields[0]), float(fields[1]), float(fields[2])
        reconstruct.RELU_ROUNDS = rounds = int(fields[3]) if len(fields) > 3 else default_rounds
        started = time.perf_counter()
        net, _ = reconstruct.reconstruct(teacher, calib.sample(n), pre, ratio, damp=damp, progress=False)
        seconds = time.perf_counter() - started
        print(json.dumps({"images": n, "mac_reduction": ratio, "damp": damp, "relu_rounds": rounds,
                          "seconds": round(seconds), **scores(logits(net, evaluation, pre), base, evaluation.labels)}),
              flush=True)


if __name__ == "__main__":
    main()
