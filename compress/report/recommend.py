"""What the report recommends: for each runtime, the fastest variant made for it within the budget."""

from __future__ import annotations

from compress.core.budget import DEFAULT_BUDGET, Budget
from compress.report.data import backends_of, label, on_target


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
    for backend in backends_of(data["results"]):
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


