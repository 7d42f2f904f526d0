"""What a run is asked to do: one small frozen spec per concern, each validated once where it is made, and the
run spec that holds them. The CLI builds each spec from its own argument group (`from_args`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from calibration.images import Preprocess
from compress.backends import REGISTRY
from compress.core.budget import Budget
from compress.core.cpu import CPU_CLASSES
from compress.core.errors import UserError
from compress.core.model import ARCHS
from compress.core.variant import Variant, parse_variants
from compress.prune.channels import IMPORTANCES
from compress.prune.config import ALLOCATIONS, SELECTIONS
from compress.prune.config import DEFAULT as RECONSTRUCTION
from compress.prune.distill import DistillSpec
from compress.quantize.ptq import BIAS_CORRECTION_IMAGES, METHODS


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class QuantizeSpec:
    calib_limit: int = 512
    calibration: str = "percentile"
    bias_correction: int = BIAS_CORRECTION_IMAGES  # calibration images that measure the bias correction; 0: none
    fallback: bool = False  # accuracy-aware INT8: VARIANT-mixed when VARIANT is over budget
    sensitivity_images: int = 100
    max_fallback_layers: int = 16  # in groups of layers that share a quantized input
    cpu_class: str = "auto"  # the CPUs int8-cpu is made for (quantize.CPU_CLASSES); auto: this one's

    def __post_init__(self) -> None:
        if self.calibration not in METHODS:
            raise UserError(f"unknown calibration method {self.calibration!r}", f"choose one of: {', '.join(METHODS)}")
        if self.cpu_class not in ("auto", *CPU_CLASSES):
            raise UserError(f"unknown CPU class {self.cpu_class!r}", f"choose one of: auto, {', '.join(CPU_CLASSES)}")
        if self.calib_limit < 1:
            raise UserError(f"--calib-limit must be a positive number of images, got {self.calib_limit}")


PRUNE_METHODS = ("reconstruct", *IMPORTANCES)
S24_IMAGES = 256  # images whose Gram matrices choose and update s24's weights (benchmarks/results/s24-update.md)


@dataclass(frozen=True)
class PruneSpec:
    """pNN removes NN% of the FP32 model's MACs. `method` reconstruct: inner bottleneck channels, re-fitted to
    the FP32 activations on `reconstruction_images` unlabelled images, each block then refined by `refine_epochs`
    passes of Adam; l1/l2/taylor: Torch-Pruning's criteria over every channel group, recovered by BatchNorm
    re-estimation (`bn_recalibration`). Then `distill_epochs` of distillation from FP32 (default none). The plan is
    fixed by these options, not by the clock; `recovery_minutes`, when given, turns a time limit into refinement
    passes once, before the work (`run.recovery.planner`)."""

    method: str = "reconstruct"
    reconstruction_images: int = 1000
    allocation: str = RECONSTRUCTION.allocation  # reconstruct: where the channels go (`prune.allocate`)
    selection: str = RECONSTRUCTION.selection  # reconstruct: which channels stay (OBS on the re-fit, or energy)
    refine_epochs: int = 4  # reconstruct: Adam passes a block after its fit (at most this many with a time limit)
    refine_window: float = RECONSTRUCTION.refine_window  # reconstruct: of each block's output side, what a step sees
    round_to: int = RECONSTRUCTION.round_to
    global_pruning: bool = False
    bn_recalibration: bool = True
    recovery_minutes: float | None = None  # a time limit, planned once (None: --refine-epochs passes a block)
    distill_images: str | None = None
    distill_epochs: int = 0
    distill_lr: float = DistillSpec.lr  # measured on ResNet-50 p30: 1e-4 undoes the reconstruction, 1e-5 adds
    distill_batch: int = DistillSpec.batch_size

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UserError(f"unknown pruning method {self.method!r}", f"choose from {', '.join(PRUNE_METHODS)}")
        if self.allocation not in ALLOCATIONS:
            raise UserError(f"unknown allocation {self.allocation!r}", f"choose from {', '.join(ALLOCATIONS)}")
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown selection {self.selection!r}", f"choose from {', '.join(SELECTIONS)}")
        if not 8 <= self.reconstruction_images <= 100_000:
            raise UserError(f"--reconstruction-images must be 8..100000, got {self.reconstruction_images}")
        if not 0 <= self.refine_epochs <= 100:
            raise UserError(f"--refine-epochs must be 0..100, got {self.refine_epochs}")
        _finite("--refine-window", self.refine_window)
        if not 0 < self.refine_window <= 1:
            raise UserError(f"--refine-window must be a fraction in (0, 1], got {self.refine_window}")
        _finite("--recovery-minutes", self.recovery_minutes)
        if self.recovery_minutes is not None and not 0 <= self.recovery_minutes <= 100_000:
            raise UserError(f"--recovery-minutes must be 0..100000, got {self.recovery_minutes}")
        if not 0 <= self.distill_epochs <= 1000:
            raise UserError(f"--distill-epochs must be 0..1000, got {self.distill_epochs}")
        self.distill_spec(self.distill_epochs)  # validates the distillation options

    def distill_spec(self, epochs: int) -> DistillSpec:
        return DistillSpec(epochs=epochs, lr=self.distill_lr, batch_size=self.distill_batch)


@dataclass(frozen=True)
class MeasureSpec:
    latency_runs: int = 100  # timed batch-1 runs per variant, split across the rounds
    rounds: int = 7  # interleaved rounds, each running every variant once in a fresh process: the speedup's
    # interval comes from the per-round ratios; with 3 rounds it is about 2.7 times as wide as with 7
    throughput_batch: int = 32
    threads: int | None = None
    eval_limit: int | None = None
    backends: tuple[str, ...] | None = None  # None: every usable backend `compress run` measures

    def __post_init__(self) -> None:

        unknown = [b for b in self.backends or () if b not in REGISTRY]
        if unknown or self.backends == ():
            raise UserError(f"unknown backend(s) {', '.join(unknown) or 'none given'}",
                            f"choose from {', '.join(REGISTRY)}; 'compress doctor' says which work here")
        if self.backends is not None and "onnxruntime-cpu" not in self.backends:
            raise UserError("--backends must include onnxruntime-cpu",
                            "it measures every variant and holds the FP32 predictions agreement is counted against")
        if not 1 <= self.latency_runs <= 100_000:
            raise UserError(f"--latency-runs must be 1..100000, got {self.latency_runs}")
        if not 1 <= self.rounds <= 100:
            raise UserError(f"--rounds must be 1..100, got {self.rounds}")
        if not 1 <= self.throughput_batch <= 1024:
            raise UserError(f"--throughput-batch must be 1..1024, got {self.throughput_batch}")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise UserError(f"--threads must be 1..1024, got {self.threads}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UserError(f"--eval-limit must be a positive number of images, got {self.eval_limit}")


@dataclass(frozen=True)
class RunSpec:
    model: str
    data: str
    out: str
    arch: str | None = None
    calib: str | None = None
    variants: tuple[Variant, ...] = field(default_factory=lambda: parse_variants("fp32,int8"))
    preprocess: Preprocess = Preprocess()
    quantize: QuantizeSpec = QuantizeSpec()
    prune: PruneSpec = PruneSpec()
    measure: MeasureSpec = MeasureSpec()
    budget: Budget = Budget()

    def __post_init__(self) -> None:
        b = self.budget
        _finite("--max-top1-drop", b.max_top1_drop)
        _finite("--min-agreement", b.min_agreement)
        if b.max_top1_drop is not None and not 0 <= b.max_top1_drop <= 100:
            raise UserError(f"--max-top1-drop is in top-1 points, 0..100, got {b.max_top1_drop}")
        if b.min_agreement is not None and not 0 < b.min_agreement <= 1:
            raise UserError(f"--min-agreement is a fraction in (0, 1], got {b.min_agreement}")
        if self.quantize.fallback and not b:
            raise UserError("--fallback needs an accuracy budget", "add --max-top1-drop POINTS or --min-agreement")
        if not self.is_onnx_model:
            if not self.arch:
                raise UserError("a torch checkpoint needs --arch", f"one of: {', '.join(ARCHS)}")
            if self.arch not in ARCHS:
                raise UserError(f"unknown architecture {self.arch!r}", f"choose one of: {', '.join(ARCHS)}")
        if any(v.prune for v in self.variants) and self.is_onnx_model:
            raise UserError("pruning needs the torch model", "pass --model CHECKPOINT.pth with --arch")

    @property
    def is_onnx_model(self) -> bool:
        return self.model.lower().endswith(".onnx")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["variants"] = [v.name for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict, out: str) -> RunSpec:
        """A run's recorded options (`to_dict`, its recipe.json: untrusted) for a new run into `out`. Every
        value passes the same checks as on the command line; paths are checked by the caller as any."""
        if not isinstance(d, dict):
            raise UserError("a recipe is a JSON object")
        parts = {"preprocess": Preprocess, "quantize": QuantizeSpec, "prune": PruneSpec, "measure": MeasureSpec,
                 "budget": Budget}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"the recipe has unknown options: {', '.join(map(str, unknown))[:80]}")
        values = {k: v for k, v in d.items() if k not in parts and k not in ("variants", "out")}
        for k, v in values.items():
            if v is not None and not isinstance(v, str):
                raise UserError(f"the recipe's {k} is not a path or a name")
        variants = d.get("variants", ["fp32", "int8"])
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            raise UserError("the recipe's variants are not a list of names")
        for name, spec in parts.items():
            given = d.get(name, {})
            fields = {f.name for f in dataclasses.fields(spec)}
            if not isinstance(given, dict) or set(given) - fields:
                raise UserError(f"the recipe's {name} options are not those of this compress")
            given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
            try:
                values[name] = spec(**given)
            except (TypeError, ValueError) as exc:
                raise UserError(f"the recipe's {name} options are not valid ({str(exc)[:80]})") from None
        return cls(**values, out=out, variants=parse_variants(",".join(variants)))


def from_args(cls, args) -> object:
    """A spec from the CLI's parsed arguments: every field of `cls` that the arguments carry."""
    values = vars(args)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
