"""The report's plots: accuracy against latency (Pareto front marked) and memory, per backend."""

from __future__ import annotations

from pathlib import Path

from compress.core.rundir import RunDir
from compress.core.store import atomic_path, read_json
from compress.report.data import MEMORY_PLOT, PLOT, backends_of, label, on_target, sensitivity_plot


def plots(root: Path, data: dict, run_root: Path | None = None) -> None:
    """The plots into `root`; paths recorded in the results are resolved inside `run_root` (default: root)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in data["results"] if r.get("top1") is not None]
    backends = backends_of(results)
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.5), squeeze=False)
    for ax, backend in zip(axes[0], backends):  # one panel per device: latencies of two devices don't compare
        mine = [r for r in results if r["backend"] == backend]
        front = sorted((r for r in mine if r["pareto"]), key=lambda r: r["latency_ms"]["p50"])
        ax.plot([r["latency_ms"]["p50"] for r in front], [100 * r["top1"] for r in front], "--", color="gray",
                lw=1, label="Pareto front")
        for r in mine:
            x, y = r["latency_ms"]["p50"], 100 * r["top1"]
            style = dict(marker="*", s=220, color="goldenrod") if r["variant"] == "fp32" else dict(
                marker="o", s=70, color="tab:blue" if on_target(r) else "white", edgecolors="tab:blue")
            if r.get("latency_spread_ms"):  # the round-to-round spread of the median
                lo, hi = r["latency_spread_ms"]
                ax.errorbar([x], [y], xerr=[[max(x - lo, 0)], [max(hi - x, 0)]], color="gray", lw=1, zorder=2)
            if r.get("top1_delta_ci"):  # the 95% interval of its top-1 difference from FP32, around its top-1
                lo, hi = r["top1_delta_ci"]
                delta = r["top1_delta"]
                ax.errorbar([x], [y], yerr=[[max(delta - lo, 0)], [max(hi - delta, 0)]], color="tab:blue", lw=1,
                            alpha=0.5, zorder=2)
            ax.scatter([x], [y], zorder=3, **style)
            ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.margins(0.2)
        ax.set_xlabel(f"latency p50, batch 1 (ms) on {backend}")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("accuracy vs latency (★ FP32; hollow: not on its target runtime)\nbars: round spread of "
                     "p50, 95% interval of Δ top-1", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    _save(fig, root / PLOT)

    for r in data["results"]:
        if r.get("fallback") and r["fallback"].get("kept") is not None:
            ranking = read_json(RunDir(run_root or root).inside(r["fallback"]["sensitivity"]))["layers"][:20]
            kept = set(r["fallback"]["kept"])
            fig, ax = plt.subplots(figsize=(8, 0.3 * len(ranking) + 1.5))
            ax.barh([x["layer"] for x in ranking][::-1], [x["kl_gain"] for x in ranking][::-1],
                    color=["tab:red" if set(x.get("layers", [x["layer"]])) <= kept else "tab:gray"
                           for x in ranking][::-1])
            ax.set_xlabel("KL to FP32 recovered by keeping only this layer (group) out of INT8")
            ax.set_title(f"INT8 sensitivity, most sensitive 20 (red: kept out of INT8 in {r['variant']})", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            _save(fig, root / sensitivity_plot(r))

    cpu = [r for r in data["results"] if r.get("peak_rss_bytes")]  # process memory: CPU rows
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(cpu)), 4))
    names = [f"{label(r)}\n{r['backend']}" for r in cpu]
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [r["file_bytes"] / 1e6 for r in cpu], 0.4, label="model file")
    ax.bar([i + 0.2 for i in xs], [r["peak_rss_bytes"] / 1e6 for r in cpu], 0.4, label="peak RSS, batch 1")
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.set_ylabel("MB")
    ax.set_title("memory per variant")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, root / MEMORY_PLOT)




def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
