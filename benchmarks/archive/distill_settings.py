"""What distillation settings do to a reconstructed pNN: reconstruct once on N calibration images (drawn as
`compress run` draws them), then for each EPOCHS:MIN_SCALE:TEMPERATURE:FEATURE_WEIGHT distil a copy on every
calibration image and evaluate it with PyTorch on the CPU on the 1,000 reference evaluation images: top-1,
agreement with FP32 and the RMS difference of the logits from FP32's.

    python benchmarks/archive/distill_settings.py N:RATIO SPEC [SPEC ...]     e.g. 1000:0.3 3:1.0:1:1 3:0.35:2:1
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import logits, reference_sets  # noqa: E402


def main() -> None:
    from compress.prune import distill, reconstruct

    teacher, pre, calib, evaluation = reference_sets()
    base = logits(teacher, evaluation, pre)
    n, ratio = sys.argv[1].split(":")
    pruned, _ = reconstruct.reconstruct(teacher, calib.sample(int(n)), pre, float(ratio), progress=False)

    def row(name: str, net, seconds: float) -> None:
        out = logits(net, evaluation, pre)
        top1 = out.argmax(1)
        print(json.dumps({"distillation": name, "seconds": round(seconds),
                          "top1": float((top1 == evaluation.labels).mean()),
                          "agreement": float((top1 == base.argmax(1)).mean()),
                          "logit_rmse": float(np.sqrt(((out - base) ** 2).mean()))}), flush=True)

    row("none", pruned, 0)
    for spec in sys.argv[2:]:
        epochs, min_scale, temperature, feature_weight = spec.split(":")
        student = copy.deepcopy(pruned)
        started = time.perf_counter()
        distill.distill(student, teacher, calib, pre, distill.DistillSpec(
            epochs=int(epochs), min_scale=float(min_scale), temperature=float(temperature),
            feature_weight=float(feature_weight)), progress=False)
        row(spec, student, time.perf_counter() - started)


if __name__ == "__main__":
    main()
