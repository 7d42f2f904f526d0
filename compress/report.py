"""The report: every variant against FP32 on the same images and the same device, as JSON, Markdown, CSV and
HTML with an accuracy-versus-latency plot (Pareto front marked) and a memory chart."""

from __future__ import annotations

import csv
import datetime
import html
import io
from pathlib import Path

from compress.store import atomic_path, read_json, write_json, write_text

PLOT, MEMORY_PLOT = "accuracy_latency.png", "memory.png"


def derive(results: list[dict]) -> None:
    """Deltas against FP32: accuracy against the baseline's on the same images; speed and size against the FP32
    row of the same backend (a CPU and a GPU latency do not divide)."""
    base = next(r for r in results if r["variant"] == "fp32" and r["backend"] == "onnxruntime-cpu")
    for r in results:
        same = next((b for b in results if b["backend"] == r["backend"] and b["variant"] == "fp32"
                     and b["precision"] == "fp32"), None)
        r["top1_delta"] = round((r["top1"] - base["top1"]) * 100, 2) if r.get("top1") is not None else None
        r["speedup"] = round(same["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if same else None
        r["size_ratio"] = round(r["file_bytes"] / same["file_bytes"], 4) if same else None
    mark_pareto(results)


def merge(root: str | Path, rows: list[dict]) -> dict:
    """Add (or replace) rows measured elsewhere, e.g. TensorRT engines on a GPU, and rewrite the report."""
    data = read_json(Path(root) / "report.json")
    keys = {(r["variant"], r["backend"], r.get("engine")) for r in rows}
    data["results"] = [r for r in data["results"] if (r["variant"], r["backend"], r.get("engine")) not in keys] + rows
    data["not_measured"] = [n for n in data.get("not_measured", [])
                            if not any(r["backend"].startswith(n["backend"]) for r in rows)]
    derive(data["results"])
    write(root, data)
    return data


def assemble(results: list[dict], env: dict, spec, evaluation, warnings: list[str],
             not_measured: list[dict] | None = None) -> dict:
    derive(results)
    return {
        "baseline": "fp32",
        "results": results,
        "env": env,
        "images": {"evaluation": spec.data, "count": len(evaluation), "skipped": len(evaluation.skipped),
                   "calibration": spec.calib},
        "warnings": warnings,
        "not_measured": not_measured or [],
        "recipe": spec.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def mark_pareto(results: list[dict]) -> None:
    """A result is on the front if no result of the same backend is at least as accurate and at least as fast,
    and strictly better in one of the two."""
    for r in results:
        r["pareto"] = r.get("top1") is not None and not any(
            o is not r and o["backend"] == r["backend"] and o.get("top1") is not None
            and o["top1"] >= r["top1"] and o["latency_ms"]["p50"] <= r["latency_ms"]["p50"]
            and (o["top1"] > r["top1"] or o["latency_ms"]["p50"] < r["latency_ms"]["p50"])
            for o in results)


TOLERANCE = 1e-9  # accuracies are image counts over N: a drop equal to the budget must not fail by rounding


def over(r: dict, max_top1_drop: float | None, min_agreement: float | None) -> bool:
    """Whether a result breaks the accuracy budget: top-1 points below FP32, or agreement with FP32."""
    if r.get("top1_delta") is None:
        return False
    return (max_top1_drop is not None and -r["top1_delta"] > max_top1_drop + TOLERANCE) or (
        min_agreement is not None and r["agreement"] < min_agreement - TOLERANCE)


def over_budget(data: dict, max_top1_drop: float | None,
                min_agreement: float | None = None) -> list[tuple[str, float, float]]:
    """(variant, top-1 drop, agreement) of every result over budget, unless its mixed-precision sibling
    (VARIANT-mixed, from --fallback) is within it."""
    rows = {(r["variant"], r["backend"]): r for r in data["results"]}
    failing = []
    for r in data["results"]:
        mixed = rows.get((f"{r['variant']}-mixed", r["backend"]))
        if over(r, max_top1_drop, min_agreement) and (mixed is None or over(mixed, max_top1_drop, min_agreement)):
            failing.append((r["variant"], -r["top1_delta"], r["agreement"]))
    return failing


COLUMNS = [
    ("variant", lambda r: r.get("engine", r["variant"]).removesuffix(".engine")),
    ("backend", lambda r: r["backend"]),
    ("target", lambda r: r["target"]),
    ("top1 %", lambda r: f"{100 * r['top1']:.2f}"),
    ("Δtop1 pts", lambda r: f"{r['top1_delta']:+.2f}"),
    ("top5 %", lambda r: f"{100 * r['top5']:.2f}"),
    ("agree %", lambda r: f"{100 * r['agreement']:.1f}"),
    ("flips (→wrong/→right)", lambda r: f"{r['flips']} ({r['flips_to_wrong']}/{r['flips_to_right']})"),
    ("p50 ms", lambda r: f"{r['latency_ms']['p50']:.2f}"),
    ("p90 ms", lambda r: f"{r['latency_ms']['p90']:.2f}"),
    ("p99 ms", lambda r: f"{r['latency_ms']['p99']:.2f}"),
    ("speedup", lambda r: f"{r['speedup']:.2f}x"),
    ("img/s", lambda r: f"{r['throughput_ips']:.1f} @b{r['throughput_batch']}"),
    ("params M", lambda r: f"{r['params'] / 1e6:.2f}"),
    ("GMACs", lambda r: f"{r['macs'] / 1e9:.2f}"),
    ("recovery", lambda r: recovery(r)),
    ("file MB", lambda r: f"{r['file_bytes'] / 1e6:.1f}"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_bytes'] / 1e6:.0f}"),
    ("Pareto", lambda r: "★" if r["pareto"] else ""),
]


def recovery(r: dict) -> str:
    steps = r.get("recovery")
    if not steps:
        return "—"
    names = {"bn_recalibration": "BN", "distillation": "KD"}
    return "+".join(names.get(k, k) for step in steps for k in (step if isinstance(step, dict) else {step: 0}))


def _cell(f, r: dict) -> str:
    try:
        return f(r)
    except (KeyError, TypeError):  # not measured for this row (e.g. no RSS for a GPU engine)
        return "—"


def rows(data: dict) -> list[list[str]]:
    return [[_cell(f, r) for _, f in COLUMNS] for r in data["results"]]


def markdown(data: dict) -> str:
    env, img = data["env"], data["images"]
    lines = [
        "# compress report",
        "",
        f"{img['count']} evaluation images from `{img['evaluation']}`"
        + (f" ({img['skipped']} unreadable, skipped)" if img["skipped"] else "")
        + (f"; calibration images from `{img['calibration']}`" if img.get("calibration") else "") + ".",
        f"Device: {env['cpu']} ({env['cpu_cores']} cores; {', '.join(env['cpu_flags']) or 'no SIMD flags read'}); "
        f"onnxruntime {env['onnxruntime']}, torch {env['torch']}, Python {env['python']}.",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in rows(data)),
        "",
        "How each number was taken:",
        "- Δtop1 is in points against FP32 on the same images; agreement is the share of images whose top-1 class "
        "equals FP32's; flips counts the images where it differs (→wrong: FP32 was right, →right: FP32 was wrong).",
    ]
    methods = {(r["variant"], r["accuracy_method"], r["latency_method"], r["target"], on_target(r))
               for r in data["results"]}
    for name, acc, lat, target, on in sorted(methods):
        note = "" if on else f" Latency here is not on its target runtime ({target})."
        lines.append(f"- `{name}`: accuracy by {acc}; latency by {lat}.{note}")
    lines.append("- Latency is batch 1 (p50/p90/p99 after warm-up); img/s at the batch shown; peak RSS is a fresh "
                 "process that loaded the model and ran batch 1 (it includes the runtime itself).")
    for r in data["results"]:
        if r.get("fallback"):
            fb = r["fallback"]
            lines.append(f"- `{r['variant']}` keeps {len(fb['kept'])} layer(s) out of INT8 to stay within "
                         f"the budget ({budget_text(fb['budget'])}; here {-r['top1_delta']:.2f} points below FP32, "
                         f"{100 * r['agreement']:.1f}% agreement): "
                         + ", ".join(f"`{k}`" for k in fb["kept"])
                         + f". Sensitivity ranked on {fb['ranked_on']} images: {sensitivity_plot(r)}. "
                         f"Layers out of INT8 tried: {tried_text(fb['tried'])}.")
    for n in data.get("not_measured", []):
        lines.append(f"- {n['backend']} ({', '.join(n['precisions'])}): not measured here: {n['reason']}")
    if data.get("warnings"):
        lines += ["", "Warnings:", *(f"- {w}" for w in data["warnings"])]
    lines += ["", f"![accuracy vs latency]({PLOT})", "", f"![memory]({MEMORY_PLOT})", ""]
    return "\n".join(lines)


CSV_FIELDS = ["variant", "engine", "backend", "precision", "target", "images", "top1", "top5", "top1_delta",
              "agreement", "flips", "flips_to_wrong", "flips_to_right", "p50_ms", "p90_ms", "p99_ms", "speedup",
              "throughput_ips", "throughput_batch", "params", "macs", "sparsity", "file_bytes", "peak_rss_bytes",
              "pareto"]


def to_csv(data: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in data["results"]:
        flat = {**r, **{f"{k}_ms": v for k, v in r["latency_ms"].items()}}
        w.writerow(["" if flat.get(k) is None else flat[k] for k in CSV_FIELDS])
    return buf.getvalue()


def to_html(data: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in COLUMNS)
    body = "".join(
        f"<tr class='{'base' if r['variant'] == 'fp32' else ''}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>" for r, row in zip(data["results"], rows(data)))
    notes = markdown(data).split("How each number was taken:")[1].split("![")[0]
    notes_html = "".join(f"<li>{html.escape(line[2:])}</li>" for line in notes.splitlines() if line.startswith("- "))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>compress report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} tr.base{{background:#fff4cc}}
img{{max-width:48%;margin:1em 1% 0 0}}</style></head><body>
<h1>compress report</h1>
<p>{data['images']['count']} evaluation images from <code>{html.escape(str(data['images']['evaluation']))}</code>;
device: {html.escape(data['env']['cpu'])}; onnxruntime {html.escape(str(data['env']['onnxruntime']))}.</p>
<table><tr>{head}</tr>{body}</table>
<ul>{notes_html}</ul>
{''.join(f'<p><b>warning:</b> {html.escape(w)}</p>' for w in data.get('warnings', []))}
<img src="{PLOT}" alt="accuracy versus latency"><img src="{MEMORY_PLOT}" alt="memory">
{''.join(f'<img src="{sensitivity_plot(r)}" alt="INT8 sensitivity">' for r in data["results"] if r.get("fallback"))}
</body></html>
"""


def plots(root: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in data["results"] if r.get("top1") is not None]
    backends = sorted({r["backend"] for r in results}, key=lambda b: (b != "onnxruntime-cpu", b))
    fig, axes = plt.subplots(1, len(backends), figsize=(7 * len(backends), 4.5), squeeze=False)
    for ax, backend in zip(axes[0], backends):  # one panel per device: latencies of two devices don't compare
        mine = [r for r in results if r["backend"] == backend]
        front = sorted((r for r in mine if r["pareto"]), key=lambda r: r["latency_ms"]["p50"])
        ax.plot([r["latency_ms"]["p50"] for r in front], [100 * r["top1"] for r in front], "--", color="gray",
                lw=1, label="Pareto front")
        for r in mine:
            x, y = r["latency_ms"]["p50"], 100 * r["top1"]
            style = dict(marker="*", s=220, color="goldenrod") if r["variant"] == "fp32" else dict(
                marker="o", s=70, color="tab:blue" if on_target(r) else "white", edgecolors="tab:blue")
            ax.scatter([x], [y], zorder=3, **style)
            ax.annotate(r.get("engine", r["variant"]).removesuffix(".engine"), (x, y), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)
        ax.margins(0.2)
        ax.set_xlabel(f"latency p50, batch 1 (ms) on {backend}")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("accuracy vs latency (★ FP32; hollow: not on its target runtime)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    _save(fig, root / PLOT)

    for r in data["results"]:
        if r.get("fallback"):
            ranking = read_json(root / r["fallback"]["sensitivity"])["layers"][:20]
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
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["variant"] for r in cpu]
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [r["file_bytes"] / 1e6 for r in cpu], 0.4, label="model file")
    ax.bar([i + 0.2 for i in xs], [r["peak_rss_bytes"] / 1e6 for r in cpu], 0.4, label="peak RSS, batch 1")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("MB")
    ax.set_title("memory per variant")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, root / MEMORY_PLOT)


def on_target(r: dict) -> bool:
    """Whether a result's latency was taken on the runtime its file is made for (tensorrt-<device> is tensorrt)."""
    return r["target"] == "any" or r["backend"].startswith(r["target"])


def tried_text(tried: dict) -> str:
    """The mixes a fallback search evaluated: layers kept out of INT8 -> top-1 change and agreement."""
    return "; ".join(f"{k} layer(s): top-1 {-m['top1_drop']:+.2f} points, {100 * m['agreement']:.1f}% agreement"
                     for k, m in sorted(tried.items(), key=lambda kv: int(kv[0])))


def budget_text(budget: dict) -> str:
    parts = []
    if budget.get("max_top1_drop") is not None:
        parts.append(f"top-1 at most {budget['max_top1_drop']} points below FP32")
    if budget.get("min_agreement") is not None:
        parts.append(f"agreement at least {100 * budget['min_agreement']:.1f}%")
    return ", ".join(parts)


def sensitivity_plot(r: dict) -> str:
    return f"sensitivity-{r['variant']}.png"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(root: str | Path, data: dict) -> None:
    root = Path(root)
    plots(root, data)
    write_json(root / "report.json", data)
    write_text(root / "report.md", markdown(data))
    write_text(root / "report.csv", to_csv(data))
    write_text(root / "report.html", to_html(data))
