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

from calibration.reader import CalibrationReader
from compress.core.cpu import CPU_CLASSES
from compress.core.errors import UserError, require
from compress.core.formats import FORMATS
from compress.core.onnxfile import INPUT, metadata, set_metadata
from compress.core.store import atomic_path
from compress.quantize.bias import correct_biases
from compress.quantize.graph import behind_qdq, drop_dead
from compress.quantize.ranges import Unsettled, tensors_to_calibrate
from compress.quantize.tensorrt_check import tensorrt_problems

METHODS = ("minmax", "entropy", "percentile")
RESIDUAL_ADDS = ("fused", "both")  # Q/DQ placement on residual Adds for TensorRT; the first is the default
BIAS_CORRECTION_IMAGES = 256
MIN_CALIBRATION_IMAGES = 500
FLOAT_OUTPUT = ("Gemm",)  # op types whose output the int8-cpu format leaves in float (the classifier)


@dataclass(frozen=True)
class PTQConfig:
    """How a file is quantized. `bias_correction`: how many of the calibration images measure the bias
    correction (0: none; `bias.correct_biases`). `cpu`: the CPU class an int8-cpu file is made for
    (`core.cpu.cpu_class`). `nodes_to_exclude` and `options` (onnxruntime extra_options) serve the studies."""

    method: str = "percentile"
    percentile: float = 99.999
    bias_correction: int = BIAS_CORRECTION_IMAGES
    cpu: str = "vnni"
    residual_adds: str = RESIDUAL_ADDS[0]
    nodes_to_exclude: tuple[str, ...] | None = None
    options: dict | None = None


DEFAULT = PTQConfig()


def quantize(fp32_onnx: str | os.PathLike[str], out_onnx: str | os.PathLike[str], images, preprocess,
             fmt: str = "int8", config: PTQConfig = DEFAULT, statistics=None) -> dict:
    """Calibrate on `images` and write the quantized model atomically. Returns what was done, for the record.

    `statistics`: activation statistics of the FP32 model on `images` (`compress.quantize.ranges.collect`), shared
    by the formats of one run; with them, minmax and percentile ranges are computed without another pass (the
    quantizer reads them as a calibration cache). Without them (or for entropy, or study options), onnxruntime
    calibrates on its own.
    """
    q = require("onnxruntime.quantization")
    method, percentile, bias_correction, cpu = config.method, config.percentile, config.bias_correction, config.cpu
    residual_adds, options = config.residual_adds, config.options
    nodes_to_exclude = list(config.nodes_to_exclude) if config.nodes_to_exclude is not None else None

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


