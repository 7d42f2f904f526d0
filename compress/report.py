"""The report: every variant against FP32 on the same images and the same device, as JSON, Markdown, CSV and
HTML with an accuracy-versus-latency plot (Pareto front marked) and a memory chart."""

from __future__ import annotations

import csv
import datetime
import html
import io
import os
from pathlib import Path

from compress.rundir import Result, RunDir, csv_fields, parse_variant
from compress.sensitivity import Budget
from compress.store import UMASK, atomic_path, read_json, write_json, write_text

PLOT, MEMORY_PLOT = "accuracy_latency.png", "memory.png"
DEFAULT_BUDGET = 1.0  # top-1 points: what a recommendation may give up when the run set no budget


def derive(results: list[dict]) -> None:
    """Deltas against FP32: accuracy against the baseline's on the same images; speed and size against the FP32
    row of the same backend (a CPU and a GPU latency do not divide)."""
    base = next((r for r in results if r["variant"] == "fp32" and r["backend"] == "onnxruntime-cpu"), None)
    for r in results:
        same = next((b for b in results if b["backend"] == r["backend"] and b["variant"] == "fp32"
                     and b["precision"] == "fp32"), None)
        r["top1_delta"] = (round((r["top1"] - base["top1"]) * 100, 2)
                           if r.get("top1") is not None and base is not None else None)
        r["speedup"] = round(same["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if same else None
        r["size_ratio"] = (round(r["file_bytes"] / same["file_bytes"], 4)
                           if same and r.get("file_bytes") and same.get("file_bytes") else None)
    mark_pareto(results)


def merge(root: str | Path, rows: list[dict]) -> dict:
    """Add (or replace) rows measured elsewhere, e.g. TensorRT engines on a GPU, and rewrite the report."""
    data = load(root)
    rows = [Result.from_dict(r).to_dict() for r in rows]
    keys = {(r["variant"], r["backend"], r.get("engine")) for r in rows}
    data["results"] = [r for r in data["results"] if (r["variant"], r["backend"], r.get("engine")) not in keys] + rows
    data["not_measured"] = [n for n in data.get("not_measured", [])
                            if not any(r["backend"].startswith(n["backend"]) for r in rows)]
    derive(data["results"])
    write(root, data)
    return data


def assemble(results: list[Result], env: dict, spec, evaluation, warnings: list[str],
             not_measured: list[dict] | None = None) -> dict:
    rows = [r.to_dict() for r in results]
    derive(rows)
    return {
        "format": 1,
        "baseline": "fp32",
        "results": rows,
        "env": env,
        "images": {"evaluation": spec.data, "count": len(evaluation), "skipped": len(evaluation.skipped),
                   "calibration": spec.calib},
        "warnings": warnings,
        "not_measured": not_measured or [],
        "recipe": spec.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def load(root: str | Path) -> dict:
    """report.json of a run directory, checked: it may come from another machine."""
    from compress.errors import UserError
    from compress.store import read_json

    path = Path(root) / "report.json"
    try:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ValueError("no results list")
        data["results"] = [Result.from_dict(r).to_dict() for r in data["results"]]
        for key, kind in (("env", dict), ("images", dict), ("recipe", dict), ("warnings", list),
                          ("not_measured", list)):
            if not isinstance(data.setdefault(key, kind()), kind):
                raise ValueError(f"{key} is not a {kind.__name__}")
        data["images"].setdefault("count", None)
    except FileNotFoundError:
        raise UserError(f"no report.json in {root}", "run 'compress run' first") from None
    except (OSError, ValueError, TypeError, UserError) as exc:
        raise UserError(f"{path} is not a compress report ({str(exc)[:100]})",
                        "rerun 'compress run' to rewrite it") from None
    return data


def mark_pareto(results: list[dict]) -> None:
    """A result is on the front if no result of the same backend is at least as accurate and at least as fast,
    and strictly better in one of the two."""
    for r in results:
        r["pareto"] = r.get("top1") is not None and not any(
            o is not r and o["backend"] == r["backend"] and o.get("top1") is not None
            and o["top1"] >= r["top1"] and o["latency_ms"]["p50"] <= r["latency_ms"]["p50"]
            and (o["top1"] > r["top1"] or o["latency_ms"]["p50"] < r["latency_ms"]["p50"])
            for o in results)


def budget_of(data: dict) -> Budget:
    return Budget.from_dict(data.get("recipe", {}).get("budget"))


def over_budget(data: dict, budget: Budget) -> list[tuple[str, float, float]]:
    """(variant, top-1 drop, agreement) of every result over budget, unless its mixed-precision sibling
    (VARIANT-mixed, from --fallback) is within it."""
    rows = {(r["variant"], r["backend"]): r for r in data["results"]}
    failing = []
    for r in data["results"]:
        mixed = rows.get((f"{r['variant']}-mixed", r["backend"]))
        if budget.over(r) and (mixed is None or budget.over(mixed)):
            failing.append((r["variant"], -r["top1_delta"], r["agreement"]))
    return failing


def recommendations(data: dict) -> list[dict]:
    """For each runtime measured: the fastest variant made for it (or for any runtime) within the run's budget
    (default: DEFAULT_BUDGET top-1 points), and what it buys against FP32 on that runtime."""
    budget = budget_of(data)
    if not budget:
        budget = Budget(max_top1_drop=DEFAULT_BUDGET)
    out = []
    for backend in _backends(data["results"]):
        mine = [r for r in data["results"] if r["backend"] == backend and r.get("top1") is not None]
        fits = [r for r in mine if on_target(r) and not budget.over(r)]
        base = next((r for r in mine if r["variant"] == "fp32" and r["precision"] == "fp32"), None)
        if not fits:
            out.append({"backend": backend, "variant": None, "budget": budget.text()})
            continue
        best = min(fits, key=lambda r: r["latency_ms"]["p50"])
        out.append({"backend": backend, "variant": label(best), "budget": budget.text(),
                    "speedup": best["speedup"], "smaller": (1 / best["size_ratio"]) if best.get("size_ratio") else None,
                    "top1_delta": best["top1_delta"], "agreement": best["agreement"], "flips": best["flips"],
                    "p50_ms": best["latency_ms"]["p50"], "fp32_p50_ms": base["latency_ms"]["p50"] if base else None})
    return out


def recommendation_lines(data: dict) -> list[str]:
    lines = []
    for rec in data.get("recommendations") or recommendations(data):
        if rec["variant"] is None:
            lines.append(f"**{rec['backend']}**: no variant made for it is within the budget ({rec['budget']})")
            continue
        bought = []
        if rec["variant"] != "fp32":
            bought.append(f"{rec['speedup']:.2f}x faster at batch 1 ({rec['p50_ms']:.1f} vs "
                          f"{rec['fp32_p50_ms']:.1f} ms)")
            if rec.get("smaller"):
                bought.append(f"{rec['smaller']:.1f}x smaller file")
        bought.append(f"top-1 {rec['top1_delta']:+.2f} points, {100 * rec['agreement']:.1f}% agreement "
                      f"({rec['flips']} flips)")
        lines.append(f"**{rec['backend']}**: ship `{rec['variant']}`: " + ", ".join(bought))
    for n in data.get("not_measured", []):
        lines.append(f"**{n['backend']}**: not measured here: {n['reason']}")
    return lines


def _backends(results: list[dict]) -> list[str]:
    return sorted({r["backend"] for r in results}, key=lambda b: (b != "onnxruntime-cpu", b))


def label(r: dict) -> str:
    return (r.get("engine") or r["variant"]).removesuffix(".engine")


def latency_text(r: dict) -> str:
    spread = r.get("latency_spread_ms")
    p50 = r["latency_ms"]["p50"]
    return f"{p50:.2f} ({spread[0]:.2f}–{spread[1]:.2f})" if spread else f"{p50:.2f}"


# Every cell the tables can show, by column title.
CELLS = {
    "variant": label,
    "runtime": lambda r: r["backend"],
    "for": lambda r: r["target"],
    "top-1 %": lambda r: f"{100 * r['top1']:.2f}",
    "Δ pts": lambda r: f"{r['top1_delta']:+.2f}",
    "top-5 %": lambda r: f"{100 * r['top5']:.2f}",
    "agree %": lambda r: f"{100 * r['agreement']:.1f}",
    "flips": lambda r: f"{r['flips']}",
    "flips (→wrong/→right)": lambda r: f"{r['flips']} ({r['flips_to_wrong']}/{r['flips_to_right']})",
    "p50 ms (round spread)": latency_text,
    "p90 ms": lambda r: f"{r['latency_ms']['p90']:.2f}",
    "p99 ms": lambda r: f"{r['latency_ms']['p99']:.2f}",
    "speedup": lambda r: f"{r['speedup']:.2f}x",
    "img/s": lambda r: f"{r['throughput_ips']:.1f} @b{r['throughput_batch']}",
    "params M": lambda r: f"{r['params'] / 1e6:.2f}",
    "GMACs": lambda r: f"{r['macs'] / 1e9:.2f}",
    "recovery": lambda r: recovery(r),
    "file MB": lambda r: f"{r['file_bytes'] / 1e6:.1f}",
    "peak RSS MB": lambda r: f"{r['peak_rss_bytes'] / 1e6:.0f}",
    "front": lambda r: "★" if r["pareto"] else "",
}
# The first screen: what a user compares. Every figure is in COLUMNS, the CSV and the JSON.
SUMMARY = [(c, CELLS[c]) for c in ("variant", "runtime", "for", "top-1 %", "Δ pts", "agree %", "flips",
                                   "p50 ms (round spread)", "speedup", "file MB", "front")]
COLUMNS = [(c, CELLS[c]) for c in ("variant", "runtime", "for", "top-1 %", "Δ pts", "top-5 %", "agree %",
                                   "flips (→wrong/→right)", "p50 ms (round spread)", "p90 ms", "p99 ms", "speedup",
                                   "img/s", "params M", "GMACs", "recovery", "file MB", "peak RSS MB", "front")]


def spread_warnings(data: dict) -> list[str]:
    """Where two variants of a runtime are closer in p50 than their round-to-round spread, their order is noise."""
    out = []
    for backend in _backends(data["results"]):
        mine = sorted((r for r in data["results"] if r["backend"] == backend and r.get("latency_spread_ms")),
                      key=lambda r: r["latency_ms"]["p50"])
        for a, b in zip(mine, mine[1:]):
            gap = b["latency_ms"]["p50"] - a["latency_ms"]["p50"]
            spread = max(a["latency_spread_ms"][1] - a["latency_spread_ms"][0],
                         b["latency_spread_ms"][1] - b["latency_spread_ms"][0])
            if gap < spread:
                out.append(f"{backend}: {label(a)} and {label(b)} differ by {gap:.2f} ms at p50, less than the "
                           f"round-to-round spread ({spread:.2f} ms): their latency order is not settled")
    return out


def recovery(r: dict) -> str:
    steps = r.get("recovery")
    if not steps:
        return "—"
    names = {"bn_recalibration": "BN", "distillation": "KD", "reconstruction": "recon"}
    kinds = [next(iter(step), "?") if isinstance(step, dict) else str(step) for step in steps]  # first key: the kind
    return "+".join(names.get(k, k) for k in kinds)


def _cell(f, r: dict) -> str:
    try:
        return f(r)
    except (KeyError, TypeError):  # not measured for this row (e.g. no RSS for a GPU engine)
        return "—"


def rows(data: dict, columns=COLUMNS) -> list[list[str]]:
    return [[_cell(f, r) for _, f in columns] for r in data["results"]]


def _table(data: dict, columns) -> list[str]:
    return ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|",
            *("| " + " | ".join(row) + " |" for row in rows(data, columns))]


def header(data: dict) -> list[str]:
    env, img = data["env"], data["images"]
    flags = ", ".join(str(f) for f in env.get("cpu_flags") or []) or "no SIMD flags read"
    return [
        f"{img['count']} evaluation images from `{img['evaluation']}`"
        + (f" ({img['skipped']} unreadable, skipped)" if img.get("skipped") else "")
        + (f"; calibration images from `{img['calibration']}`" if img.get("calibration") else "") + ".",
        f"Device: {env.get('cpu')} ({env.get('cpu_cores')} cores; {flags}); onnxruntime {env.get('onnxruntime')}, "
        f"torch {env.get('torch')}, Python {env.get('python')}.",
    ]


def notes(data: dict) -> list[str]:
    """How each number was taken, the fallback's choices, what was not measured: one line each."""
    lines = ["Δ is in top-1 points against FP32 on the same images; agreement is the share of images whose top-1 "
             "class equals FP32's; flips counts the images where it differs (→wrong: FP32 was right, →right: FP32 "
             "was wrong)."]
    methods = {(label(r), r["backend"], r["accuracy_method"], r["latency_method"], r["target"], on_target(r))
               for r in data["results"]}
    for name, backend, acc, lat, target, on in sorted(methods):
        note = "" if on else f" Latency here is not on its target runtime ({target})."
        lines.append(f"`{name}` on {backend}: accuracy by {acc}; latency by {lat}.{note}")
    lines.append("Latency is batch 1 over every timed run (p50/p90/p99 after warm-up), taken in interleaved rounds "
                 "(each round runs every variant of a runtime once, each in a fresh process); the range after p50 "
                 "is the lowest and highest per-round median. img/s at the batch shown; peak RSS is the median over "
                 "rounds of a fresh process that loaded the model and ran batch 1 (the runtime included).")
    for r in data["results"]:
        if r.get("fallback") and r["fallback"].get("kept") is not None:
            fb, budget = r["fallback"], Budget.from_dict(r["fallback"].get("budget"))
            lines.append(f"`{r['variant']}` keeps {len(fb['kept'])} layer(s) out of INT8 to stay within "
                         f"the budget ({budget.text()}; here {-r['top1_delta']:.2f} points below FP32, "
                         f"{100 * r['agreement']:.1f}% agreement): "
                         + ", ".join(f"`{k}`" for k in fb["kept"])
                         + f". Sensitivity ranked on {fb.get('ranked_on')} images: {sensitivity_plot(r)}. "
                         f"Layers out of INT8 tried: {tried_text(fb['tried'])}.")
    return lines


def markdown(data: dict) -> str:
    lines = ["# compress report", "", *header(data), "", "## Recommendation per runtime", "",
             *(f"- {line}" for line in recommendation_lines(data)), "", *_table(data, SUMMARY), "",
             f"![accuracy vs latency]({PLOT})", "", "## Every figure", "", *_table(data, COLUMNS), "",
             "How each number was taken:", *(f"- {line}" for line in notes(data))]
    warnings = list(data.get("warnings", [])) + spread_warnings(data)
    if warnings:
        lines += ["", "Warnings:", *(f"- {w}" for w in warnings)]
    lines += ["", f"![memory]({MEMORY_PLOT})", ""]
    return "\n".join(lines)


def to_csv(data: dict) -> str:
    fields = csv_fields()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in data["results"]:
        spread = r.get("latency_spread_ms") or [None, None]
        flat = {**r, **{f"{k}_ms": v for k, v in r["latency_ms"].items()}, "p50_low_ms": spread[0],
                "p50_high_ms": spread[1]}
        w.writerow(["" if flat.get(k) is None else flat[k] for k in fields])
    return buf.getvalue()


def _md_inline(text: str) -> str:
    """Markdown's `code` and **bold** in a line of ours, as HTML; everything else escaped."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_table(data: dict, columns, css: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in columns)
    body = "".join(
        f"<tr class='{'base' if r['variant'] == 'fp32' else ''}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>" for r, row in zip(data["results"], rows(data, columns)))
    return f"<table class='{css}'><tr>{head}</tr>{body}</table>"


def to_html(data: dict) -> str:
    warnings = list(data.get("warnings", [])) + spread_warnings(data)
    sens = "".join(f'<img src="{html.escape(sensitivity_plot(r), quote=True)}" alt="INT8 sensitivity">'
                   for r in data["results"] if r.get("fallback") and r["fallback"].get("kept") is not None)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>compress report</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1180px;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:14px}} td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f3f3f3}} tr.base{{background:#fff4cc}} td:first-child,th:first-child{{text-align:left}}
.rec li{{font-size:16px;margin:.3em 0}} .wide{{overflow-x:auto;max-width:100%}} .wide table{{font-size:12px}}
img{{max-width:100%}} .warn{{color:#8a4b00}}</style></head><body>
<h1>compress report</h1>
{"".join(f"<p>{_md_inline(line)}</p>" for line in header(data))}
<h2>Recommendation per runtime</h2>
<ul class="rec">{"".join(f"<li>{_md_inline(line)}</li>" for line in recommendation_lines(data))}</ul>
{_html_table(data, SUMMARY, "summary")}
{"".join(f"<p class='warn'><b>warning:</b> {html.escape(w)}</p>" for w in warnings)}
<p><img src="{PLOT}" alt="accuracy versus latency"></p>
<h2>Every figure</h2>
<div class="wide">{_html_table(data, COLUMNS, "full")}</div>
<ul>{"".join(f"<li>{_md_inline(line)}</li>" for line in notes(data))}</ul>
<p><img src="{MEMORY_PLOT}" alt="memory"> {sens}</p>
</body></html>
"""


def plots(root: Path, data: dict, run_root: Path | None = None) -> None:
    """The plots into `root`; paths recorded in the results are resolved inside `run_root` (default: root)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in data["results"] if r.get("top1") is not None]
    backends = _backends(results)
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
            ax.scatter([x], [y], zorder=3, **style)
            ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.margins(0.2)
        ax.set_xlabel(f"latency p50, batch 1 (ms) on {backend}")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("accuracy vs latency (★ FP32; hollow: not on its target runtime)", fontsize=10)
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


def on_target(r: dict) -> bool:
    """Whether a result's latency was taken on the runtime its file is made for (tensorrt-<device> is tensorrt)."""
    return r["target"] == "any" or r["backend"].startswith(r["target"])


def tried_text(tried: dict) -> str:
    """The mixes a fallback search evaluated: layers kept out of INT8 -> top-1 change and agreement."""
    return "; ".join(f"{k} layer(s): top-1 {-m['top1_drop']:+.2f} points, {100 * m['agreement']:.1f}% agreement"
                     for k, m in sorted(tried.items(), key=lambda kv: int(kv[0])))


def sensitivity_plot(r: dict) -> str:
    return f"sensitivity-{parse_variant(r['variant']).name}.png"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(root: str | Path, data: dict) -> None:
    """Write the report as a set: every file into a fresh generation folder, then one atomic switch of the
    `.report` link to it. The names at the top of the run directory are links through `.report`, so a run killed
    at any point shows the old report or the new one, never a mix."""
    import shutil
    import tempfile

    root = Path(root)
    data["recommendations"] = recommendations(data)
    gen = Path(tempfile.mkdtemp(prefix=".report-", dir=root))
    os.chmod(gen, 0o777 & ~UMASK)
    plots(gen, data, root)
    write_json(gen / "report.json", data)
    write_text(gen / "report.md", markdown(data))
    write_text(gen / "report.csv", to_csv(data))
    write_text(gen / "report.html", to_html(data))
    current = root / ".report"
    if current.is_dir() and not current.is_symlink():  # a copy that followed the link: an old generation now
        current.rename(Path(tempfile.mkdtemp(prefix=".report-", dir=root)) / "copied")
    _link(current, gen.name)  # the switch
    for f in gen.iterdir():
        if not (root / f.name).is_symlink() or os.readlink(root / f.name) != f".report/{f.name}":
            _link(root / f.name, f".report/{f.name}")
    for old in root.glob(".report-*"):
        if old != gen and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def _link(path: Path, target: str) -> None:
    """Point `path` at `target` atomically (a file or an older link there is replaced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
