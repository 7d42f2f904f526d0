"""dN with the blocks after the first one dropped refined after their re-fit (`dropping.drop`, `refine_epochs`):
N blocks dropped greedily, re-fitted on IMAGES calibration images (drawn as `compress run` draws them), then
PASSES passes of Adam at step LR for these blocks (all of them whole; `compress run` moves whole blocks at
`ReconstructConfig.refine_lr / 10`, 1e-4). Evaluated with PyTorch on the CPU on the 1,000 reference evaluation images:
top-1, agreement with the FP32 predictions, flips, logit RMSE, CPU seconds of the recovery.

    python benchmarks/archive/drop_refine.py N:IMAGES:PASSES:LR ...     e.g. 5:512:0:1e-4 5:512:2:1e-3 5:512:2:1e-4
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import logits, reference_sets, scores  # noqa: E402


def main() -> None:
    from compress.prune import drop as dropping
    from compress.prune.config import ReconstructConfig

    teacher, pre, calib, evaluation = reference_sets()
    base = logits(teacher, evaluation, pre)
    for spec in sys.argv[1:]:
        n, images, passes, lr = spec.split(":")
        config = ReconstructConfig(refine_epochs=int(passes), refine_lr=10 * float(lr))  # whole blocks: a tenth
        started = time.perf_counter()
        net, facts = dropping.drop(teacher, calib.sample(int(images)), pre, int(n), config, progress=False)
        seconds = time.perf_counter() - started
        out = logits(net, evaluation, pre)
        print(json.dumps({"spec": spec, **scores(out, base, evaluation.labels),
                          "flips": int((out.argmax(1) != base.argmax(1)).sum()), "seconds": round(seconds),
                          "dropped": facts["blocks_dropped"]}), flush=True)


if __name__ == "__main__":
    main()
