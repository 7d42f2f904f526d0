"""A saved pruned model (`model.pt` of a variant, or the `pruned.pt` a recovery keeps in the run's cache before
distillation) evaluated with PyTorch on the CPU on the 1,000 reference evaluation images, as
`reconstruction_images.py` evaluates: top-1, agreement with the FP32 predictions, flips and the RMS difference of
the logits from FP32's.

    python benchmarks/evaluate_pruned.py MODEL.pt ...
"""

from __future__ import annotations

import json
import sys

from common import REF, ROOT, logits, reference_checkpoint, scores


def main() -> None:
    import calibration
    from calibration.images import Preprocess
    from compress.core import model as models
    from compress.prune import channels as prune

    pre = Preprocess()
    evaluation = calibration.load(REF / "imagenet-val", pre, None, ROOT / "runs" / "reference" / "cache")
    base = logits(models.load("resnet50-v1", reference_checkpoint()), evaluation, pre)
    for path in sys.argv[1:]:
        record = prune.load_record(path)
        out = logits(prune.from_record(record, path), evaluation, pre)
        print(json.dumps({"model": path, "steps": record["facts"].get("steps"),
                          **scores(out, base, evaluation.labels),
                          "flips": int((out.argmax(1) != base.argmax(1)).sum())}), flush=True)


if __name__ == "__main__":
    main()
