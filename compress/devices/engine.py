"""Every decision about a TensorRT engine, as pure functions: no TensorRT needed to run or test them.

`backends/tensorrt.py` carries out a `BuildPlan`; everything that depends on the TensorRT major version, the
precision, the variant and the device is decided here:

- TensorRT 11 removed implicit quantization: no INT8/FP16 builder flags, networks always strongly typed. INT8
  comes from the Q/DQ ONNX, FP16 from an FP16 ONNX (a cast pass made on the CPU).
- TensorRT 10 (Jetson Orin, JetPack 6) keeps the flags: FP16 from the FP32 ONNX with BuilderFlag.FP16, INT8
  from the Q/DQ ONNX with BuilderFlag.INT8 (and FP16 so layers left out of INT8 need not run in FP32).
- TF32 is on by default in every version: cleared for FP32, so the baseline is true FP32.
- DLA runs FP16/INT8 only; unsupported layers fall back to the GPU only when asked, and silently, so the
  sidecar records it.
- An engine is tied to the GPU, its compute capability, the TensorRT version and the OS: engines live under a
  directory keyed by all four and are refused anywhere else.
"""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, dataclass

from compress.core.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
BUILD_MAJORS = (10, 11)  # what `compress build` runs on; plans (and trtexec lines) also cover TensorRT 8.5+


@dataclass(frozen=True)
class Device:
    """What an engine is tied to."""

    gpu: str
    compute_capability: str  # "9.0"
    tensorrt: str  # full version, "10.13.0.35"
    os: str = f"{platform.system()}-{platform.machine()}"

    @property
    def tensorrt_major(self) -> int:
        return int(self.tensorrt.split(".")[0])

    @property
    def key(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"{gpu}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt}-{self.os.lower()}"


@dataclass(frozen=True)
class Profile:
    """The dynamic-batch optimization profile of the input."""

    input: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32

    def shapes(self) -> dict[str, list[int]]:
        return {k: [b, *self.chw] for k, b in
                (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch))}


@dataclass(frozen=True)
class BuildPlan:
    variant: str
    precision: str
    onnx: str  # which ONNX of the variant to parse: "model.onnx" or "model-fp16.onnx"
    strongly_typed: bool
    set_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    profile: Profile
    workspace_mib: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = self.profile.shapes()
        return d

    @property
    def engine_name(self) -> str:
        """fp32, fp16, int8, p30-fp16, int8-dla0: the variant's name, its precision only where it changes."""
        name = self.variant
        if self.precision == "fp16":
            stem = name.removesuffix("fp32").rstrip("-")
            name = f"{stem}-fp16" if stem else "fp16"
        return name + (f"-dla{self.dla_core}" if self.dla_core is not None else "")


@dataclass(frozen=True)
class Placement:
    """Where an engine runs and what its builder may use: a workspace limit, a DLA core (with or without falling
    back to the GPU for the layers DLA cannot run)."""

    workspace_mib: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False


GPU = Placement()


def plan(variant: str, variant_precision: str, precision: str, tensorrt_major: int, profile: Profile,
         sparse: bool = False, placement: Placement = GPU) -> BuildPlan:
    """How to build `precision` from a variant whose ONNX is `variant_precision` (fp32 or the int8 Q/DQ file)."""
    workspace_mib, dla_core, gpu_fallback = placement.workspace_mib, placement.dla_core, placement.gpu_fallback
    if tensorrt_major < 8:
        raise UserError(f"TensorRT {tensorrt_major}.x is too old for Q/DQ INT8 networks", "use TensorRT 8.5 or newer")
    if precision not in PRECISIONS:
        raise UserError(f"unknown engine precision {precision!r}", f"choose from {', '.join(PRECISIONS)}")
    quantized = variant_precision.startswith("int8")
    if quantized != (precision == "int8"):
        raise UserError(f"variant {variant} ({variant_precision}) cannot give a {precision} engine",
                        "INT8 engines come from the int8 (Q/DQ) variants, FP32/FP16 from the float ones")
    if variant_precision == "int8-cpu":
        raise UserError(f"variant {variant} is quantized for onnxruntime's CPU kernels (uint8 activations)",
                        "build TensorRT engines from the int8 variant")
    if dla_core is not None and precision == "fp32":
        raise UserError("DLA runs FP16 and INT8 only", "use --precisions fp16,int8 with --dla-core")
    if gpu_fallback and dla_core is None:
        raise UserError("--gpu-fallback only applies with --dla-core")

    set_flags: list[str] = []
    clear_flags: list[str] = []
    onnx = "model.onnx"
    strongly_typed = tensorrt_major >= 11
    if precision == "fp32":
        clear_flags.append("TF32")  # on by default: FP32 means FP32
    elif tensorrt_major >= 11:
        if precision == "fp16":
            onnx = "model-fp16.onnx"  # strong typing: the network's types are the ONNX's types
        # int8: the Q/DQ nodes say everything; there is no flag to set
    else:
        set_flags.append("FP16")
        if precision == "int8":
            set_flags.append("INT8")
    if sparse:
        set_flags.append("SPARSE_WEIGHTS")
    if gpu_fallback:
        set_flags.append("GPU_FALLBACK")
    return BuildPlan(variant, precision, onnx, strongly_typed, tuple(set_flags), tuple(clear_flags), profile,
                     workspace_mib, dla_core, gpu_fallback)


def sidecar(plan_: BuildPlan, device: Device, onnx_sha256: str, build_seconds: float, engine_bytes: int) -> dict:
    """What is written beside each engine: enough to know what it is and where it may run."""
    return {
        "engine": f"{plan_.engine_name}.engine",
        "tensorrt": device.tensorrt,
        "gpu": device.gpu,
        "compute_capability": device.compute_capability,
        "os": device.os,
        "device_key": device.key,
        "variant": plan_.variant,
        "precision": plan_.precision,
        "profile": plan_.profile.shapes(),
        "build": {"strongly_typed": plan_.strongly_typed, "set_flags": list(plan_.set_flags),
                  "clear_flags": list(plan_.clear_flags), "workspace_mib": plan_.workspace_mib,
                  "dla_core": plan_.dla_core, "gpu_fallback": plan_.gpu_fallback},
        "source_onnx": plan_.onnx,
        "source_onnx_sha256": onnx_sha256,
        "build_seconds": round(build_seconds, 2),
        "engine_bytes": engine_bytes,
    }


def check_compatible(side: dict, device: Device) -> None:
    """Refuse an engine built elsewhere: engines are not portable across GPU, TensorRT version or OS."""
    wanted = {"gpu": device.gpu, "compute_capability": device.compute_capability, "tensorrt": device.tensorrt,
              "os": device.os}
    differs = [f"{k}: built for {side.get(k)!r}, this machine has {v!r}" for k, v in wanted.items() if side.get(k) != v]
    if differs:
        raise UserError(f"engine {side.get('engine')} was built on another device or TensorRT ({'; '.join(differs)})",
                        "rebuild it here with 'compress build' (Jetson engines are built on the Jetson)")


def reusable(side: dict | None, plan_: BuildPlan, device: Device, onnx_sha256: str) -> bool:
    """An existing engine is reused only if it was built here, from the same ONNX, with the same plan."""
    if not side:
        return False
    try:
        check_compatible(side, device)
    except UserError:
        return False
    fresh = sidecar(plan_, device, onnx_sha256, 0.0, 0)
    return side.get("source_onnx_sha256") == onnx_sha256 and side.get("build") == fresh["build"] \
        and side.get("profile") == fresh["profile"]


def trtexec_command(plan_: BuildPlan, onnx_path: str, engine_path: str, timing_cache: str | None = None) -> str:
    """The equivalent trtexec line, for users who build with NVIDIA's tool on the device."""
    shapes = plan_.profile.shapes()

    def dims(kind: str) -> str:
        return f"{plan_.profile.input}:{'x'.join(map(str, shapes[kind]))}"

    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--minShapes={dims('min')}", f"--optShapes={dims('opt')}", f"--maxShapes={dims('max')}"]
    flag_options = {"FP16": "--fp16", "INT8": "--int8", "SPARSE_WEIGHTS": "--sparsity=enable",
                    "GPU_FALLBACK": "--allowGPUFallback"}
    parts += [flag_options[f] for f in plan_.set_flags]
    if "TF32" in plan_.clear_flags:
        parts.append("--noTF32")
    if plan_.strongly_typed:
        parts.append("--stronglyTyped")
    if plan_.dla_core is not None:
        parts.append(f"--useDLACore={plan_.dla_core}")
    if plan_.workspace_mib:
        parts.append(f"--memPoolSize=workspace:{plan_.workspace_mib}M")
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    return " ".join(parts)
