"""The report: every variant against FP32 on the same images and the same device, as JSON, Markdown, CSV and
HTML with an accuracy-versus-latency plot (Pareto front marked) and a memory chart."""

from __future__ import annotations

import csv
import html
import io

from compress.core.budget import Budget
from compress.core.result import CSV_INTERVALS, csv_fields
from compress.report.data import MEMORY_PLOT, PLOT, backends_of, faster, label, on_target, sensitivity_plot
from compress.report.intervals import includes
from compress.report.recommend import recommendation_lines


def latency_text(r: dict) -> str:
    spread = r.get("latency_spread_ms")
    p50 = r["latency_ms"]["p50"]
    return f"{p50:.2f} ({spread[0]:.2f}–{spread[1]:.2f})" if spread else f"{p50:.2f}"


def _range(ci, fmt: str, sep: str = "–") -> str:
    return f" ({fmt.format(ci[0])}{sep}{fmt.format(ci[1])})" if ci else ""


def delta_text(r: dict) -> str:
    """Top-1 against FP32, points, with its 95% interval."""
    return f"{r['top1_delta']:+.2f}" + _range(r.get("top1_delta_ci"), "{:+.1f}", " to ")


def change_cell(r: dict) -> str:
    """The first screen's top-1 change: a plain word when the interval holds zero."""
    ci = r.get("top1_delta_ci")
    if r["variant"] == "fp32" and r["backend"] == "onnxruntime-cpu":
        return "—"
    if includes(ci, 0):
        return "no measurable change"
    return delta_text(r)


def speedup_text(r: dict) -> str:
    return f"{r['speedup']:.2f}x" + _range(r.get("speedup_ci"), "{:.2f}")


def target_text(r: dict) -> str:
    return r["target"] if on_target(r) else f"{r['target']} (not its runtime)"


# Every cell the tables can show, by column title.
CELLS = {
    "variant": label,
    "runtime": lambda r: r["backend"],
    "for": target_text,
    "top-1 %": lambda r: f"{100 * r['top1']:.2f}",
    "Δ pts (95%)": delta_text,
    "top-1 vs FP32": change_cell,
    "top-5 %": lambda r: f"{100 * r['top5']:.2f}",
    "agree % (95%)": lambda r: f"{100 * r['agreement']:.1f}" + _range(
        [100 * x for x in r["agreement_ci"]] if r.get("agreement_ci") else None, "{:.1f}"),
    "flips": lambda r: f"{r['flips']}",
    "flips (→wrong/→right)": lambda r: f"{r['flips']} ({r['flips_to_wrong']}/{r['flips_to_right']})",
    "p50 ms (round spread)": latency_text,
    "p90 ms": lambda r: f"{r['latency_ms']['p90']:.2f}",
    "p99 ms": lambda r: f"{r['latency_ms']['p99']:.2f}",
    "speedup (95%)": speedup_text,
    "p50 ms": lambda r: f"{r['latency_ms']['p50']:.1f}",
    "img/s": lambda r: f"{r['throughput_ips']:.1f} @b{r['throughput_batch']}",
    "params M": lambda r: f"{r['params'] / 1e6:.2f}",
    "GMACs": lambda r: f"{r['macs'] / 1e9:.2f}",
    "recovery": lambda r: recovery(r),
    "file MB": lambda r: f"{r['file_bytes'] / 1e6:.1f}",
    "peak RSS MB": lambda r: f"{r['peak_rss_bytes'] / 1e6:.0f}",
    "front": lambda r: "★" if r["pareto"] else "",
}
# The first screen: what a user compares. Every figure is in COLUMNS, the CSV and the JSON.
SUMMARY = [(c, CELLS[c]) for c in ("variant", "runtime", "top-1 %", "top-1 vs FP32", "agree % (95%)", "flips",
                                   "p50 ms", "speedup (95%)", "file MB", "front")]
COLUMNS = [(c, CELLS[c]) for c in ("variant", "runtime", "for", "top-1 %", "Δ pts (95%)", "top-5 %", "agree % (95%)",
                                   "flips (→wrong/→right)", "p50 ms (round spread)", "p90 ms", "p99 ms",
                                   "speedup (95%)", "img/s", "params M", "GMACs", "recovery", "file MB",
                                   "peak RSS MB", "front")]


def spread_warnings(data: dict) -> list[str]:
    """Where two variants of a runtime are not apart in latency beyond the noise (`data.faster`), their order is not
    settled."""
    out = []
    for backend in backends_of(data["results"]):
        mine = sorted((r for r in data["results"] if r["backend"] == backend and r.get("latency_spread_ms")),
                      key=lambda r: r["latency_ms"]["p50"])
        for a, b in zip(mine, mine[1:]):
            if not faster(a, b):
                gap = b["latency_ms"]["p50"] - a["latency_ms"]["p50"]
                out.append(f"{backend}: {label(a)} and {label(b)} differ by {gap:.2f} ms at p50, within the noise of "
                           "their rounds: their latency order is not settled")
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


def shown(data: dict, columns) -> list[dict]:
    """The rows a table shows: the first screen only files on the runtime they are made for, the full table all."""
    return [r for r in data["results"] if columns is not SUMMARY or on_target(r)]


def rows(data: dict, columns=COLUMNS) -> list[list[str]]:
    return [[_cell(f, r) for _, f in columns] for r in shown(data, columns)]


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
             "was wrong).",
             "Intervals are 95%: for Δ, Newcombe's paired score interval from the flipped images (one that holds "
             "zero is no measurable change); for agreement, Wilson's score interval; for the speedup, Student's t "
             "over the per-round paired ratios (each round times every variant of a runtime), whose geometric mean "
             "is the speedup. A variant is on its runtime's front (★) only if it is made for that runtime and no "
             "other is as accurate and as fast and better beyond these intervals; files measured off their runtime "
             "are listed in full but never starred."]
    methods = {(label(r), r["backend"], r["accuracy_method"], r["latency_method"], r["target"], on_target(r))
               for r in data["results"]}
    for name, backend, acc, lat, target, on in sorted(methods):
        note = "" if on else f" Latency here is not on its target runtime ({target})."
        lines.append(f"`{name}` on {backend}: accuracy by {acc}; latency by {lat}.{note}")
    lines.append("Latency is batch 1 over every timed run (p50/p90/p99 after warm-up), taken in interleaved rounds "
                 "(each round runs every variant of a runtime once, each in a fresh process); the range after p50 "
                 "is the lowest and highest per-round median. img/s at the batch shown; peak RSS is the median over "
                 "rounds of a fresh process that loaded the model and ran batch 1 (the runtime included).")
    timed = {(r["backend"], r.get("rounds"), r.get("timed_runs")) for r in data["results"] if r.get("rounds")}
    for backend, rounds, runs in sorted(timed, key=str):
        lines.append(f"{backend}: {rounds} rounds" + (f", {runs} timed batch-1 runs a variant" if runs else "") + ".")
    for r in data["results"]:
        if r.get("fallback") and r["fallback"].get("kept") is not None:
            fb, budget = r["fallback"], Budget.from_dict(r["fallback"].get("budget"))
            lines.append(f"`{r['variant']}` keeps {len(fb['kept'])} layer(s) out of INT8 to stay within "
                         f"the budget ({budget.text()}; here {-r['top1_delta']:.2f} points below FP32, "
                         f"{100 * r['agreement']:.1f}% agreement): "
                         + ", ".join(f"`{k}`" for k in fb["kept"])
                         + f". The layers were chosen on the evaluation images it is scored on, so its accuracy "
                         f"here is optimistic. Sensitivity ranked on {fb.get('ranked_on')} images: "
                         f"{sensitivity_plot(r)}. "
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
        for name in CSV_INTERVALS:
            low, high = r.get(f"{name}_ci") or (None, None)
            flat[f"{name}_low"], flat[f"{name}_high"] = low, high
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
        + "</tr>" for r, row in zip(shown(data, columns), rows(data, columns)))
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


def tried_text(tried: dict) -> str:
    """The mixes a fallback search evaluated: layers kept out of INT8 -> top-1 change and agreement."""
    return "; ".join(f"{k} layer(s): top-1 {-m['top1_drop']:+.2f} points, {100 * m['agreement']:.1f}% agreement"
                     for k, m in sorted(tried.items(), key=lambda kv: int(kv[0])))


