"""Where to prune: pNN reconstructed on N calibration images with each stage's share of the pruned inner-channel
fraction given (S1..S4 for layer1..layer4: 1 is an even share, 0 leaves the stage whole; the fraction is then
searched so the model has RATIO fewer MACs), evaluated with PyTorch on the CPU on the 1,000 reference evaluation
images as `reconstruction_images.py` evaluates: top-1, agreement with FP32 and the RMS logit difference.

    python benchmarks/stage_shares.py N:RATIO:S1:S2:S3:S4 ...     e.g. 256:0.3:1:1:1:0 256:0.3:1:1:1:1
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
    from compress.prune import allocate, reconstruct
    from compress.prune.config import ReconstructConfig

    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    teacher = models.load("resnet50-v1", reference_checkpoint())
    calib = calibration.load(REF / "imagenet-calib", pre, None, cache)
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    base = logits(teacher, evaluation, pre)
    full = allocate.macs(teacher, pre.crop)
    for spec in sys.argv[1:]:
        n, ratio, *shares = spec.split(":")
        config = ReconstructConfig(stage_shares=tuple(float(s) for s in shares))
        started = time.perf_counter()
        net, facts = reconstruct.reconstruct(teacher, calib.sample(int(n)), pre, float(ratio), config, progress=False)
        seconds = time.perf_counter() - started
        print(json.dumps({"images": int(n), "mac_reduction": float(ratio), "stage_shares": shares,
                          "macs": round(allocate.macs(net, pre.crop) / full, 4),
                          "inner_channels": facts["inner_channels"], "seconds": round(seconds),
                          **scores(logits(net, evaluation, pre), base, evaluation.labels)}), flush=True)


if __name__ == "__main__":
    main()
