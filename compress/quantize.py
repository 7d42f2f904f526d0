"""Post-training INT8 quantization of an FP32 ONNX file with onnxruntime.quantization.

Two formats, each for the runtime that will execute it:

- `int8` (TensorRT): Q/DQ, INT8 activations and weights, all symmetric (every zero point 0), per-channel
  weights, biases left in float (TensorRT's parser rejects int32-bias DequantizeLinear). Q/DQ goes only on the
  *inputs* of Conv and Gemm and on the residual input of each residual Add; the Add's other input is the
  output of the Conv that TensorRT fuses with it (Conv+Add+ReLU, INT8 in, INT8 out), so it is left at the
  Conv's accumulator precision. This is TensorRT's recommended placement (ModelOpt's too): one rounding fewer
  per residual block than Q/DQ on both Add inputs, which leaves a Conv->Q->DQ->Add chain that TensorRT cannot
  fuse as well (`residual_adds="both"` keeps that layout, for comparison). On onnxruntime's CPU kernels this
  format is slow; it is measured there for accuracy only.
- `int8-cpu` (onnxruntime CPU): Q/DQ with uint8 activations (asymmetric) and int8 per-channel weights,
  onnxruntime's preferred CPU layout, quantizing every op it supports but the classifier's output, which stays
  float (8-bit logits tie, and a tie's top-1 is arbitrary). Made for a CPU class: on x86 without
  VNNI (`avx2`) onnxruntime's fast u8s8 kernels add pairs of u8 x s8 products in 16 bits, which saturates
  (255 x 127 x 2 > 32767); there the weights get 7 bits (`reduce_range`, onnxruntime's documented remedy), which
  cannot saturate and keeps those kernels. VNNI CPUs (and non-x86 ones) sum in 32 bits: full 8-bit weights.

Both formats get a bias correction (`correct_biases`): the mean error rounding puts on each layer's output is
added back to its bias, free at run time (on the 7-bit file: 96.8% -> 97.4% agreement with FP32).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from compress.errors import UserError, require
from compress.graph import behind_qdq, drop_dead, quantize_of

METHODS = ("minmax", "entropy", "percentile")
RESIDUAL_ADDS = ("fused", "both")  # Q/DQ placement on residual Adds for TensorRT; the first is the default
BIAS_CORRECTION_IMAGES = 256
MIN_CALIBRATION_IMAGES = 500
FLOAT_OUTPUT = ("Gemm",)  # op types whose output the int8-cpu format leaves in float (the classifier)
CPU_CLASSES = ("vnni", "avx2")  # what an int8-cpu file is made for: see cpu_class


def cpu_class(machine: str, flags) -> str:
    """The int8-cpu file a CPU wants, from its architecture and flags alone: `avx2` for x86 without VNNI (the
    u8s8 kernels saturate 8-bit weights), else `vnni`."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "vnni"  # Arm's int8 dot products accumulate in 32 bits: nothing saturates
    return "vnni" if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags) else "avx2"


def this_cpu_class() -> str:
    import platform

    from compress.measure import cpu_flags

    return cpu_class(platform.machine(), cpu_flags())


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
             nodes_to_exclude: list[str] | None = None, options: dict | None = None,
             residual_adds: str = RESIDUAL_ADDS[0], bias_correction: int = BIAS_CORRECTION_IMAGES,
             statistics=None, cpu: str = "vnni") -> dict:
    """Calibrate on `images` and write the quantized model atomically. Returns what was done, for the record.

    `statistics`: activation statistics of the FP32 model on `images` (`calibration.ranges.collect`), shared by
    the formats of one run; with them, minmax and percentile ranges are computed without another pass (the
    quantizer reads them as a calibration cache). Without them (or for entropy, or study options), onnxruntime
    calibrates on its own.

    `bias_correction`: how many of the calibration images measure the bias correction (0: none); see
    `correct_biases`. `cpu`: the CPU class an int8-cpu file is made for (`cpu_class`).
    """
    q = require("onnxruntime.quantization")
    from calibration.reader import CalibrationReader
    from compress.export import INPUT, metadata, set_metadata
    from compress.store import atomic_path

    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}", f"choose one of: {', '.join(METHODS)}")
    if residual_adds not in RESIDUAL_ADDS:
        raise ValueError(f"residual_adds must be one of {RESIDUAL_ADDS}, not {residual_adds!r}")
    spec = FORMATS[fmt]
    if cpu not in CPU_CLASSES:
        raise UserError(f"unknown CPU class {cpu!r}", f"choose one of: {', '.join(CPU_CLASSES)}")
    seven_bit = spec.target == "onnxruntime-cpu" and cpu == "avx2"
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
    else:  # the classifier's output stays float: 8-bit logits tie (19 of 1,000 reference images at top-1), and
        # which class a tie reports is arbitrary; QGemm writes float at no measurable cost
        extra.setdefault("OpTypesToExcludeOutputQuantization", list(FLOAT_OUTPUT))
    started = time.perf_counter()
    shared = statistics is not None and method in ("minmax", "percentile") and not options
    cache_dir = tempfile.TemporaryDirectory(prefix="compress-ranges-")
    cache = None
    if shared:
        from onnxruntime.quantization.calibrate import save_tensors_data

        from calibration.ranges import Unsettled, tensors_to_calibrate

        onnx = require("onnx")
        tensors = sorted(tensors_to_calibrate(onnx.load(str(fp32_onnx)), spec.op_types))
        try:
            ranges = statistics.ranges(method, spec.symmetric_activations, tensors, percentile)
        except Unsettled as e:  # rare (a first image far from the rest): onnxruntime calibrates on its own
            print(f"{fmt}: {e}; calibrating with onnxruntime's own pass", file=sys.stderr)
            shared = False
        else:
            cache = Path(cache_dir.name) / "ranges.json"
            save_tensors_data(ranges, cache)
            reader = None
    if not shared:
        reader = CalibrationReader(images, preprocess, INPUT, batch_size=1)
        # One image per collection call: onnxruntime keeps every activation of a call until it is histogrammed.
        extra["CalibStridedMinMax"] = 1
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
                    reduce_range=seven_bit,
                    nodes_to_exclude=nodes_to_exclude or [],
                    extra_options=extra,
                    calibration_cache_path=cache,
                )
            onnx = require("onnx")
            proto = onnx.load(str(tmp))
            meta = metadata(fp32_onnx)
            meta.update({"compress.precision": fmt, "compress.target": spec.target,
                         "compress.calibration": f"{method} on {len(images)} images"})
            if spec.target == "onnxruntime-cpu":
                meta["compress.cpu_class"] = cpu
            set_metadata(proto, meta)
            if spec.target == "tensorrt" and residual_adds == "fused":
                fuse_residual_adds(proto)
            corrected = None
            if bias_correction:
                corrected = correct_biases(proto, onnx.load(str(fp32_onnx)), images.head(bias_correction),
                                           preprocess)
            if spec.target == "tensorrt":
                problems = tensorrt_problems(proto)
                if problems:  # a quantizer configuration bug, not a user error
                    raise RuntimeError("Q/DQ graph not fit for TensorRT: " + "; ".join(problems[:5]))
            onnx.save(proto, str(tmp))
    finally:
        if reader is not None:
            reader.close()
        cache_dir.cleanup()
        root_logger.setLevel(level)
    return {"format": fmt, "target": spec.target, "method": method, "images": len(images),
            "percentile": percentile if method == "percentile" else None,
            "calibration_seconds": round(time.perf_counter() - started, 2),
            "shared_statistics": shared,
            "excluded_nodes": list(nodes_to_exclude or []), "options": options or {},
            "residual_adds": residual_adds if spec.target == "tensorrt" else None,
            "cpu_class": cpu if spec.target == "onnxruntime-cpu" else None, "weight_bits": 7 if seven_bit else 8,
            "bias_correction": corrected,
            "onnxruntime": require("onnxruntime").__version__}


def fuse_residual_adds(proto) -> int:
    """Take the Q/DQ off the Conv-branch input of every residual Add, in place; returns how many were changed.

    The Conv-branch input is the one a Conv produces through nothing but its Q/DQ pair. Where both inputs
    come from Convs (a downsampling block: main branch and projection shortcut) it is the one farther from
    where the two branches split, the main branch, as ModelOpt decides; the shortcut keeps its Q/DQ.
    """
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def depths(tensor: str) -> dict[str, int]:  # node name -> distance upwards from tensor
        seen: dict[str, int] = {}
        frontier, d = [tensor], 0
        while frontier:
            nxt = []
            for t in frontier:
                n = producer.get(t)
                if n is not None and n.name not in seen:
                    seen[n.name] = d
                    nxt += [i for i in n.input if i and i not in inits]
            frontier, d = nxt, d + 1
        return seen

    changed = 0
    for add in graph.node:
        if add.op_type != "Add" or any(t in inits for t in add.input) or len(add.input) != 2:
            continue
        raw = [behind_qdq(producer, t) for t in add.input]
        convs = [k for k, t in enumerate(raw) if t is not None and t in producer and producer[t].op_type == "Conv"]
        if len(convs) == 2:
            d0, d1 = depths(raw[0]), depths(raw[1])
            common = set(d0) & set(d1)
            if not common:
                continue
            split = min(common, key=lambda n: d0[n] + d1[n])
            convs = [0 if d0[split] > d1[split] else 1]
        if len(convs) == 1:
            k = convs[0]
            add.input[k] = raw[k]
            changed += 1
    drop_dead(graph)
    return changed


def correct_biases(proto, fp32_proto, images, preprocess) -> dict:
    """Bias correction, in place: add to each INT8 Conv/Gemm's bias the mean error INT8 puts on its output
    channels, measured on `images`. Returns how many layers were corrected and the mean shift. A float bias
    (TensorRT's format) takes the shift as it is; an int32 one (int8-cpu's, behind a DequantizeLinear) takes it in
    units of its scale.

    The error of a layer is measured locally, against a float twin of the layer that reads the same activation
    before its QuantizeLinear (so upstream rounding is the same in both; after it where the QuantizeLinear is
    uint8, see below) with the FP32 weight; all twins run in one pass. Rounding and clipping are not
    zero-mean, and their mean passes through ReLU into every later layer; correcting it is free at run time (a
    bias is added anyway) and it is what NNCF applies to CNNs by default (FastBiasCorrection). On the reference
    ResNet-50 it lowered the KL to FP32 by 15-19%.
    """
    import numpy as np
    from onnx import helper, numpy_helper
    from tqdm import tqdm

    from compress.backends.onnxruntime import Session

    onnx = require("onnx")
    fp32_nodes = {n.name: n for n in fp32_proto.graph.node}
    fp32_inits = {i.name: i for i in fp32_proto.graph.initializer}
    inits = {i.name: i for i in proto.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    graph = probe.graph
    producer = {o: n for n in graph.node for o in n.output}
    have = set(inits)
    layers = []  # (node, its bias initializer, the int32 bias's scale or None)
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        bias = _bias(node.input[2], inits, producer)
        if bias is None:
            continue
        q = quantize_of(producer, node.input[0])
        twin_of = fp32_nodes.get(node.name)
        if q is None or twin_of is None or twin_of.input[1] not in fp32_inits:
            continue
        source = q.input[0]
        weight = twin_of.input[1]
        if weight not in have:  # the FP32 weight under its own name; the INT8 file keeps only the quantized one
            graph.initializer.append(fp32_inits[weight])
            have.add(weight)
        if len(q.input) > 2 and q.input[2] in inits and inits[q.input[2]].data_type == onnx.TensorProto.UINT8:
            # a uint8 QuantizeLinear clips at its zero point, and int8-cpu's stands in for the ReLU the quantizer
            # folded into it: the twin reads what the INT8 layer reads, so only the weights' rounding is measured
            source = node.input[0]
        twin = helper.make_node(node.op_type, [source, weight, node.input[2]], [node.output[0] + "/float"],
                                name=node.name + "/float")
        twin.attribute.extend(node.attribute)
        graph.node.append(twin)
        graph.output.extend([onnx.ValueInfoProto(name=node.output[0]), onnx.ValueInfoProto(name=twin.output[0])])
        layers.append((node, *bias))
    if not layers:
        return {"layers": 0, "images": 0, "mean_abs_shift": 0.0}
    names = [t for n, _, _ in layers for t in (n.output[0], n.output[0] + "/float")]
    # Run 4 images at a time (memory holds their outputs of every layer and twin); per-image channel means are
    # summed 8 images at a time in float32, the arithmetic the published figures were measured with.
    sums: dict = dict.fromkeys(names, 0.0)
    means: dict = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="compress-bias-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = Session(path, as_written=True).session
        bar = tqdm(total=len(images), desc="bias correction", unit="img", file=sys.stderr, leave=False)
        for i, (batch, _) in enumerate(images.batches(preprocess, 4)):
            for name, out in zip(names, session.run(names, {session.get_inputs()[0].name: batch})):
                means[name].extend(out.mean(axis=(2, 3)) if out.ndim == 4 else out)
                if len(means[name]) == 8 or (i + 1) * 4 >= len(images):
                    sums[name] = sums[name] + np.stack(means[name]).sum(axis=0)
                    means[name].clear()
            bar.update(len(batch))
        bar.close()
    shifts = []
    for node, bias, scale in layers:
        shift = (sums[node.output[0] + "/float"] - sums[node.output[0]]) / len(images)
        value = numpy_helper.to_array(bias)
        if scale is None:
            value = value + shift.astype(np.float32)
        else:
            step = np.rint(shift / numpy_helper.to_array(scale).astype(np.float64))
            value = np.clip(value.astype(np.int64) + step, -2**31, 2**31 - 1).astype(np.int32)
        bias.CopyFrom(numpy_helper.from_array(value, bias.name))
        shifts.append(float(np.abs(shift).mean()))
    return {"layers": len(layers), "images": len(images), "mean_abs_shift": round(float(np.mean(shifts)), 6)}


def _bias(tensor: str, inits: dict, producer: dict) -> tuple | None:
    """The initializer behind a Conv/Gemm bias input and, for an int32 bias behind a DequantizeLinear with zero
    point 0 (as onnxruntime quantizes biases), its scale's initializer; None for any other bias."""
    onnx = require("onnx")
    if tensor in inits:
        return (inits[tensor], None) if inits[tensor].data_type == onnx.TensorProto.FLOAT else None
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    if inits[dq.input[0]].data_type != onnx.TensorProto.INT32 or (len(dq.input) > 2 and dq.input[2] and (
            dq.input[2] not in inits or onnx.numpy_helper.to_array(inits[dq.input[2]]).any())):
        return None
    return inits[dq.input[0]], inits[dq.input[1]]


def tensorrt_problems(proto) -> list[str]:
    """What in a Q/DQ graph TensorRT would reject or run slowly; empty when the file is fit for TensorRT.

    Checks: every zero point is 0 (TensorRT is symmetric); no DequantizeLinear of int32 (quantized biases are
    rejected by the parser); weights quantized per channel; every Conv/Gemm/MatMul input (activation and weight)
    comes from a DequantizeLinear; every Add that joins two activations (ResNet's residual Adds) has both
    inputs in INT8: each from a DequantizeLinear or from an INT8 Conv that TensorRT fuses with the Add, and at
    least one from a DequantizeLinear, or the Add falls back to FP16/FP32.
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

    def int8_conv(tensor: str) -> bool:  # a Conv on INT8 inputs whose only reader is this Add: fused with it
        conv = producer.get(tensor)
        return (conv is not None and conv.op_type == "Conv" and all(from_dq(t) for t in conv.input[:2])
                and sum(tensor in m.input for m in proto.graph.node) == 1)

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
                if not (from_dq(tensor) or int8_conv(tensor)):
                    problems.append(f"{n.name}: residual Add input {tensor} is not quantized")
            if not any(from_dq(t) for t in n.input):
                problems.append(f"{n.name}: residual Add has no quantized residual input")
    return problems
