"""The little CUDA that TensorRT needs from Python: device facts, device buffers, copies, a stream, events and
graph capture. One small interface over cuda-python (the bindings TensorRT's own samples use since 10.14; they
also capture CUDA graphs, which pycuda cannot). Nothing touches the GPU at import."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.core.errors import UserError


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise UserError(f"cuda-python is not installed ({exc})", "pip install cuda-python") from None
    return runtime


def unavailable() -> str | None:
    try:
        rt = _runtime()
    except UserError as exc:
        return f"{exc.message}; {exc.hint}" if exc.hint else exc.message
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return f"no CUDA device ({rt.cudaGetErrorName(err)[1].decode() if int(err) else 'count is 0'})"
    return None


class Cuda:
    def __init__(self, device: int = 0):
        self.rt = _runtime()
        self.check(self.rt.cudaSetDevice(device))
        self.stream = self.check(self.rt.cudaStreamCreate())

    def check(self, result: tuple) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1].decode()
            raise RuntimeError(f"CUDA error {name}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def device(self) -> tuple[str, str]:
        """(GPU name, compute capability 'major.minor')."""
        props = self.check(self.rt.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"

    def mem_used(self) -> int:
        free, total = self.check(self.rt.cudaMemGetInfo())
        return int(total - free)

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr))

    def htod(self, ptr: int, array: np.ndarray) -> None:
        self.check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def dtoh(self, array: np.ndarray, ptr: int) -> None:
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def sync(self) -> None:
        self.check(self.rt.cudaStreamSynchronize(self.stream))

    def event(self) -> Any:
        return self.check(self.rt.cudaEventCreate())

    def record(self, event: Any) -> None:
        self.check(self.rt.cudaEventRecord(event, self.stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self.check(self.rt.cudaEventSynchronize(end))
        return float(self.check(self.rt.cudaEventElapsedTime(start, end)))

    def capture(self, work) -> Any:
        """Record `work()` (enqueues on self.stream) as a CUDA graph; returns an executable graph."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self.check(self.rt.cudaStreamBeginCapture(self.stream, mode))
        work()
        graph = self.check(self.rt.cudaStreamEndCapture(self.stream))
        return self.check(self.rt.cudaGraphInstantiate(graph, 0))

    def launch(self, graph_exec: Any) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, self.stream))
