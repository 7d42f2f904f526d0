"""Every TensorRT call of compress, and nothing else: it carries out the `BuildPlan`s of `compress.engine`.

TensorRT 10 and 11 differ here only where `engine.plan` told them to (flags, strong typing). This module is
type-checked against the `tensorrt-stubs` package in CI, so a misspelled flag or method fails there even
though TensorRT itself is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.backends import Backend
from compress.backends import _cuda as cuda
from compress.backends._cuda import Cuda
from compress.core.errors import UserError
from compress.core.store import atomic_path
from compress.devices.engine import BuildPlan, Device


def _trt() -> Any:
    hint = "install it from NVIDIA (pip install tensorrt, or JetPack on a Jetson)"
    try:
        import tensorrt
    except ImportError as exc:
        raise UserError(f"TensorRT is not installed ({exc})", hint) from None
    if not hasattr(tensorrt, "Builder"):  # e.g. only the type stubs, which import as an empty namespace
        raise UserError("TensorRT is not installed (the 'tensorrt' found has no Builder: type stubs only?)", hint)
    return tensorrt


def unavailable() -> str | None:
    try:
        _trt()
    except UserError as exc:
        return f"{exc.message}; {exc.hint}" if exc.hint else exc.message

    return cuda.unavailable()


def version() -> str:
    return str(_trt().__version__)


def device() -> Device:

    gpu, cc = Cuda().device()
    return Device(gpu=gpu, compute_capability=cc, tensorrt=version())


def _flag(name: str) -> Any:
    import tensorrt as trt

    # Spelled out, not looked up by string, so the stubs check every name. Only the names a plan may ask for
    # on the running major are touched (FP16/INT8 no longer exist in TensorRT 11).
    flags: dict[str, Callable[[], trt.BuilderFlag]] = {
        "TF32": lambda: trt.BuilderFlag.TF32,
        "FP16": lambda: trt.BuilderFlag.FP16,
        "INT8": lambda: trt.BuilderFlag.INT8,
        "SPARSE_WEIGHTS": lambda: trt.BuilderFlag.SPARSE_WEIGHTS,
        "GPU_FALLBACK": lambda: trt.BuilderFlag.GPU_FALLBACK,
    }
    return flags[name]()


def build(plan: BuildPlan, onnx_path: Path, timing_cache: Path | None = None) -> tuple[bytes, float]:
    """Parse the ONNX and build a serialized engine as planned. Returns (engine bytes, build seconds)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        creation = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for name in plan.set_flags:
        config.set_flag(_flag(name))
    for name in plan.clear_flags:
        config.clear_flag(_flag(name))
    if plan.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    shapes = plan.profile.shapes()
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.profile.input, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise UserError(f"TensorRT could not build {plan.engine_name}", "see the TensorRT log above")
    if cache is not None and timing_cache is not None:

        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), seconds


def _dims(dims: Any) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class Runner:
    """A deserialized engine with device buffers for one batch size; infer and time it."""

    def __init__(self, engine_bytes: bytes, batch: int):
        import tensorrt as trt


        self.cuda = Cuda()
        before = self.cuda.mem_used()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        self.activation_bytes = int(self.engine.device_memory_size_v2)
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, int] = {}
        self.inputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                self.context.set_input_shape(name, (batch, *_dims(self.engine.get_tensor_shape(name))[1:]))
            shape = _dims(self.context.get_tensor_shape(name))
            self.host[name] = np.zeros(shape, dtype)
            self.device[name] = self.cuda.malloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.device[name])
        self.device_memory_delta = self.cuda.mem_used() - before

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        name = self.inputs[0]
        np.copyto(self.host[name], batch.astype(self.host[name].dtype, copy=False))
        self.cuda.htod(self.device[name], self.host[name])
        self.enqueue()
        out = next(n for n in self.host if n not in self.inputs)
        self.cuda.dtoh(self.host[out], self.device[out])
        self.cuda.sync()
        return self.host[out].copy()

    def time_gpu(self, runs: int, warmup: int, cuda_graph: bool) -> list[float]:
        """GPU time per inference (ms) by CUDA events around the enqueue alone: copies are timed separately."""
        graph = self.cuda.capture(self.enqueue) if cuda_graph else None
        step = (lambda: self.cuda.launch(graph)) if graph is not None else self.enqueue
        for _ in range(warmup):
            step()
        self.cuda.sync()
        start, end, times = self.cuda.event(), self.cuda.event(), []
        for _ in range(runs):
            self.cuda.record(start)
            step()
            self.cuda.record(end)
            times.append(self.cuda.elapsed_ms(start, end))
        return times

    def time_copies(self, runs: int) -> dict[str, float]:
        """Median host-to-device and device-to-host copy times (ms), from pageable host memory."""
        name = self.inputs[0]
        out = next(n for n in self.host if n not in self.inputs)
        start, end = self.cuda.event(), self.cuda.event()
        result = {}
        for label, copy in (("h2d", lambda: self.cuda.htod(self.device[name], self.host[name])),
                            ("d2h", lambda: self.cuda.dtoh(self.host[out], self.device[out]))):
            times = []
            for _ in range(runs):
                self.cuda.record(start)
                copy()
                self.cuda.record(end)
                times.append(self.cuda.elapsed_ms(start, end))
            result[f"{label}_ms"] = float(np.median(times))
        return result


class TensorRT(Backend):
    """Engines for this GPU: built and measured by `compress build` (they need the GPU they run on)."""

    name = "tensorrt"
    purpose = "build and run engines (compress build)"
    stage = "build"

    def unavailable(self) -> str | None:
        return unavailable()

    def describe(self) -> dict:
        import dataclasses

        return dataclasses.asdict(device())

    def runs(self, variant: dict) -> dict | None:
        if variant["precision"] not in ("fp32", "int8"):
            return None  # int8-cpu is onnxruntime's format
        return {"precision": variant["precision"], "file": variant["path"],
                "accuracy_method": "TensorRT engine on this GPU",
                "latency_method": "CUDA events around execute_async_v3 on one stream, after warm-up; host-device "
                                  "copies timed separately"}

    def open(self, variant: dict, for_accuracy: bool, threads: int | None = None) -> Runner:
        """`variant["path"]` is an engine made by `compress build` on this device."""
        return Runner(Path(variant["path"]).read_bytes(), int(variant.get("batch", 1)))
