"""2:4 sparsity on the reference model without training: magnitude masks against the second-order (OBS,
SparseGPT-style) choice and update, each with and without BatchNorm re-estimation, top-1, agreement and flips
against FP32 on the same 1,000 evaluation images (PyTorch CPU: accuracy only, s24's speed needs TensorRT's
sparse kernels).

    python benchmarks/s24_update.py [--images 256]

Writes benchmarks/results/s24-update.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

from common import REF, ROOT, publish, reference_checkpoint, torch_top5

sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="calibration images the update is fitted on")
    a = p.parse_args()


    import calibration
    from calibration.images import Preprocess
    from compress.core import metrics as measure
    from compress.core import model as models
    from compress.prune import channels as prune

    pre = Preprocess()
    cache = ROOT / "runs" / "s24-update"
    teacher = models.load("resnet50-v1", reference_checkpoint())
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    recovery = calibration.load(REF / "imagenet-calib", pre, None, cache)

    def top5(net):
        return torch_top5(net, evaluation, pre)

    base = top5(teacher)
    rows = [{"variant": "fp32", **measure.accuracy(base, evaluation.labels, base), "seconds": 0}]
    for selection in ("magnitude", "second-order"):
        started = time.perf_counter()
        net = copy.deepcopy(teacher)
        fit = recovery.sample(a.images) if selection == "second-order" else None
        prune.sparsify_24(net, fit, pre)
        seconds = time.perf_counter() - started
        rows.append({"variant": f"s24 {selection}", **measure.accuracy(top5(net), evaluation.labels, base),
                     "seconds": round(seconds)})
        prune.recalibrate_bn(net, recovery, pre)
        rows.append({"variant": f"s24 {selection} + BN re-estimation",
                     **measure.accuracy(top5(net), evaluation.labels, base),
                     "seconds": round(time.perf_counter() - started)})
        print(rows[-2], rows[-1], flush=True)
    env = measure.environment()
    fp = rows[0]
    lines = ["# 2:4 sparsity: magnitude against the second-order update", "",
             f"Command: `python benchmarks/s24_update.py --images {a.images}`.",
             f"Machine: {env['cpu']}, {env['cpu_cores']} cores; torch {env['torch']}, Python {env['python']}.",
             "ResNet-50 v1; every conv whose input channels come in fours (52 of 53; not the RGB stem) keeps two of "
             "every four consecutive input-channel weights. Second-order: SparseGPT's column-by-column choice and "
             f"update from each conv's input Gram matrix on {a.images} calibration images (dense inputs, 256 "
             "positions per image, damping 1% of the mean diagonal). BN re-estimation on the 1,000 calibration "
             "images. No labels, no training. Accuracy on the 1,000 evaluation images with PyTorch on the CPU; "
             "agreement and flips against FP32 on the same images.", "",
             "| variant | top-1 | Δ vs FP32 | agreement | flips | CPU time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['top1']:.1f}% | {100 * (r['top1'] - fp['top1']):+.1f} | "
                     f"{100 * r['agreement']:.1f}% | {r['flips']} | {r['seconds']} s |")
    publish("s24-update", {"env": env, "images": a.images, "rows": rows}, lines)


if __name__ == "__main__":
    main()
