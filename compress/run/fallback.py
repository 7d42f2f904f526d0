"""The fallback stage (accuracy-aware INT8): VARIANT-mixed for every int8 variant over budget, its most
INT8-sensitive layer groups kept in float until the budget holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import calibration
from compress import __version__, backends
from compress.core.errors import log
from compress.core.metrics import accuracy as figures
from compress.core.stage import stage
from compress.core.store import read_json, sha256_file, write_json
from compress.core.variant import Variant, parse_variant
from compress.quantize import sensitivity
from compress.report.render import tried_text
from compress.run.context import Context
from compress.run.measure import BASELINE, accuracy, file_of


def fallbacks(ctx: Context) -> list[Variant]:
    """VARIANT-mixed for every int8 variant over budget on the baseline backend (latency is measured later,
    with every other variant)."""
    evaluation = ctx.evaluation
    ort = backends.get(BASELINE)
    pred = {v.name: accuracy(ctx, ort, v, file_of(ctx, v)) for v in ctx.spec.variants}
    fp32 = figures(pred["fp32"], evaluation.labels, pred["fp32"])
    mixed = []
    for v in ctx.spec.variants:
        if v.precision != "int8":
            continue
        r = figures(pred[v.name], evaluation.labels, pred["fp32"])
        drop = 100 * (fp32["top1"] - r["top1"])
        if ctx.spec.budget.excess(drop, r["agreement"]) > 0:
            log(f"{v.name}: over budget: {ctx.spec.budget.broken(drop, r['agreement'])}")
            m = fallback(ctx, v, fp32["top1"], pred["fp32"][:, 0])
            if m is not None:
                mixed.append(m)
    return mixed


def _ranking_images(ctx: Context, v: Variant) -> calibration.ImageSet:
    """Calibration-folder images not used for calibration, else (with a warning) evaluation images."""
    s, q = ctx.spec, ctx.spec.quantize
    used = set(ctx.calib.names)
    if any(rel not in used for rel, _ in calibration.list_images(s.calib)):
        subset = ctx.images(s.calib, q.sensitivity_images, "sensitivity", exclude=used)
        log(f"{v.name}: ranking layers on {len(subset)} calibration-folder images not used for calibration")
        return subset
    subset = ctx.evaluation.head(q.sensitivity_images)
    ctx.warn(f"{v.name}: every calibration image was used for calibration; ranking layers on "
             f"{len(subset)} evaluation images (lower --calib-limit to keep them apart)")
    return subset


def fallback(ctx: Context, v: Variant, base_top1: float, base_pred: np.ndarray) -> Variant | None:
    """Rank v's layer groups by INT8 sensitivity, then keep the fewest most sensitive out of INT8 within
    the budget; returns VARIANT-mixed, or None when no mix within the limit meets it."""
    s, q, parent, run = ctx.spec, ctx.spec.quantize, v.parent or "fp32", ctx.run_dir
    evaluation, subset = ctx.evaluation, _ranking_images(ctx, v)
    sens = run.sensitivity(v.name)
    key = {"qdq": ctx.digest(v.name), "fp32": ctx.digest(parent), "images": subset.key}

    def analyse(d: Path) -> dict:
        write_json(d / sens.name, sensitivity.analyse(run.onnx(v.name), run.onnx(parent), subset, ctx.pre))
        return {}

    stage(sens.parent, key, [sens.name], analyse)
    ranking = [e.get("layers", [e["layer"]]) for e in read_json(sens)["layers"]]
    mixed = parse_variant(f"{v.name}-mixed")

    def fill(d: Path) -> dict:
        facts = sensitivity.fallback((run.onnx(v.name), run.onnx(parent)), d, ranking, evaluation, ctx.pre,
                                     (base_top1, base_pred), s.budget, q.max_fallback_layers)
        write_json(d / "search.json", facts)
        facts["ranked_on"] = len(subset)
        facts["sensitivity"] = str(sens.relative_to(run.root))
        return {"fallback": facts}

    key = {"qdq": key["qdq"], "ranking": ranking, "budget": s.budget.__dict__, "max": q.max_fallback_layers,
           "images": evaluation.key, "compress": __version__}
    record, reused = stage(run.variant_dir(mixed.name), key, ["search.json"], fill)
    if record["fallback"]["kept"] is None:
        ctx.warn(f"{v.name}: no mix of up to {q.max_fallback_layers} most sensitive layer groups kept out of "
                 f"INT8 meets the budget (tried {tried_text(record['fallback']['tried'])})")
        return None
    record["sha256"]["model.onnx"] = sha256_file(run.onnx(mixed.name))
    record["variant"], record["parent"] = mixed.name, mixed.parent
    ctx.records[mixed.name] = record
    kept = len(record["fallback"]["kept"])
    log(f"{mixed.name}: {kept} layer(s) kept out of INT8" + (" (reused)" if reused else ""))
    return mixed
