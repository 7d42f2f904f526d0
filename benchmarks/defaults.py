"""The pNN recovery's defaults, re-examined where nothing is reported: each row changes one default of `compress
run`'s p30 recovery, fits it on images of one half of the calibration folder and scores it on the other half, by
its agreement with FP32 (no label is read, no evaluation image is touched).

    python benchmarks/defaults.py [--images 256] [--ratio 0.3] [--fold 0] [--rows default,refine-0,...] [--render]

The 1,000 calibration images are split in two fixed halves (seeded by --fold): the recovery fits on --images of
half A (drawn as `compress run` draws its recovery images), every row is scored on all of half B. Against the
default row, each row counts the half-B images it agrees with FP32 on that the default does not (+) and the reverse
(-); the paired standard error of that difference says whether a change is a gain or noise (two standard errors:
about 95%). Rows are kept in runs/defaults-<fold>-<images>/rows.jsonl as they finish, so a stopped study resumes at
its next row; the table is rewritten after every row (benchmarks/results/defaults.{md,json,png} for fold 0 at 256
images, defaults-<fold>-<images>.* otherwise), and --render rewrites it from the rows kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from common import RESULTS, ROOT, bounded, commit, logit_rmse, logits, machine, publish, reference_sets

# name -> (what it changes from the default, the ReconstructConfig fields it sets); the default is what `compress
# run` uses (`run.recovery.reconstruct_config` of the default PruneSpec)
ROWS = {
    "default": ("today's default", {}),  # spelled out from the config by `described`
    "refine-0": ("no refinement passes (the fit alone)", {"refine_epochs": 0}),
    "relu-0": ("no ReLU rounds (the plain least-squares fit)", {"relu_rounds": 0}),
    "energy": ("channels chosen by activation energy, not OBS", {"selection": "energy"}),
    "uniform": ("the same share cut from every block", {"allocation": "uniform"}),
    "shares-1.2": ("stage shares 1.2 : 1.2 : 0.85 : 0 (the default before)", {"stage_shares": (1.2, 1.2, 0.85, 0.0)}),
    "shares-even": ("stage shares 1 : 1 : 1 : 0", {"stage_shares": (1.0, 1.0, 1.0, 0.0)}),
    "shares-all": ("stage shares 1 : 1 : 1 : 1 (the last stage cut too: the uniform cut again, the same model)",
                   {"stage_shares": (1.0, 1.0, 1.0, 1.0)}),
    "refine-lr-3e-4": ("refinement at lr 3e-4", {"refine_lr": 3e-4}),
    "refine-2": ("2 refinement passes", {"refine_epochs": 2}),
    "refine-8": ("8 refinement passes", {"refine_epochs": 8}),
    "damp-1e-2": ("ridge damping 1e-2", {"damp": 1e-2}),
    "positions-256": ("256 sampled positions an image in the fits, not 512", {"positions": 256}),
    "window-0.5": ("refinement steps on random windows of half each block's output side (`refine_window`)",
                   {"refine_window": 0.5}),
    "window-0.5-8": ("the same windows, 8 refinement passes", {"refine_window": 0.5, "refine_epochs": 8}),
}


def described(name: str, config) -> str:
    """What a row changes; for the default, the defaults the other rows change, read from `config`."""
    if name != "default":
        return ROWS[name][0]
    c = config
    return (f"today's default: stage shares {' : '.join(f'{s:g}' for s in c.stage_shares)}, "
            f"{c.selection.upper() if c.selection == 'obs' else c.selection} channels, {c.relu_rounds} ReLU rounds, "
            f"{c.refine_epochs} refinement passes at lr {c.refine_lr:g} on the whole map, damping {c.damp:g}")


def folds(n: int, fold: int) -> tuple[list[int], list[int]]:
    """Half A (the recovery's images) and half B (the scored ones) of n images, fixed by `fold`."""
    order = np.random.default_rng(fold).permutation(n).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2:])


def paired(agree: np.ndarray, base: np.ndarray) -> tuple[int, int, float]:
    """Images a row agrees on that the default does not, the reverse, and the standard error of their difference
    (a paired difference of proportions, in images)."""
    gained, lost = int((agree & ~base).sum()), int((~agree & base).sum())
    n = len(agree)
    return gained, lost, math.sqrt(max(0.0, gained + lost - (gained - lost) ** 2 / n))


def render(rows: list[dict], a: argparse.Namespace, code: str, env: dict, config) -> list[str]:
    base = next((np.array(r["agrees"], bool) for r in rows if r["row"] == "default"), None)
    shown = f"python benchmarks/defaults.py --images {a.images} --ratio {a.ratio} --fold {a.fold} --rows {a.rows}"
    n = len(rows[0]["agrees"])
    lines = ["# The p30 recovery's defaults, re-examined on the calibration folder", "",
             f"Command: `{shown}` (script at commit {code}; each row's own code is named below; machine: "
             f"{machine(env)}).", "",
             f"Each row fits p{round(a.ratio * 100)} on {a.images} images of one half of `imagenet-calib` and is "
             f"scored on the other half ({n} images) by agreement with FP32. No label is read and no `imagenet-val` "
             "image is used: this is where defaults are chosen, not where they are reported. ± is two paired "
             "standard errors of the difference from the default, in images; a difference inside it is noise.", "",
             "| row | change | agreement | flips | vs default (+ / −) | difference ± 2 SE | verdict | logit RMSE | "
             "MACs | minutes | load |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        agree = np.array(r["agrees"], bool)
        if base is None or r["row"] == "default":
            vs, diff, verdict = "—", "—", "—"
        else:
            gained, lost, se = paired(agree, base)
            d = gained - lost
            vs, diff = f"+{gained} / −{lost}", f"{d:+d} ± {2 * se:.0f}"
            verdict = "noise" if abs(d) <= 2 * se else ("better" if d > 0 else "worse")
        lines.append(f"| {r['row']} | {described(r['row'], config)} | {agree.mean():.1%} | {int((~agree).sum())} | "
                     f"{vs} | {diff} | {verdict} | {r['logit_rmse']:.3f} | {r['macs']:.3f} | {r['seconds'] / 60:.1f} | "
                     f"{r.get('load', '—')} |")
    commits: dict = {}
    for r in rows:
        commits.setdefault(r.get("commit", "not recorded"), []).append(r["row"])
    lines += ["", "Minutes: the row's wall time; load: the 1-minute load average as it ended (2 cores: about 2 on a "
              "quiet machine; a row beside other work takes longer and fits the same model). The code each row ran: "
              + "; ".join(f"{c}: {', '.join(names)}" for c, names in commits.items()) + "."]
    missing = [name for name in a.rows.split(",") if name not in {r["row"] for r in rows}]
    if missing:
        lines += ["", f"Not yet run: {', '.join(missing)} (rerun the command: it resumes)."]
    return lines


def plot(rows: list[dict], path, a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(np.array(r["agrees"], bool) for r in rows if r["row"] == "default")
    others = [r for r in rows if r["row"] != "default"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(others) + 1.4))
    for i, r in enumerate(others):
        gained, lost, se = paired(np.array(r["agrees"], bool), base)
        ax.errorbar(gained - lost, i, xerr=2 * se, fmt="o", color="C0", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(others)), [r["row"] for r in others])
    ax.set_xlabel("images agreeing with FP32, minus the default's (± 2 paired SE)")
    ax.set_title(f"p{round(a.ratio * 100)} recovery defaults on held-out calibration images "
                 f"(fold {a.fold}, {a.images} recovery images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=bounded(int, 16, 500), default=256, help="recovery images, drawn from half A")
    p.add_argument("--ratio", type=bounded(float, 0.05, 0.6), default=0.3, help="the MACs pNN removes")
    p.add_argument("--fold", type=bounded(int, 0, 1000), default=0,
                   help="seeds the split of the calibration folder in halves")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--render", action="store_true", help="rewrite the results from the rows kept, run nothing")
    a = p.parse_args()
    names = a.rows.split(",")
    if "default" not in names or any(n not in ROWS for n in names):
        p.error(f"--rows: a comma-separated list of {', '.join(ROWS)}, with default")
    from compress.core.metrics import environment
    from compress.prune import allocate, reconstruct
    from compress.run.recipe import PruneSpec
    from compress.run.recovery import reconstruct_config

    code, env, default = commit(), environment(), reconstruct_config(PruneSpec())
    # fold 0 at 256 images is the study the docs cite; other folds and sizes are published beside it
    name = "defaults" if (a.fold, a.images) == (0, 256) else f"defaults-{a.fold}-{a.images}"
    work = ROOT / "runs" / f"defaults-{a.fold}-{a.images}"
    done = work / "rows.jsonl"
    data = json.loads((RESULTS / f"{name}.json").read_text()) if a.render else {}
    if done.exists():
        kept = [json.loads(line) for line in done.read_text().splitlines()]
    else:  # nothing run here yet; on a fresh checkout --render reads the rows the results file holds
        kept = data.get("rows", [])
    rows = sorted((r for r in kept if r["row"] in names), key=lambda r: names.index(r["row"]))
    if a.render:
        publish(name, {**data, "command": vars(a) | {"render": False}, "rows": rows},
                render(rows, a, code, env, default))
        plot(rows, RESULTS / f"{name}.png", a)
        return
    teacher, pre, calib, _ = reference_sets()
    half_a, half_b = folds(len(calib), a.fold)
    fit_on = calib.take(half_a, f"half A of fold {a.fold}").sample(a.images)
    scored = calib.take(half_b, f"half B of fold {a.fold}")
    assert not set(fit_on.hashes) & set(scored.hashes), "the halves share an image"
    fp32 = logits(teacher, scored, pre)
    full = allocate.macs(teacher, pre.crop)
    work.mkdir(parents=True, exist_ok=True)
    for row_name in names:
        if any(r["row"] == row_name for r in rows):
            continue
        print(f"{row_name}: {described(row_name, default)}", flush=True)
        started = time.perf_counter()
        net, _ = reconstruct.reconstruct(teacher, fit_on, pre, a.ratio, default.replace(**ROWS[row_name][1]))
        seconds = time.perf_counter() - started
        out = logits(net, scored, pre)
        changes = {k: list(v) if isinstance(v, tuple) else v for k, v in ROWS[row_name][1].items()}
        row = {"row": row_name, "changes": changes, "seconds": round(seconds), "load": round(os.getloadavg()[0], 1),
               "commit": code, "macs": round(allocate.macs(net, pre.crop) / full, 4),
               "logit_rmse": logit_rmse(out, fp32), "agrees": (out.argmax(1) == fp32.argmax(1)).astype(int).tolist()}
        with open(done, "a") as f:  # one line a row, flushed before the next starts: a stop loses no finished row
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        rows.sort(key=lambda r: names.index(r["row"]))
        publish(name, {"command": vars(a), "machine": machine(env), "recovery_images": fit_on.hashes,
                       "scored_images": scored.hashes, "rows": rows}, render(rows, a, code, env, default))
        if len(rows) > 1 and rows[0]["row"] == "default":
            plot(rows, RESULTS / f"{name}.png", a)


if __name__ == "__main__":
    main()
