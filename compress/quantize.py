"""Post-training INT8 quantization of an FP32 ONNX file with onnxruntime.quantization.

Two formats, each for the runtime that will execute it:

- `int8` (TensorRT): Q/DQ, INT8 activations and weights, all symmetric (every zero point 0), per-channel
  weights, biases left in float (TensorRT's parser rejects int32-bias DequantizeLinear). Q/DQ goes only on the
  *inputs* of Conv, Gemm and both inputs of the residual Adds, the placement TensorRT fuses: Conv+BN+ReLU and
  Conv+Add+ReLU then run in INT8 end to end. On onnxruntime's CPU kernels this format is slow; it is measured
  there for accuracy only.
- `int8-cpu` (onnxruntime CPU): Q/DQ with uint8 activations (asymmetric) and int8 per-channel weights,
  onnxruntime's preferred CPU layout, quantizing every op it supports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass

from compress.errors import UserError, require

METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_IMAGES = 500


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


def quantize(fp32_onnx: str | os.PathLike[str], out_onnx: str | os.PathLike[str], images, preprocess,
             fmt: str = "int8", method: str = "percentile", percentile: float = 99.999,
             nodes_to_exclude: list[str] | None = None, options: dict | None = None) -> dict:
    """Calibrate on `images` and write the quantized model atomically. Returns what was done, for the record."""
    q = require("onnxruntime.quantization")
    from calibration.reader import CalibrationReader
    from compress.export import INPUT, metadata, set_metadata
    from compress.store import atomic_path

    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}", f"choose one of: {', '.join(METHODS)}")
    spec = FORMATS[fmt]
    calib_method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                    "percentile": q.CalibrationMethod.Percentile}[method]
    extra = {
        "ActivationSymmetric": spec.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": not spec.inputs_only,
        "CalibTensorRangeSymmetric": spec.symmetric_activations,
        "CalibPercentile": percentile,
    }
    extra.update(options or {})  # further onnxruntime extra_options, e.g. CalibMovingAverage (studies)
    if spec.inputs_only:
        extra["OpTypesToExcludeOutputQuantization"] = list(spec.op_types or ())
        extra["ForceQuantizeNoInputCheck"] = True
    reader = CalibrationReader(images, preprocess, INPUT, batch_size=8)
    # Collect statistics a few batches at a time: histograms are merged, activations are not all kept.
    extra["CalibStridedMinMax"] = next(s for s in range(min(8, len(reader)), 0, -1) if len(reader) % s == 0)
    started = time.perf_counter()
    root_logger, level = logging.getLogger(), logging.getLogger().level
    root_logger.setLevel(logging.ERROR)  # the quantizer logs pre-processing advice we do not need
    try:
        with atomic_path(out_onnx) as tmp:
            with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints its progress to stdout
                q.quantize_static(
                    str(fp32_onnx), str(tmp), reader,
                    quant_format=q.QuantFormat.QDQ,
                    activation_type=getattr(q.QuantType, spec.activation),
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=calib_method,
                    op_types_to_quantize=list(spec.op_types) if spec.op_types else None,
                    per_channel=True,
                    nodes_to_exclude=nodes_to_exclude or [],
                    extra_options=extra,
                )
            onnx = require("onnx")
            proto = onnx.load(str(tmp))
            meta = metadata(fp32_onnx)
            meta.update({"compress.precision": fmt, "compress.target": spec.target,
                         "compress.calibration": f"{method} on {len(images)} images"})
            set_metadata(proto, meta)
            if spec.target == "tensorrt":
                problems = tensorrt_problems(proto)
                if problems:  # a quantizer configuration bug, not a user error
                    raise RuntimeError("Q/DQ graph not fit for TensorRT: " + "; ".join(problems[:5]))
            onnx.save(proto, str(tmp))
    finally:
        reader.close()
        root_logger.setLevel(level)
    return {"format": fmt, "target": spec.target, "method": method, "images": len(images),
            "percentile": percentile if method == "percentile" else None,
            "calibration_seconds": round(time.perf_counter() - started, 2),
            "excluded_nodes": list(nodes_to_exclude or []), "options": options or {},
            "onnxruntime": require("onnxruntime").__version__}


def tensorrt_problems(proto) -> list[str]:
    """What in a Q/DQ graph TensorRT would reject or run slowly; empty when the file is fit for TensorRT.

    Checks: every zero point is 0 (TensorRT is symmetric); no DequantizeLinear of int32 (quantized biases are
    rejected by the parser); weights quantized per channel; every Conv/Gemm/MatMul input (activation and weight)
    comes from a DequantizeLinear; both inputs of every Add that joins two activations (ResNet's residual
    Adds) come from a DequantizeLinear, or the Add falls back to FP16/FP32.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    problems = []
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) > 2 and n.input[2] in inits and numpy_helper.to_array(inits[n.input[2]]).any():
                problems.append(f"{n.name}: non-zero zero point")
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == 6:
                problems.append(f"{n.name}: int32 DequantizeLinear (quantized bias)")

    def from_dq(tensor: str) -> bool:
        return tensor in producer and producer[tensor].op_type == "DequantizeLinear"

    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            for tensor in n.input[:2]:
                if not from_dq(tensor):
                    problems.append(f"{n.name}: input {tensor} is not quantized")
            weight_dq = producer.get(n.input[1])
            if weight_dq is not None and weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in inits:
                scale = inits.get(weight_dq.input[1])
                if scale is not None and len(scale.dims) == 0 and n.op_type == "Conv":
                    problems.append(f"{n.name}: weight quantized per tensor, not per channel")
        if n.op_type == "Add" and not any(t in inits for t in n.input):
            for tensor in n.input:
                if not from_dq(tensor):
                    problems.append(f"{n.name}: residual Add input {tensor} is not quantized")
    return problems
