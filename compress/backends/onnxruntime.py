"""onnxruntime on the CPU: accuracy sessions and latency/memory probes in a fresh process.

Two ways to execute a Q/DQ graph, and the choice matters for honest numbers:

- `as_written=True`: graph optimisations off, so DequantizeLinear -> float Conv -> QuantizeLinear runs as the
  file says. This is the arithmetic TensorRT uses for a Q/DQ network (int8 x int8 with int32 accumulation
  gives the same result), so it measures the accuracy of a TensorRT-bound `int8` variant.
- `as_written=False`: all optimisations on, Q/DQ fused into integer kernels, as an onnxruntime CPU deployment
  runs (`int8-cpu`). On x86 CPUs without VNNI the u8s8 kernels saturate intermediate sums of 8-bit weights.
  An int8-cpu file made for such CPUs has 7-bit weights and runs on those kernels as they are; one made for
  VNNI CPUs gets `session.x64quantprecision=1` there, which avoids the saturation at a cost in speed. On VNNI
  CPUs nothing saturates and the option would only cost speed (measured: 9.5 ms vs 27.5 ms for ResNet-50
  int8-cpu at batch 1), so it stays off.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from compress.backends import Backend
from compress.errors import require


def version() -> str:
    return require("onnxruntime").__version__


def saturation_guard(file_class: str | None, here: str) -> bool:
    """Whether a file needs onnxruntime's u8s8 precision option on a CPU of class `here`: 8-bit weights (a file
    made for VNNI CPUs, or of unknown class) on x86 without VNNI."""
    return here == "avx2" and file_class != "avx2"


class Session:
    def __init__(self, path: str | os.PathLike[str], as_written: bool = False, threads: int | None = None,
                 guard: bool | None = None):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if as_written:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if guard is None:
                from compress.export import metadata
                from compress.quantize import this_cpu_class

                guard = saturation_guard(metadata(path).get("compress.cpu_class"), this_cpu_class())
            if guard:
                opts.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input.name: batch})[0]

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *[int(d) for d in self.input.shape[1:]])


def logits(path, images, preprocess, as_written: bool, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Logits of every image of an ImageSet, with a progress bar."""
    from tqdm import tqdm

    session = Session(path, as_written=as_written)
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr, leave=False, disable=desc is None) as bar:
        for batch, _ in images.batches(preprocess, batch_size):
            out.append(session.infer(batch))
            bar.update(len(batch))
    return np.concatenate(out)


class OnnxRuntimeCPU(Backend):
    name = "onnxruntime-cpu"
    purpose = "measure every variant on this CPU"

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install 'compress[onnx]'"
        return None

    def describe(self) -> dict:
        from compress.measure import cpu_flags, cpu_name
        from compress.quantize import this_cpu_class

        return {"device": cpu_name(), "cpu_flags": cpu_flags(), "onnxruntime": version(),
                "cpu_class": this_cpu_class()}

    def runs(self, variant: dict) -> dict | None:
        from compress.quantize import this_cpu_class

        guard = ""
        if variant["precision"] == "int8-cpu":
            made_for, here = variant.get("cpu_class"), this_cpu_class()
            if saturation_guard(made_for, here):
                guard = ", session.x64quantprecision=1 (8-bit weights on a CPU without VNNI)"
            elif made_for == "avx2":
                guard = ", 7-bit weights (made for x86 CPUs without VNNI)"
            else:
                guard = ", 8-bit weights (made for CPUs with VNNI)"
        kernels = f"onnxruntime CPU kernels, all optimisations{guard}"
        as_written = variant["precision"] == "int8"  # TensorRT-bound Q/DQ: DQ -> float op -> Q, TensorRT's arithmetic
        return {"precision": "int8" if variant["precision"].startswith("int8") else "fp32", "file": variant["path"],
                "accuracy_method": ("Q/DQ executed as written (graph optimisations off), TensorRT's arithmetic"
                                    if as_written else kernels),
                "latency_method": f"{kernels}; perf_counter around InferenceSession.run, input in host memory"}

    def open(self, variant: dict, for_accuracy: bool, threads: int | None = None) -> Session:
        return Session(variant["path"], as_written=for_accuracy and variant["precision"] == "int8", threads=threads)
