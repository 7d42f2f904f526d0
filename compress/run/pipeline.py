"""`compress run`: a list of stages built from the spec, then iterated.

    images -> export -> prune -> quantize -> fallback -> measure (every usable backend) -> report

Every stage writes into the run directory (`RunDir`) and records a key (`core.stage`): a digest of its inputs
(content hashes of the files it reads, and its options). A later run with the same inputs finds the key and
reuses the stage; any change recomputes it and everything after it. Outputs are renamed into place before the
record is written, so a run killed at any point leaves either a finished stage or one that is redone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import calibration
from compress import report
from compress.core.metrics import environment
from compress.core.store import write_json
from compress.core.variant import Variant
from compress.run.context import Context
from compress.run.fallback import fallbacks
from compress.run.make import export, quantize_variant, warn_cpu_class
from compress.run.measure import measure_all, not_measured
from compress.run.recipe import RunSpec
from compress.run.recovery import prune_variant


@dataclass(frozen=True)
class Stage:
    """One step of the run: its name, the variant it makes (if any) and the function that runs it."""

    name: str
    variant: Variant | None
    run: Callable[[Context], None]


def make_stage(v: Variant) -> Stage:
    """The stage that makes variant `v` from its parent: export, prune or quantize."""
    if v.name == "fp32":
        return Stage("export", v, lambda ctx: export(ctx, v))
    if v.precision == "fp32":
        return Stage("prune", v, lambda ctx: prune_variant(ctx, v))
    return Stage("quantize", v, lambda ctx: quantize_variant(ctx, v))


def plan(spec: RunSpec) -> list[Stage]:
    """Every stage of a run, in order (parse_variants puts parents before their children)."""
    stages = [Stage("images", None, _check_images)]
    stages += [make_stage(v) for v in spec.variants]
    stages.append(Stage("cpu-class", None, warn_cpu_class))
    if spec.quantize.fallback:
        stages.append(Stage("fallback", None, _add_fallbacks))
    stages.append(Stage("measure", None, _measure))
    stages.append(Stage("report", None, _report))
    return stages


class Pipeline:
    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.ctx = Context(spec)

    def run(self) -> dict:
        with self.ctx.run_dir.create().lock():
            for step in plan(self.spec):
                step.run(self.ctx)
            return self.ctx.report


def _check_images(ctx: Context) -> None:
    """Decode the evaluation images; flag those that are also calibration images, or recovery images (every image
    a pruned variant is re-fitted on: --distill-images, else the whole calibration folder)."""
    s = ctx.spec
    evaluation = ctx.evaluation
    if any(v.precision != "fp32" or v.prune for v in s.variants):
        same = calibration.overlap(evaluation, ctx.calib)
        if same:
            ctx.warn(f"{len(same)} evaluation image(s) are also calibration images (same content), "
                     f"e.g. {same[0]}: accuracy is optimistic")
    if any(v.prune for v in s.variants):
        same = calibration.overlap(evaluation, ctx.recovery_images)
        if same:
            ctx.warn(f"{len(same)} evaluation image(s) are also recovery images (same content), e.g. {same[0]}: "
                     "the pruned variants were fitted on them, so their accuracy is optimistic")
    write_json(ctx.run_dir.recipe, s.to_dict())  # inputs validated: this run's options are now its record


def _add_fallbacks(ctx: Context) -> None:
    ctx.measured += fallbacks(ctx)


def _measure(ctx: Context) -> None:
    ctx.rows = measure_all(ctx, ctx.measured)


def _report(ctx: Context) -> None:
    s = ctx.spec
    ctx.report = report.assemble(ctx.rows, environment(), s, ctx.evaluation, ctx.warnings,
                                 not_measured(s.measure.backends))
    report.write(ctx.run_dir.root, ctx.report)
