"""What the report recommends: for each runtime, the fastest variant made for it within the budget."""

from __future__ import annotations

from compress.core.budget import DEFAULT_BUDGET, Budget
from compress.core.variant import parse_variant
from compress.report.data import backends_of, faster, label, on_target
from compress.report.intervals import includes


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


def steps(r: dict) -> int:
    """How far a variant is from FP32: one step each for pruning, quantization and the mixed-precision search."""
    v = parse_variant(r["variant"])
    return (v.prune is not None) + (v.precision != "fp32") + v.mixed


def recommendations(data: dict) -> list[dict]:
    """For each runtime measured: among the variants made for it within the run's budget (by default
    `DEFAULT_BUDGET`), the fastest, unless it is not faster beyond the noise than a simpler one (fewer steps from
    FP32, then higher agreement): a tie goes to the simpler variant, and the recommendation says so."""
    budget = budget_of(data) or DEFAULT_BUDGET
    out = []
    for backend in backends_of(data["results"]):
        mine = [r for r in data["results"] if r["backend"] == backend and r.get("top1") is not None]
        fits = sorted((r for r in mine if on_target(r) and not budget.over(r)), key=lambda r: r["latency_ms"]["p50"])
        base = next((r for r in mine if r["variant"] == "fp32" and r["precision"] == "fp32"), None)
        if not fits:
            out.append({"backend": backend, "variant": None, "budget": budget.text()})
            continue
        fastest = fits[0]
        tied = [r for r in fits if r is fastest or not faster(fastest, r)]
        best = min(tied, key=lambda r: (steps(r), -(r.get("agreement") or 0), r["latency_ms"]["p50"]))
        rec = {"backend": backend, "variant": label(best), "budget": budget.text(),
               "speedup": best.get("speedup"), "speedup_ci": best.get("speedup_ci"),
               "smaller": (1 / best["size_ratio"]) if best.get("size_ratio") else None,
               "top1_delta": best.get("top1_delta"), "top1_delta_ci": best.get("top1_delta_ci"),
               "agreement": best.get("agreement"), "flips": best.get("flips"), "p50_ms": best["latency_ms"]["p50"],
               "fp32_p50_ms": base["latency_ms"]["p50"] if base else None}
        if best is not fastest:
            rec["tied_with"] = label(fastest)
        out.append(rec)
    return out


def change_text(delta: float | None, ci: list | None) -> str:
    """A top-1 difference from FP32 in words: 'no measurable change' when its 95% interval holds zero."""
    if delta is None:
        return "top-1 against FP32 not measured"
    if ci is None:
        return f"top-1 {delta:+.2f} points"
    if includes(ci, 0):
        return f"no measurable change in top-1 ({delta:+.1f} points, 95% interval {ci[0]:+.1f} to {ci[1]:+.1f})"
    return f"top-1 {delta:+.1f} points (95% interval {ci[0]:+.1f} to {ci[1]:+.1f})"


def recommendation_lines(data: dict) -> list[str]:
    lines = []
    for rec in data.get("recommendations") or recommendations(data):
        if rec["variant"] is None:
            lines.append(f"**{rec['backend']}**: no variant made for it is within the budget ({rec['budget']})")
            continue
        bought = []
        if rec["variant"] != "fp32" and rec.get("speedup") is not None:
            ci = rec.get("speedup_ci")
            bought.append(f"{rec['speedup']:.2f}x faster at batch 1" + (f" (95% interval {ci[0]:.2f}–{ci[1]:.2f}x)"
                                                                          if ci else ""))
        elif rec["variant"] != "fp32":
            bought.append(f"{rec['p50_ms']:.1f} ms at batch 1 (no FP32 on this runtime to compare with)")
        if rec["variant"] != "fp32" and rec.get("smaller"):
            bought.append(f"{rec['smaller']:.1f}x smaller file")
        bought.append(change_text(rec.get("top1_delta"), rec.get("top1_delta_ci")))
        if rec.get("agreement") is not None and rec["variant"] != "fp32":
            bought.append(f"{100 * rec['agreement']:.1f}% agreement ({rec['flips']} flips)")
        line = f"**{rec['backend']}**: ship `{rec['variant']}`: " + ", ".join(bought)
        if rec.get("tied_with"):
            line += (f"; `{rec['tied_with']}` is not faster beyond the noise (the paired interval of their per-round "
                     f"latencies holds 1), so the simpler variant is recommended")
        lines.append(line + f" (budget: {rec['budget']})")
    for n in data.get("not_measured", []):
        lines.append(f"**{n['backend']}**: not measured here: {n['reason']}")
    return lines
