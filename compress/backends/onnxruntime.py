"""onnxruntime on the CPU as a backend: what it runs and how, sessions from `core.session` (which says why a
TensorRT-bound Q/DQ file is executed as written for its accuracy and an int8-cpu file through the fused kernels),
latency and memory in a fresh process per round."""

from __future__ import annotations

from compress.backends import Backend
from compress.core.cpu import cpu_flags, cpu_name, this_cpu_class
from compress.core.errors import require
from compress.core.session import Session, saturation_guard


def version() -> str:
    return require("onnxruntime").__version__


class OnnxRuntimeCPU(Backend):
    name = "onnxruntime-cpu"
    purpose = "measure every variant on this CPU"

    def __init__(self, cpu_class: str | None = None):
        self.cpu_class = cpu_class or this_cpu_class()  # the class of CPU it runs on: this one's

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install 'compress[onnx]'"
        return None

    def describe(self) -> dict:
        return {"device": cpu_name(), "cpu_flags": cpu_flags(), "onnxruntime": version(),
                "cpu_class": self.cpu_class}

    def runs(self, variant: dict) -> dict | None:
        guard = ""
        if variant["precision"] == "int8-cpu":
            made_for, here = variant.get("cpu_class"), self.cpu_class
            if saturation_guard(made_for, here):
                guard = ", session.x64quantprecision=1 (8-bit weights on a CPU without VNNI)"
            elif made_for == "avx2":
                guard = ", 7-bit weights (made for x86 CPUs without VNNI)"
            else:
                guard = ", 8-bit weights (made for CPUs with VNNI)"
        kernels = f"onnxruntime CPU kernels, all optimisations{guard}"
        as_written = variant["precision"] == "int8"  # TensorRT-bound Q/DQ: DQ -> float op -> Q, TensorRT's arithmetic
        return {"precision": "int8" if variant["precision"].startswith("int8") else "fp32", "file": variant["path"],
                "accuracy_method": ("its Q/DQ graph executed by onnxruntime as written (graph optimisations off): "
                                    "the arithmetic TensorRT runs; no engine built here" if as_written else kernels),
                "latency_method": f"{kernels}; perf_counter around InferenceSession.run, input in host memory"}

    def open(self, variant: dict, for_accuracy: bool, threads: int | None = None) -> Session:
        return Session(variant["path"], as_written=for_accuracy and variant["precision"] == "int8", threads=threads)
