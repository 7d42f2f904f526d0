"""How many unlabelled images the reconstruction needs: pNN re-fitted on N calibration images (drawn as
`compress run` draws them) with ridge damping D, evaluated with PyTorch on the CPU on the 1,000 reference evaluation
images: top-1, agreement with the FP32 predictions and the RMS difference of the logits from FP32's. ROUNDS
(optional, default `ReconstructConfig.relu_rounds`): the rounds that fit each conv to what passes its ReLU.

    python benchmarks/reconstruction_images.py N:RATIO:DAMP[:ROUNDS] ...     e.g. 1000:0.3:0.001 256:0.3:0.001:0
"""

from __future__ import annotations

import json
import sys
import time

from common import REF, ROOT, logits, reference_checkpoint, scores


def main() -> None:
    import calibration
    from calibration.images import Preprocess
    from compress.core import model as models
    from compress.prune import reconstruct
    from compress.prune.config import ReconstructConfig

    model = reference_checkpoint()
    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    teacher = models.load("resnet50-v1", model)
    calib = calibration.load(REF / "imagenet-calib", pre, None, cache)
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    base = logits(teacher, evaluation, pre)
    default_rounds = ReconstructConfig().relu_rounds
    for spec in sys.argv[1:]:
        fields = spec.split(":")
        n, ratio, damp = int(fields[0]), float(fields[1]), float(fields[2])
        rounds = int(fields[3]) if len(fields) > 3 else default_rounds
        config = ReconstructConfig(damp=damp, relu_rounds=rounds)
        started = time.perf_counter()
        net, _ = reconstruct.reconstruct(teacher, calib.sample(n), pre, ratio, config, progress=False)
        seconds = time.perf_counter() - started
        print(json.dumps({"images": n, "mac_reduction": ratio, "damp": damp, "relu_rounds": rounds,
                          "seconds": round(seconds), **scores(logits(net, evaluation, pre), base, evaluation.labels)}),
              flush=True)


if __name__ == "__main__":
    main()
