"""The report's data: rows derived against FP32 (deltas, speedup, size, Pareto front), assembled into
report.json, read back (checked: it may come from another machine) and merged with rows measured elsewhere."""

from __future__ import annotations

import datetime
from pathlib import Path

from compress.core.errors import UserError
from compress.core.result import Result
from compress.core.store import read_json
from compress.core.variant import parse_variant
from compress.report.intervals import paired_difference, ratio, wilson


def derive(results: list[dict]) -> None:
    """Each row against FP32, with 95% intervals (`intervals`): accuracy against the baseline's predictions on the
    same images (onnxruntime's FP32); speed and size against the FP32 row of the same backend (a CPU and a GPU
    latency do not divide). Then the Pareto front of each runtime."""
    base = next((r for r in results if r["variant"] == "fp32" and r["backend"] == "onnxruntime-cpu"), None)
    for r in results:
        same = next((b for b in results if b["backend"] == r["backend"] and b["variant"] == "fp32"
                     and b["precision"] == "fp32"), None)
        r["top1_delta"] = (round((r["top1"] - base["top1"]) * 100, 2)
                           if r.get("top1") is not None and base is not None else None)
        r["top1_delta_ci"], r["agreement_ci"] = accuracy_intervals(r, base)
        r["speedup"], r["speedup_ci"] = speedup(same, r) if same else (None, None)
        r["size_ratio"] = (round(r["file_bytes"] / same["file_bytes"], 4)
                           if same and r.get("file_bytes") and same.get("file_bytes") else None)
    mark_pareto(results)


def accuracy_intervals(r: dict, base: dict | None) -> tuple[list | None, list | None]:
    """95% intervals of a row's top-1 difference from FP32 (points) and of its agreement, when it was scored
    against FP32's predictions on the same images."""
    n = r.get("images")
    if base is None or not n or r.get("agreement") is None or (r.get("extra") or {}).get("agreement_note"):
        return None, None
    agreement = [round(x, 5) for x in wilson(round(r["agreement"] * n), n)]
    if r is base or n != base.get("images") or r.get("flips_to_wrong") is None or r.get("flips_to_right") is None:
        return None, agreement
    low, high = paired_difference(n, round(base["top1"] * n), r["flips_to_wrong"], r["flips_to_right"])
    return [round(100 * low, 2), round(100 * high, 2)], agreement


def speedup(fp32: dict, r: dict) -> tuple[float, list | None]:
    """FP32's latency over the row's on the same backend: the geometric mean of the per-round paired ratios with
    their 95% interval, or (rows without rounds) the ratio of the pooled p50s."""
    if r is fp32:
        return 1.0, None
    a, b = fp32.get("round_p50_ms"), r.get("round_p50_ms")
    if a and b and len(a) == len(b):
        mean, ci = ratio(a, b)
        return round(mean, 3), [round(x, 3) for x in ci] if ci else None
    return round(fp32["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3), None


def faster(a: dict, b: dict) -> bool:
    """Whether `a` is faster than `b` beyond the noise: the 95% interval of b's latency over a's, paired by
    round, lies above 1 (rows without rounds: a's slowest round median is below b's fastest)."""
    ra, rb = a.get("round_p50_ms"), b.get("round_p50_ms")
    if ra and rb and len(ra) == len(rb) and len(ra) > 1:
        ci = ratio(rb, ra)[1]
        return ci is not None and ci[0] > 1
    sa, sb = a.get("latency_spread_ms"), b.get("latency_spread_ms")
    if sa and sb:
        return sa[1] < sb[0]
    return a["latency_ms"]["p50"] < b["latency_ms"]["p50"]


def more_accurate(a: dict, b: dict) -> bool:
    """Whether `a` is more accurate than `b` beyond the noise: their top-1 intervals against FP32 do not overlap
    (rows without intervals: a higher top-1)."""
    ca, cb = a.get("top1_delta_ci"), b.get("top1_delta_ci")
    if ca and cb:
        return ca[0] > cb[1]
    return a["top1"] > b["top1"]


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
    """A row is on its runtime's front if it is made for that runtime and no other such row is at least as
    accurate and at least as fast, and better in one of the two beyond the noise (a tie is not a win)."""
    def dominates(o: dict, r: dict) -> bool:
        return (o["top1"] >= r["top1"] and o["latency_ms"]["p50"] <= r["latency_ms"]["p50"]
                and (more_accurate(o, r) or faster(o, r)))

    mine = [r for r in results if r.get("top1") is not None and on_target(r)]
    for r in results:
        r["pareto"] = r in mine and not any(o is not r and o["backend"] == r["backend"] and dominates(o, r)
                                            for o in mine)


def backends_of(results: list[dict]) -> list[str]:
    return sorted({r["backend"] for r in results}, key=lambda b: (b != "onnxruntime-cpu", b))


def on_target(r: dict) -> bool:
    """Whether a result's latency was taken on the runtime its file is made for (tensorrt-<device> is tensorrt)."""
    return r["target"] == "any" or r["backend"].startswith(r["target"])


def label(r: dict) -> str:
    return (r.get("engine") or r["variant"]).removesuffix(".engine")


PLOT, MEMORY_PLOT = "accuracy_latency.png", "memory.png"


def sensitivity_plot(r: dict) -> str:
    return f"sensitivity-{parse_variant(r['variant']).name}.png"
