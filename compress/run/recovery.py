"""The prune stage: a pruned variant (pNN, dN, s24) made from FP32 and recovered on unlabelled images.

The recovery policy in two parts: which method makes the pruned model (`METHODS`, picked by `method_of`), and
how the time budget is spent (`distill_epochs`: the reconstruction's refinement first, distillation with what is
left). A killed recovery resumes: the pruned model before distillation and distillation's epochs are kept in the
run's cache until the variant is finished."""

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
from compress.run.context import Context
from compress.run.recipe import S24_IMAGES, PruneSpec


def reconstruct_config(p: PruneSpec) -> ReconstructConfig:
    """The reconstruction's tunables from the run's options; the rest keep their defaults."""
    return ReconstructConfig(round_to=p.round_to, allocation=p.allocation, selection=p.selection,
                             refine_epochs=p.refine_epochs)


def _reconstruct(ctx: Context, v: Variant, seconds: float) -> tuple:
    subset = ctx.recovery_images.sample(ctx.spec.prune.reconstruction_images)
    started = time.perf_counter()
    config = reconstruct_config(ctx.spec.prune)
    if v.dropped_blocks is not None:
        net, facts = drop(ctx.torch_model(), subset, ctx.pre, v.dropped_blocks, config, seconds)
    else:
        net, facts = reconstruct.reconstruct(ctx.torch_model(), subset, ctx.pre, v.prune_ratio, config, seconds)
    facts.update(prune.count(net, ctx.pre.crop))
    return net, facts, [{"reconstruction": len(subset), "minutes": round((time.perf_counter() - started) / 60, 1)}]


def _torch_pruning(ctx: Context, v: Variant, seconds: float) -> tuple:
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


def _sparse_24(ctx: Context, v: Variant, seconds: float) -> tuple:
    net = copy.deepcopy(ctx.torch_model())
    facts = {**prune.sparsify_24(net, ctx.recovery_images.sample(S24_IMAGES), ctx.pre),
             **prune.count(net, ctx.pre.crop)}
    return net, facts, _bn_recalibration(ctx, net)


def _bn_recalibration(ctx: Context, net) -> list:
    if not ctx.spec.prune.bn_recalibration:
        return []
    prune.recalibrate_bn(net, ctx.recovery_images, ctx.pre)
    return [{"bn_recalibration": len(ctx.recovery_images)}]


# how each kind of pruned variant is made: (variant, seconds left) -> (model, facts, steps)
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
        started = time.perf_counter()
        net, facts, steps = pruned(ctx, v, work / "pruned.pt", started + 60 * p.recovery_minutes)
        epochs = distill_epochs(ctx, v, (net, facts), work / "plan.json", time.perf_counter() - started)
        if epochs:
            log(f"{v.name}: {epochs} epochs of distillation on {len(recovery)} images")
            keep = prune.zeros_kept(net) if v.prune == "s24" else None  # the 2:4 pattern outlives training
            steps.append({"distillation": distill.distill(net, ctx.torch_model(), recovery, ctx.pre,
                                                          p.distill_spec(epochs), work / "distill.pt",
                                                          on_step=keep)})
        prune.save(net, d / "model.pt", s.arch, facts)
        extra = {"compress.arch": s.arch, "compress.parent": "fp32"}
        if v.prune == "s24":
            extra["compress.sparsity"] = "2:4"
        exporter.export(net, d / "model.onnx", ctx.pre.crop, ctx.meta(v, **extra))
        return {"source": "torch", "prune": facts, "recovery": steps or ["none"], "params": facts["params"],
                "macs": facts["macs"], "parity": exporter.parity(net, d / "model.onnx", ctx.sample)}

    ctx.record(v, *stage(ctx.run_dir.variant_dir(v.name), key, ["model.onnx", "model.pt"], fill))
    if work.exists():  # the variant is finished: its recovery's intermediate files are not needed
        shutil.rmtree(work, ignore_errors=True)


def pruned(ctx: Context, v: Variant, keep: Path, deadline: float) -> tuple:
    """The pruned model before distillation, with what was done: from `keep` when a killed run left it. The
    reconstruction refines its blocks for as long as it can and still end by `deadline` (`time.perf_counter`)."""
    if keep.exists():  # the cache may have travelled with the run directory: used only if it is whole
        try:
            record = prune.load_record(keep)
            facts = record["facts"]
            if isinstance(facts.get("pruning"), dict) and isinstance(facts.get("steps"), list):
                return prune.from_record(record, keep), facts["pruning"], facts["steps"]
        except (UserError, KeyError, TypeError, ValueError, RuntimeError, AttributeError):
            pass
    net, facts, steps = METHODS[method_of(v, ctx.spec.prune)](ctx, v, deadline - time.perf_counter())
    prune.save(net, keep, ctx.spec.arch, {"pruning": facts, "steps": steps})
    return net, facts, steps


def distill_epochs(ctx: Context, v: Variant, made: tuple, plan: Path, spent: float) -> int:
    """--distill-epochs, or as many epochs as fit in what the recovery budget leaves, measured here once (a
    resumed run keeps the first plan). None when the budget cut the reconstruction's refinement short: more
    passes of it serve agreement with FP32 better than distillation, which on a refined ResNet-50 p30 took
    agreement down (benchmarks/results/prune-distill.md). `made`: the pruned model and its facts."""
    p = ctx.spec.prune
    if p.distill_epochs is not None:
        return p.distill_epochs
    recorded = (read_record(plan) or {}).get("epochs")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and 0 <= recorded <= 1000:
        return recorded
    net, facts = made
    left = 60 * p.recovery_minutes - spent
    passes = facts.get("refine_passes") or []
    if left <= 0 or any(n < facts.get("refine_epochs", 0) for n in passes):
        write_json(plan, {"epochs": 0, "left_seconds": round(left), "refine_passes": passes})
        return 0
    images = ctx.recovery_images
    per_image = distill.seconds_per_image(net, ctx.torch_model(), images, ctx.pre, p.distill_spec(1))
    epochs = max(0, min(distill.MAX_AUTO_EPOCHS, int(left / (per_image * len(images)))))
    log(f"{v.name}: distillation at {per_image * 1000:.0f} ms per image here; {left / 60:.1f} of "
        f"{p.recovery_minutes:g} recovery minutes left: {epochs} epochs")
    write_json(plan, {"epochs": epochs, "seconds_per_image": per_image, "left_seconds": round(left)})
    return epochs
