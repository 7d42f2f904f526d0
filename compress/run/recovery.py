"""The prune stage: a pruned variant (pNN, dN, s24) made from FP32 and recovered on unlabelled images.

The recovery policy in two parts: which method makes the pruned model (`METHODS`, picked by `method_of`), and its
plan (`planner`): the refinement passes of every block and the distillation epochs, fixed by the options alone, so
the same command gives the same model whatever the machine's speed or load. A time limit (--recovery-minutes) is
turned into passes once, before any work, from one probe, shown, recorded in the run's cache and reused by a rerun.
A killed recovery resumes: the finished blocks of a reconstruction, the pruned model before distillation and
distillation's epochs are kept in the run's cache until the variant is finished."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from compress import __version__
from compress.core import export as exporter
from compress.core.errors import UserError, log, require
from compress.core.stage import read_record, stage
from compress.core.store import sha256_json, write_json
from compress.core.variant import Variant
from compress.prune import channels as prune
from compress.prune import distill, reconstruct
from compress.prune.config import ReconstructConfig
from compress.prune.drop import drop
from compress.prune.refine import pass_seconds, plan_passes, planned_seconds
from compress.run.context import Context
from compress.run.recipe import S24_IMAGES, PruneSpec


def reconstruct_config(p: PruneSpec) -> ReconstructConfig:
    """The reconstruction's tunables from the run's options; the rest keep their defaults."""
    return ReconstructConfig(round_to=p.round_to, allocation=p.allocation, selection=p.selection,
                             refine_epochs=p.refine_epochs, refine_window=p.refine_window)


def planner(ctx: Context, v: Variant, work: Path) -> Callable | None:
    """None (every block gets --refine-epochs passes), or with --recovery-minutes the passes that fit, planned
    once from a probe of each block's pass (`refine.plan_passes`) and kept in `work`/plan.json for a rerun."""
    p = ctx.spec.prune
    if p.recovery_minutes is None or not p.refine_epochs:
        return None
    path = work / "plan.json"

    def plan(counts: list, bs: list) -> list[int]:
        recorded = (read_record(path) or {}).get("passes")
        if isinstance(recorded, list) and len(recorded) == len(bs) and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= p.refine_epochs for n in recorded):
            log(f"{v.name}: the recorded plan: {recorded} refinement passes")
            return recorded
        config = reconstruct_config(p)
        costs = pass_seconds(ctx.torch_model(), counts, ctx.pre.crop, p.reconstruction_images,
                             config.refine_batch, bs, config.refine_window)
        passes = plan_passes(costs, 60 * p.recovery_minutes, p.refine_epochs)
        estimate = planned_seconds(costs, passes[0]) / 60
        log(f"{v.name}: {passes[0]} refinement passes a block fit in {p.recovery_minutes:g} minutes here "
            f"(estimated {estimate:.0f} minutes with the fits); recorded in {path.name}")
        write_json(path, {"passes": passes, "pass_seconds": [round(c, 2) for c in costs],
                          "minutes": p.recovery_minutes, "estimated_minutes": round(estimate, 1)})
        return passes

    return plan


def _reconstruct(ctx: Context, v: Variant, work: Path) -> tuple:
    subset = ctx.recovery_images.sample(ctx.spec.prune.reconstruction_images)
    started = time.perf_counter()
    config, plan = reconstruct_config(ctx.spec.prune), planner(ctx, v, work)
    if v.dropped_blocks is not None:
        net, facts = drop(ctx.torch_model(), subset, ctx.pre, v.dropped_blocks, config, plan, keep=work)
    else:
        net, facts = reconstruct.reconstruct(ctx.torch_model(), subset, ctx.pre, v.prune_ratio, config, plan,
                                             keep=work)
    facts.update(prune.count(net, ctx.pre.crop))
    return net, facts, [{"reconstruction": len(subset), "minutes": round((time.perf_counter() - started) / 60, 1)}]


def _torch_pruning(ctx: Context, v: Variant, work: Path) -> tuple:
    p, teacher, pre = ctx.spec.prune, ctx.torch_model(), ctx.pre
    net, labelled = copy.deepcopy(teacher), None
    if p.method == "taylor":
        torch = require("torch")
        head = ctx.calib.head(64)
        labelled = (torch.from_numpy(pre.normalize(head.pixels)), torch.from_numpy(head.labels))
    target = int((1 - v.prune_ratio) * prune.count(teacher, pre.crop)["macs"])
    facts = prune.channels(net, v.prune_ratio, pre.crop, p.method, p.round_to, p.global_pruning, labelled,
                           target_macs=target)
    return net, facts, _bn_recalibration(ctx, net)


def _sparse_24(ctx: Context, v: Variant, work: Path) -> tuple:
    net = copy.deepcopy(ctx.torch_model())
    facts = {**prune.sparsify_24(net, ctx.recovery_images.sample(S24_IMAGES), ctx.pre),
             **prune.count(net, ctx.pre.crop)}
    return net, facts, _bn_recalibration(ctx, net)


def _bn_recalibration(ctx: Context, net) -> list:
    if not ctx.spec.prune.bn_recalibration:
        return []
    prune.recalibrate_bn(net, ctx.recovery_images, ctx.pre)
    return [{"bn_recalibration": len(ctx.recovery_images)}]


# how each kind of pruned variant is made: (variant, its work folder) -> (model, facts, steps)
METHODS: dict[str, Callable[[Context, Variant, float], tuple]] = {
    "reconstruct": _reconstruct, "torch-pruning": _torch_pruning, "s24": _sparse_24}


def method_of(v: Variant, p: PruneSpec) -> str:
    if v.dropped_blocks is not None or (v.prune_ratio is not None and p.method == "reconstruct"):
        return "reconstruct"
    return "torch-pruning" if v.prune_ratio is not None else "s24"


def prune_variant(ctx: Context, v: Variant) -> None:
    s, p = ctx.spec, ctx.spec.prune
    recovery = ctx.recovery_images
    key = {"fp32": ctx.digest("fp32"), "prune": v.prune, "options": p.__dict__,
           "recovery_images": recovery.key, "compress": __version__, "revision": reconstruct.REVISION}
    work = ctx.run_dir.cache / f"recover-{v.name}-{sha256_json(key)[:16]}"

    def fill(d: Path) -> dict:
        net, facts, steps = pruned(ctx, v, work)
        if p.distill_epochs:
            log(f"{v.name}: {p.distill_epochs} epochs of distillation on {len(recovery)} images")
            keep = prune.zeros_kept(net) if v.prune == "s24" else None  # the 2:4 pattern outlives training
            steps.append({"distillation": distill.distill(net, ctx.torch_model(), recovery, ctx.pre,
                                                          p.distill_spec(p.distill_epochs), work / "distill.pt",
                                                          on_step=keep)})
        prune.save(net, d / "model.pt", s.arch, facts)
        extra = {"compress.arch": s.arch, "compress.parent": "fp32"}
        if v.prune == "s24":
            extra["compress.sparsity"] = "2:4"
        exporter.export(net, d / "model.onnx", ctx.pre.crop, ctx.meta(v, **extra))
        return {"source": "torch", "prune": facts, "recovery": steps or ["none"], "params": facts["params"],
                "macs": facts["macs"], "parity": exporter.parity(net, d / "model.onnx", ctx.sample)}

    record, reused = stage(ctx.run_dir.variant_dir(v.name), key, ["model.onnx", "model.pt"], fill)
    ctx.record(v, record, reused)
    distilled = distill.distilled_on(record)  # `compress distill --images` recorded them
    same = [n for n, h in zip(ctx.evaluation.names, ctx.evaluation.hashes) if distill.content_key(h) in distilled]
    if same:
        ctx.warn(f"{len(same)} evaluation image(s) are also images {v.name} was distilled on (compress distill, "
                 f"same content), e.g. {same[0]}: its accuracy is optimistic")
    if work.exists():  # the variant is finished: its recovery's intermediate files are not needed
        shutil.rmtree(work, ignore_errors=True)


def pruned(ctx: Context, v: Variant, work: Path) -> tuple:
    """The pruned model before distillation, with what was done: from `work`/pruned.pt when a killed run left it
    (a reconstruction killed before it ended resumes at its first unfinished block)."""
    keep = work / "pruned.pt"
    if keep.exists():  # the cache may have travelled with the run directory: used only if it is whole
        try:
            record = prune.load_record(keep)
            facts = record["facts"]
            if isinstance(facts.get("pruning"), dict) and isinstance(facts.get("steps"), list):
                return prune.from_record(record, keep), facts["pruning"], facts["steps"]
        except (UserError, KeyError, TypeError, ValueError, RuntimeError, AttributeError):
            pass
    net, facts, steps = METHODS[method_of(v, ctx.spec.prune)](ctx, v, work)
    prune.save(net, keep, ctx.spec.arch, {"pruning": facts, "steps": steps})
    return net, facts, steps
