"""PyTorch as a measured backend: eager FP32 on a GPU (`torch-cuda`, TF32 off) is the "PyTorch on this GPU"
baseline TensorRT speedups are reported against; `latency` also times TF32, FP16, channels-last and CUDA graphs
for the GPU study (benchmarks/torch_gpu.py). A variant runs here when it has a torch model (`model.pt`, saved by
the export and prune stages from a checkpoint).

Modes: fp32 (TF32 off: true FP32), tf32, fp16 (weights and input in half); channels-last memory format; CUDA
graphs on or off. On a GPU, time is taken by CUDA events around the forward pass with the input already on the
device; on a CPU (tests) by perf_counter.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from compress.backends import Backend
from compress.core.cpu import cpu_name
from compress.core.errors import UserError, require
from compress.core.metrics import percentiles
from compress.prune import channels as prune

MODES = ("fp32", "tf32", "fp16")


class TorchCUDA(Backend):
    name = "torch-cuda"
    purpose = "PyTorch eager FP32 on this GPU (TF32 off): what a PyTorch user has today"
    device = "cuda"

    def unavailable(self) -> str | None:
        try:
            torch = require("torch")
        except UserError as exc:
            return f"{exc.message}; {exc.hint}"
        if self.device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def describe(self) -> dict:
        torch = require("torch")

        name = torch.cuda.get_device_name() if self.device == "cuda" else cpu_name()
        return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads()}

    def runs(self, variant: dict) -> dict | None:
        if variant["precision"] != "fp32" or not Path(variant["path"]).with_name("model.pt").is_file():
            return None
        timer = ("CUDA-synchronised perf_counter around the forward pass, input copied from host memory"
                 if self.device == "cuda" else "perf_counter around the forward pass, input in host memory")
        return {"precision": "fp32", "file": Path(variant["path"]).with_name("model.pt"),
                "accuracy_method": f"PyTorch eager on {self.device}, FP32",
                "latency_method": f"PyTorch eager on {self.device}, FP32 (TF32 off), torch.inference_mode; {timer}"}

    def open(self, variant: dict, for_accuracy: bool, threads: int | None = None) -> _Eager:
        return _Eager(Path(variant["path"]).with_name("model.pt"), self.device, threads)


class _Eager:
    """A torch model as a session: numpy in, logits out, on the backend's device."""

    def __init__(self, path: Path, device: str, threads: int | None):
        torch = require("torch")

        if threads:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        self.torch, self.device = torch, device
        self.net = prune.load(path).to(device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(batch).to(self.device))
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            return out.cpu().numpy()


def latency(model, size: tuple[int, int], mode: str = "fp32", channels_last: bool = False, cuda_graph: bool = False,
            device: str = "cuda", warmup: int = 20, runs: int = 100) -> dict:
    """Forward-pass latency of `model` at `size` (batch, crop); percentiles in ms, throughput in images per
    second."""
    torch = require("torch")
    batch, crop = size

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}", f"choose from {', '.join(MODES)}")
    gpu = device.startswith("cuda")
    if cuda_graph and not gpu:
        raise UserError("CUDA graphs need a CUDA device")
    if gpu:  # TF32 is on by default for cuDNN convolutions: fp32 means it off
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    dtype = torch.float16 if mode == "fp16" else torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(model).eval().to(device=device, dtype=dtype, memory_format=fmt)
    x = torch.randn(batch, 3, crop, crop, device=device, dtype=dtype).to(memory_format=fmt)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        step = lambda: net(x)  # noqa: E731
        if cuda_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    net(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                net(x)
            step = graph.replay
        for _ in range(warmup):
            step()
        times = []
        if gpu:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(runs):
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(runs):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
    p = percentiles(times)
    return {
        "mode": mode, "channels_last": channels_last, "cuda_graph": cuda_graph, "batch": batch,
        "latency_ms": p, "throughput_ips": batch * 1000.0 / p["p50"],
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if gpu else None,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "timer": "CUDA events around the forward pass, input on the device" if gpu else "perf_counter",
    }
