"""Block dropping (dN) on the reference model without training: which blocks go (each block's KL measured alone,
or greedily with those already chosen gone) and what the re-fit of the blocks after them buys, top-1, agreement
and flips against FP32 on the same 1,000 evaluation images (PyTorch CPU: accuracy only; `compress run` measures
the latency).

    python benchmarks/drop_blocks.py [--drops 5] [--images 512]

Writes benchmarks/results/drop-blocks.{md,json}.
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
    p.add_argument("--drops", default="5", help="comma list of N (blocks dropped)")
    p.add_argument("--images", type=int, default=512, help="calibration images the re-fit uses")
    a = p.parse_args()


    import calibration
    from calibration.images import Preprocess
    from compress.core import metrics as measure
    from compress.core import model as models
    from compress.prune import channels as prune
    from compress.prune import drop as dropping
    from compress.prune.config import DEFAULT

    pre = Preprocess()
    cache = ROOT / "runs" / "drop-blocks"
    teacher = models.load("resnet50-v1", reference_checkpoint()).eval()
    evaluation = calibration.load(REF / "imagenet-val", pre, None, cache)
    recovery = calibration.load(REF / "imagenet-calib", pre, None, cache).sample(a.images)

    def top5(net):
        return torch_top5(net, evaluation, pre)

    base = top5(teacher)
    macs = prune.count(teacher, pre.crop)["macs"]
    rows = [{"variant": "fp32", **measure.accuracy(base, evaluation.labels, base), "gmacs": macs / 1e9,
             "blocks": [], "seconds": 0}]
    for n in (int(x) for x in a.drops.split(",")):
        for greedy in (False, True):
            started = time.perf_counter()
            net, facts = dropping.drop(teacher, recovery, pre, n,
                                       DEFAULT.replace(drop_selection="greedy" if greedy else "independent"))
            seconds = round(time.perf_counter() - started)
            bare = copy.deepcopy(teacher)
            prune.drop_blocks(bare, facts["blocks_dropped"])
            common = {"blocks": facts["blocks_dropped"], "gmacs": prune.count(net, pre.crop)["macs"] / 1e9}
            for label, model, secs in (("dropped", bare, None), ("dropped + re-fit", net, seconds)):
                rows.append({"variant": f"d{n} {facts['selection']}, {label}", **common, "seconds": secs,
                             **measure.accuracy(top5(model), evaluation.labels, base)})
                print(rows[-1], flush=True)
    env = measure.environment()
    fp = rows[0]
    lines = ["# Block dropping: which blocks, and what the re-fit buys", "",
             f"Command: `python benchmarks/drop_blocks.py --drops {a.drops} --images {a.images}`.",
             f"Machine: {env['cpu']}, {env['cpu_cores']} cores; torch {env['torch']}, Python {env['python']}.",
             "ResNet-50 v1; candidates are the 12 blocks whose shortcut is the identity. Independent: the N with the "
             "lowest KL(FP32 || dropped) when each is dropped alone; greedy: one at a time, each measured with those "
             "already chosen gone (KL on 64 calibration images). Re-fit: every block after the first one dropped, "
             f"ridge least squares to the FP32 activations on {a.images} calibration images (`dropping.drop`). "
             "No labels, no training, no distillation. Accuracy on the 1,000 evaluation images with PyTorch on the "
             "CPU; agreement and flips against FP32 on the same images.", "",
             "| variant | blocks dropped | GMACs | top-1 | Δ vs FP32 | agreement | flips | CPU time |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        secs = "" if r["seconds"] is None else f"{r['seconds']} s"
        lines.append(f"| {r['variant']} | {', '.join(r['blocks']) or '—'} | {r['gmacs']:.2f} | "
                     f"{100 * r['top1']:.1f}% | {100 * (r['top1'] - fp['top1']):+.1f} | "
                     f"{100 * r['agreement']:.1f}% | {r['flips']} | {secs} |")
    publish("drop-blocks", {"env": env, "images": a.images, "rows": rows}, lines)


if __name__ == "__main__":
    main()
