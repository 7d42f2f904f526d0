"""What one refinement pass costs, block by block, on the whole map and on random windows (`refine_window`): the
seconds `compress run`'s planner estimates a pass over the recovery images at (`refine.pass_seconds`: one timed
Adam step of each block, pruned to the default p30's cut), both settings measured in one run, alternately,
`--repeats` times, so their ratio carries its spread.

    python benchmarks/refine_cost.py [--window 0.5] [--images 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

from common import REF, bounded, commit, machine, publish, reference_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=bounded(float, 0.05, 0.95), default=0.5,
                   help="the fraction of each block's output side")
    p.add_argument("--images", type=bounded(int, 16, 100_000), default=1000, help="recovery images a pass goes over")
    p.add_argument("--repeats", type=bounded(int, 2, 50), default=5, help="alternate measurements of each setting")
    p.add_argument("--ratio", type=bounded(float, 0.05, 0.6), default=0.3, help="the MACs pNN removes")
    a = p.parse_args()
    import torch

    from calibration.images import Preprocess
    from compress.core import model as models
    from compress.core.metrics import environment
    from compress.prune import allocate, reconstruct
    from compress.prune.refine import pass_seconds, window_side
    from compress.run.recipe import PruneSpec
    from compress.run.recovery import reconstruct_config

    torch.manual_seed(0)
    teacher, pre = models.load("resnet50-v1", reference_checkpoint()).eval(), Preprocess()
    config = reconstruct_config(PruneSpec())
    counts, _ = reconstruct.cut(teacher, pre.crop, a.ratio, config)
    bs = allocate.blocks(teacher)
    stages = [name for name, _ in teacher.named_children() if name.startswith("layer")]
    stage_of = [s for s in stages for _ in getattr(teacher, s)]
    outputs = {b: o for b, (_, o) in allocate.shapes(teacher, pre.crop, bs).items()}
    whole, windowed = [], []
    for r in range(a.repeats):
        print(f"repeat {r + 1} of {a.repeats}", flush=True)
        whole.append(pass_seconds(teacher, counts, pre.crop, a.images, config.refine_batch, bs, 1.0))
        windowed.append(pass_seconds(teacher, counts, pre.crop, a.images, config.refine_batch, bs, a.window))
    ratios = [sum(w) / sum(f) for w, f in zip(windowed, whole)]
    rows = []
    for s in stages:
        idx = [i for i, name in enumerate(stage_of) if name == s]
        f = statistics.median(sum(run[i] for i in idx) for run in whole)
        w = statistics.median(sum(run[i] for i in idx) for run in windowed)
        side = outputs[bs[idx[0]]][-1]  # every block of a stage gives the same side
        rows.append({"stage": s, "output_side": side, "window_side": window_side(side, a.window),
                     "whole_seconds": round(f, 1), "window_seconds": round(w, 1), "ratio": round(w / f, 3)})
    env = environment()
    data = {"command": vars(a), "machine": machine(env), "reference": str(REF), "rows": rows,
            "total_ratios": [round(x, 3) for x in ratios],
            "whole_seconds": [round(sum(x), 1) for x in whole], "window_seconds": [round(sum(x), 1) for x in windowed]}
    lo, mid, hi = min(ratios), statistics.median(ratios), max(ratios)
    lines = ["# A refinement pass on the whole map and on windows", "",
             f"Command: `python benchmarks/refine_cost.py --window {a.window:g} --images {a.images} --repeats "
             f"{a.repeats} --ratio {a.ratio:g}` (commit {commit()}; machine: {machine(env)}).", "",
             f"Seconds one refinement pass over {a.images} images takes, per stage of ResNet-50 pruned to the "
             f"default p{round(a.ratio * 100)} cut (medians of {a.repeats} alternating measurements of one timed Adam "
             "step a block, as the planner of `--recovery-minutes` measures it). A window of a fraction f of the "
             "output side is f of it plus a one-pixel rim that is computed and not scored.", "",
             "| stage | output side | window side | whole map, s | windows, s | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['stage']} | {r['output_side']} | {r['window_side']} | {r['whole_seconds']} | "
              f"{r['window_seconds']} | {r['ratio']:.2f} |" for r in rows]
    lines += ["", f"A whole pass on windows costs {mid:.2f} of a pass on the whole map (median; {lo:.2f} to {hi:.2f} "
              f"over the {a.repeats} repeats)."]
    publish("refine-cost", data, lines)


if __name__ == "__main__":
    main()
