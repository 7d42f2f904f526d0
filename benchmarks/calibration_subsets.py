"""How much INT8 accuracy figures move with the calibration images alone: int8-cpu calibrated (as `compress run`
does: shared statistics, percentile 99.999) on several pseudo-random 512-image subsets of the 1,000 calibration
images, each scored against FP32 on the same 1,000 evaluation images.

    python benchmarks/calibration_subsets.py [--subsets 5] [--size 512]

Writes benchmarks/results/calibration-subsets.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import REF, ROOT, int8_cpu_setup

sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", type=int, default=5)
    p.add_argument("--size", type=int, default=512)
    a = p.parse_args()

    import numpy as np

    import calibration
    from calibration.images import Preprocess
    from compress.core import metrics as measure
    from compress.core import session as ort
    from compress.quantize import ranges
    from compress.quantize.ptq import PTQConfig, quantize

    pre = Preprocess()
    work = ROOT / "runs" / "calibration-subsets"
    fp32, evaluation, tensors, base = int8_cpu_setup(work, pre)
    every = calibration.load(REF / "imagenet-calib", pre, None, work)
    rows = []
    for seed in range(a.subsets):
        subset = every.sample(a.size, seed)
        stats = ranges.collect(fp32, subset, pre, tensors)
        path = work / f"int8-cpu-{seed}.onnx"
        quantize(fp32, path, subset, pre, "int8-cpu", PTQConfig(method="percentile", cpu="vnni"), statistics=stats)
        pred = measure.top5(ort.logits(path, evaluation, pre, as_written=False))
        rows.append({"seed": seed, **measure.accuracy(pred, evaluation.labels, base)})
        print(rows[-1], flush=True)
    fp = float((base[:, 0] == evaluation.labels).mean())
    top1 = np.array([r["top1"] for r in rows])
    agree = np.array([r["agreement"] for r in rows])
    env = measure.environment()
    results = ROOT / "benchmarks" / "results"
    (results / "calibration-subsets.json").write_text(json.dumps({"env": env, "fp32_top1": fp, "rows": rows},
                                                                 indent=2) + "\n")
    lines = ["# INT8 accuracy across calibration subsets", "",
             f"Command: `python benchmarks/calibration_subsets.py --subsets {a.subsets} --size {a.size}`.",
             f"Machine: {env['cpu']}, {env['cpu_cores']} cores ({', '.join(env['cpu_flags'])}); onnxruntime "
             f"{env['onnxruntime']}.",
             f"ResNet-50 v1 `int8-cpu` (8-bit weights), percentile 99.999 from shared statistics, calibrated on "
             f"{a.size} of the 1,000 calibration images drawn with seeds 0..{a.subsets - 1}; 1,000 evaluation "
             f"images, FP32 top-1 {100 * fp:.1f}%.", "",
             "| subset seed | top-1 | Δ vs FP32 | agreement | flips |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {100 * r['top1']:.1f}% | {100 * (r['top1'] - fp):+.1f} | "
                     f"{100 * r['agreement']:.1f}% | {r['flips']} |")
    lines += ["", f"Top-1 {100 * top1.mean():.2f}% ± {100 * top1.std(ddof=1):.2f} (mean ± sd over subsets), range "
              f"{100 * top1.min():.1f}–{100 * top1.max():.1f}; agreement {100 * agree.mean():.2f}% ± "
              f"{100 * agree.std(ddof=1):.2f}, range {100 * agree.min():.1f}–{100 * agree.max():.1f}."]
    (results / "calibration-subsets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
