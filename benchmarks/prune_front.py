"""Every measured pruning row on one front: top-1 against batch-1 speedup on onnxruntime CPU, each speedup
against FP32 in its own run (runs are minutes to hours apart; a ratio within one run is what carries over).

    python benchmarks/prune_front.py

Reads the committed reports in benchmarks/results (prune-reconstruct, prune-l1-bn, prune-distill, drop-d5 and,
when present, prune-p20, prune-p50, prune-obs, prune-1000, prune-relu, prune-stages, prune-refine, prune-refine6,
prune-budget, prune-budget8 and prune-giveback); writes
benchmarks/results/prune-front.{md,png}.
"""

from __future__ import annotations

import json

from common import ROOT

RESULTS = ROOT / "benchmarks" / "results"
# report -> how its pruned rows were recovered (the row's own recovery record gives images and minutes)
SOURCES = {
    "prune-l1-bn.json": "Torch-Pruning L1 + BN re-estimation",
    "prune-reconstruct.json": "reconstruction (128 images)",
    "prune-distill.json": "reconstruction (512) + distillation",
    "prune-p20.json": "reconstruction (512) + distillation",
    "prune-p50.json": "reconstruction (512) + distillation",
    "drop-d5.json": "block dropping: re-fit (512) + distillation",
    "prune-obs.json": "reconstruction (512, obs channels) + distillation",
    "prune-1000.json": "reconstruction (1,000, obs channels) + distillation",
    "prune-relu.json": "reconstruction (1,000, obs, fitted through the ReLU) + distillation",
    "prune-stages.json": "reconstruction (1,000, obs, ReLU, last stage whole) + distillation",
    "prune-refine.json": "reconstruction (1,000, obs, ReLU, last stage whole, refined) + distillation",
    "prune-refine6.json": "reconstruction (1,000, obs, ReLU, last stage whole, 6 refinement passes)",
    "prune-budget.json": "reconstruction (1,000, obs, ReLU, last stage whole, refined for the 45-minute budget)",
    "prune-budget8.json": "reconstruction (1,000, obs, ReLU, last stage whole, the whole 45-minute budget refined)",
    "prune-giveback.json": "as prune-budget8, rounding's excess channels given back (30.2% fewer MACs, not 31.2%)",
    "prune-reserve.json": "as prune-giveback, the schedule keeping 2% of the budget in reserve",
    "prune-shares.json": "as prune-reserve, stage shares 1.2 : 1.2 : 0.85 : 0",
    "prune-shares2.json": "as prune-reserve, stage shares 1.5 : 1.2 : 0.7 : 0 (the default)",
    "prune-default.json": "as prune-reserve, stage shares 1.5 : 1.2 : 0.7 : 0 (the default)",
}

PAGES = {"drop-d5": "prune-distill.md#block-dropping-dn-against-channel-pruning", "prune-p20": "prune-distill.md",
         "prune-obs": "prune-distill.md#which-channels-stay",
         "prune-1000": "prune-distill.md#the-default-since-reconstruction-on-1000-images",
         "prune-relu": "prune-distill.md#the-default-since-each-conv-fitted-through-its-relu",
         "prune-stages": "prune-distill.md#the-default-since-the-last-stage-left-whole",
         "prune-refine": "prune-distill.md#the-default-since-each-block-refined-by-adam-after-its-fit",
         "prune-refine6": "prune-distill.md#the-default-since-the-refinement-takes-the-recovery-budget",
         "prune-budget": "prune-distill.md#the-default-since-the-refinement-takes-the-recovery-budget",
         "prune-budget8": "prune-distill.md#the-default-since-the-refinement-takes-the-whole-budget",
         "prune-giveback": "prune-distill.md#the-default-since-rounding-gives-back-what-it-removed-beyond-nn",
         "prune-reserve": "prune-distill.md#the-default-since-rounding-gives-back-what-it-removed-beyond-nn",
         "prune-shares": "prune-distill.md#the-default-since-the-cut-moved-from-layer3-to-layer1-and-layer2",
         "prune-shares2": "prune-distill.md#the-default-since-the-cut-moved-from-layer3-to-layer1-and-layer2",
         "prune-default": "prune-distill.md#the-default-since-the-cut-moved-from-layer3-to-layer1-and-layer2",
         "prune-p50": "prune-distill.md#p50-about-2x-fewer-macs-with-reconstruction-and-distillation"}


def recovery_minutes(row: dict) -> float | None:
    total = 0.0
    for step in row.get("recovery") or []:
        if isinstance(step, dict) and "minutes" in step:
            total += step["minutes"]
        elif isinstance(step, dict) and isinstance(step.get("distillation"), dict):
            total += step["distillation"].get("seconds", 0) / 60
    return round(total, 1) if total else None


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name, how in SOURCES.items():
        path = RESULTS / name
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        for r in report["results"]:
            if r["backend"] != "onnxruntime-cpu" or r.get("top1") is None:
                continue
            pruned = r["variant"] not in ("fp32", "int8-cpu", "int8")
            if not pruned and name != "prune-distill.json":  # FP32 and int8-cpu once, from the default run
                continue
            rows.append({"source": name.removesuffix(".json"), "recovery": how if pruned else "—",
                         "variant": r["variant"], "gmacs": r["macs"] / 1e9, "top1": r["top1"],
                         "delta": r["top1_delta"], "agreement": r["agreement"], "flips": r["flips"],
                         "speedup": r["speedup"], "minutes": recovery_minutes(r) if pruned else None})
    lines = ["# Pruning front: every measured row", "",
             "Command: `python benchmarks/prune_front.py` (collects the committed reports below; each was taken by "
             "`compress run` on a 2-core AMD EPYC, onnxruntime CPU, batch 1, p50 over interleaved rounds, speedup "
             "against FP32 in the same run; 1,000 evaluation images, agreement and flips against FP32 on the same "
             "images; recovery from calibration images only, no labels).", "",
             "| variant | recovery | GMACs | top-1 | Δ vs FP32 | agreement | flips | speedup | recovery min | source |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: (r["recovery"] != "—", r["source"], r["variant"])):
        minutes = "" if r["minutes"] is None else f"{r['minutes']:g}"
        lines.append(f"| {r['variant']} | {r['recovery']} | {r['gmacs']:.2f} | {100 * r['top1']:.1f}% | "
                     f"{r['delta']:+.1f} | {100 * r['agreement']:.1f}% | {r['flips']} | {r['speedup']:.2f}x | "
                     f"{minutes} | [{r['source']}]({PAGES.get(r['source'], r['source'] + '.md')}) |")
    lines += ["", "![top-1 against speedup](prune-front.png)"]
    (RESULTS / "prune-front.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(8, 5.5))
    palette = ["tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:green", "tab:brown", "tab:cyan", "tab:olive",
               "tab:pink", "tab:gray", "black", "gold", "navy", "teal", "magenta", "lime"]
    colors = dict(zip(dict.fromkeys(SOURCES.values()), palette))
    seen = set()
    for r in rows:
        x, y = r["speedup"], 100 * r["top1"]
        if r["recovery"] == "—":
            style = dict(marker="*", s=260, color="goldenrod") if r["variant"] == "fp32" else dict(
                marker="D", s=90, color="black")
            ax.scatter([x], [y], zorder=3, **style)
            ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
            continue
        label = None if r["recovery"] in seen else r["recovery"]
        seen.add(r["recovery"])
        hollow = r["variant"].endswith("int8-cpu")
        ax.scatter([x], [y], marker="o", s=60, zorder=3, label=label, edgecolors=colors[r["recovery"]],
                   color="white" if hollow else colors[r["recovery"]])
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.axhline(78.0, color="gray", lw=0.8, ls=":")
    ax.annotate("FP32 − 2 points", (ax.get_xlim()[1], 78.0), textcoords="offset points", xytext=(-4, 3), fontsize=8,
                color="gray", ha="right")
    ax.set_xlabel("speedup over FP32, batch 1, onnxruntime CPU (same run)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("pruned variants (filled: FP32 arithmetic; hollow: -int8-cpu sibling); ★ FP32, ◆ int8-cpu",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    fig.savefig(RESULTS / "prune-front.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
