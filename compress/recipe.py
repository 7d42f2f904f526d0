"""What a run is asked to do: frozen records, resolved once from the CLI and saved with the run."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from calibration.images import Preprocess
from compress.errors import UserError
from compress.quantize import FORMATS, METHODS

PRECISIONS = ("fp32", *FORMATS)  # fp32, int8 (TensorRT Q/DQ), int8-cpu (onnxruntime CPU)
_VARIANT = re.compile(r"^(?:(?P<prune>p\d{1,2}|s24)(?:-|$))?(?P<precision>fp32|int8-cpu|int8)?$")


@dataclass(frozen=True)
class Variant:
    """One deployable model: an optional pruning step, then a precision. `p30-int8` = 30% pruned, then INT8."""

    name: str
    prune: str | None
    precision: str

    @property
    def parent(self) -> str | None:
        """The variant this one is made from (its lineage): int8 <- fp32, p30-int8 <- p30 <- fp32."""
        if self.precision != "fp32":
            return self.prune or "fp32"
        return "fp32" if self.prune else None

    @property
    def prune_ratio(self) -> float | None:
        return int(self.prune[1:]) / 100 if self.prune and self.prune.startswith("p") else None


def parse_variant(name: str) -> Variant:
    m = _VARIANT.match(name.strip())
    if not name.strip() or not m:
        raise UserError(f"unknown variant {name!r}",
                        "variants are fp32, int8, int8-cpu, pNN (NN% channels pruned), s24 (2:4 sparse), "
                        "and pruned+quantized such as p30-int8")
    prune, precision = m["prune"], m["precision"] or "fp32"
    if prune and prune.startswith("p") and not 0 < int(prune[1:]) < 100:
        raise UserError(f"variant {name!r}: the pruning ratio must be 1..99 percent")
    return Variant(name.strip(), prune, precision)


def parse_variants(text: str, prune_ratios: str | None = None) -> tuple[Variant, ...]:
    """Parse a comma list, adding each variant's parents (a report always has its FP32 baseline). A sweep of
    pruning ratios adds pNN for each ratio, and pNN-int8 (pNN-int8-cpu) when int8 (int8-cpu) is asked for."""
    wanted = [parse_variant(v) for v in text.split(",") if v.strip()]
    for ratio in (prune_ratios or "").split(","):
        if not ratio.strip():
            continue
        try:
            pct = round(float(ratio) * 100)
        except ValueError:
            raise UserError(f"--prune-ratios: {ratio!r} is not a number", "e.g. --prune-ratios 0.2,0.3,0.5") from None
        base = parse_variant(f"p{pct}")
        wanted.append(base)
        wanted += [parse_variant(f"{base.name}-{v.precision}") for v in wanted
                   if v.prune is None and v.precision != "fp32"]
    out: dict[str, Variant] = {"fp32": parse_variant("fp32")}
    for v in wanted:
        if v.parent and v.parent not in out:
            out[v.parent] = parse_variant(v.parent)
        out[v.name] = v
    return tuple(out.values())


@dataclass(frozen=True)
class RunSpec:
    model: str
    data: str
    out: str
    arch: str | None = None
    calib: str | None = None
    variants: tuple[Variant, ...] = field(default_factory=lambda: parse_variants("fp32,int8"))
    eval_limit: int | None = None
    calib_limit: int = 512
    calibration: str = "percentile"
    bias_correction: int = 256  # calibration images that measure the INT8 bias correction; 0: none
    max_top1_drop: float | None = None
    preprocess: Preprocess = Preprocess()
    latency_runs: int = 100
    throughput_batch: int = 32
    threads: int | None = None
    # pruning and its recovery
    importance: str = "l1"
    round_to: int = 8
    global_pruning: bool = False
    bn_recalibration: bool = True
    finetune_images: str | None = None
    finetune_epochs: int = 0
    finetune_labels: bool = False
    # accuracy-aware INT8
    fallback: bool = False
    min_agreement: float | None = None  # fraction of images whose top-1 must equal FP32's
    sensitivity_images: int = 100
    max_fallback_layers: int = 16

    def __post_init__(self) -> None:
        if self.calibration not in METHODS:
            raise UserError(f"unknown calibration method {self.calibration!r}", f"choose one of: {', '.join(METHODS)}")
        for name, value in (("--eval-limit", self.eval_limit), ("--calib-limit", self.calib_limit)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be a positive number of images, got {value}")
        if not self.is_onnx_model:
            from compress.model import ARCHS

            if not self.arch:
                raise UserError("a torch checkpoint needs --arch", f"one of: {', '.join(ARCHS)}")
            if self.arch not in ARCHS:
                raise UserError(f"unknown architecture {self.arch!r}", f"choose one of: {', '.join(ARCHS)}")
        if any(v.prune for v in self.variants):
            if self.is_onnx_model:
                raise UserError("pruning needs the torch model", "pass --model CHECKPOINT.pth with --arch")
            if self.importance not in ("l1", "l2", "taylor"):
                raise UserError(f"unknown importance {self.importance!r}", "choose from l1, l2, taylor")
        if self.fallback and self.max_top1_drop is None and self.min_agreement is None:
            raise UserError("--fallback needs an accuracy budget", "add --max-top1-drop POINTS or --min-agreement")
        if self.min_agreement is not None and not 0 < self.min_agreement <= 1:
            raise UserError(f"--min-agreement is a fraction in (0, 1], got {self.min_agreement}")
        if self.finetune_epochs and not self.finetune_images:
            raise UserError("--finetune-epochs needs --finetune-images DIR", "a folder of (unlabelled) images")
        if self.max_top1_drop is not None and self.max_top1_drop < 0:
            raise UserError(f"--max-top1-drop is in top-1 points and must be >= 0, got {self.max_top1_drop}")

    @property
    def is_onnx_model(self) -> bool:
        return self.model.lower().endswith(".onnx")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["variants"] = [v.name for v in self.variants]
        return d
