"""The two INT8 formats and the runtime each file is made for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    target: str  # the runtime the file is meant for
    activation: str  # onnxruntime QuantType name
    symmetric_activations: bool
    op_types: tuple[str, ...] | None  # None: every op onnxruntime can quantize
    inputs_only: bool  # Q/DQ on inputs of the op types, not on their outputs


FORMATS = {
    "int8": Format("int8", "tensorrt", "QInt8", True, ("Conv", "Gemm", "MatMul", "Add"), True),
    "int8-cpu": Format("int8-cpu", "onnxruntime-cpu", "QUInt8", False, None, False),
}


# the runtime each precision's file is made for: float files run anywhere, each INT8 format on its own runtime
TARGETS = {"fp32": "any", **{name: f.target for name, f in FORMATS.items()}}
