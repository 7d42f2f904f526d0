"""torch -> ONNX: opset 17, dynamic batch, named input and output, checked, and compared with torch."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from compress.core import session as ort_backend
from compress.core.errors import UserError, require
from compress.core.onnxfile import INPUT, OPSET, OUTPUT, set_metadata
from compress.core.session import Session
from compress.core.store import atomic_path


def export(model, path: str | os.PathLike[str], crop: int, metadata: dict[str, str] | None = None) -> None:
    """Write `model` as ONNX (atomically) and validate it with onnx.checker."""
    torch = require("torch")
    onnx = require("onnx")

    model = model.eval()
    dummy = torch.zeros(1, 3, crop, crop)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: deterministic, fast, and no onnxscript dependency for a plain CNN.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata or {})
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))


def parity(model, onnx_path: str | os.PathLike[str], batch: np.ndarray, tolerance: float = 1e-3) -> dict:
    """Compare torch and onnxruntime logits on real images; a difference beyond `tolerance` (relative to the largest
    logit) is an error."""
    torch = require("torch")

    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    got = ort_backend.Session(onnx_path, as_written=False).infer(batch)
    if not (np.isfinite(expected).all() and np.isfinite(got).all()):
        raise UserError(f"{Path(onnx_path).name}: the model computes non-finite logits (NaN or Inf)",
                        "check the checkpoint's weights and BatchNorm statistics")
    max_abs = float(np.abs(expected - got).max())
    scale = float(np.abs(expected).max()) or 1.0
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    result = {"images": int(len(batch)), "max_abs_logit_diff": max_abs, "relative": max_abs / scale,
              "top1_agreement": agreement, "tolerance": tolerance}
    if max_abs / scale > tolerance:
        raise UserError(f"{Path(onnx_path).name}: ONNX export differs from torch: {json.dumps(result)}",
                        "a custom op or an unsupported layer may not export faithfully")
    return result


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files an ONNX model names (checked to lie beside it by `adopt`)."""
    onnx = require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []  # not readable: `adopt` says why
    folder = Path(path).resolve().parent
    names = {e.value for i in proto.graph.initializer for e in i.external_data if e.key == "location"}
    return sorted(p for p in ((folder / n).resolve() for n in names) if p.is_relative_to(folder) and p.is_file())


def adopt(src: str | os.PathLike[str], dst: str | os.PathLike[str], meta: dict[str, str], preprocess) -> dict:
    """Take a user's FP32 ONNX file as the fp32 variant: checked to be one image classifier this pipeline can
    quantize and measure, written with its weights inline and our metadata. Returns facts for the record."""
    onnx = require("onnx")

    name = Path(src).name
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise UserError(f"{name}: not a readable ONNX file ({type(exc).__name__})") from None
    g = proto.graph
    if not g.node and not g.input:
        raise UserError(f"{name}: not a readable ONNX file (an empty graph)", "pass an FP32 ONNX image classifier")
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not g.node or len(inputs) != 1 or len(g.output) != 1:
        raise UserError(f"{name}: expected one image input and one output, found {len(inputs)} input(s), "
                        f"{len(g.output)} output(s) and {len(g.node)} node(s)", "pass an FP32 image classifier")
    if {n.op_type for n in g.node} & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
        raise UserError(f"{name} is already quantized", "pass the FP32 ONNX (or the torch checkpoint)")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise UserError(f"{name}: the input is not float32", "pass an FP32 ONNX model")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise UserError(f"{name}: the input is {dims}, not an image batch (N, 3, H, W)", "pass an image classifier")
    if any(d is not None and d != preprocess.crop for d in dims[2:]):
        raise UserError(f"{name}: the input is {dims[2]}x{dims[3]} but --crop is {preprocess.crop}",
                        f"pass --crop {dims[2]} (and a --resize that suits it)")
    if dims[0] is not None and dims[0] != 1:
        raise UserError(f"{name}: the batch size is fixed at {dims[0]}", "export with a dynamic (or 1) batch")
    folder = Path(src).resolve().parent
    for init in g.initializer:  # external weights must lie beside the model, not anywhere a path points
        for entry in init.external_data:
            if entry.key == "location":
                target = (folder / entry.value).resolve()
                if Path(entry.value).is_absolute() or not target.is_relative_to(folder) or not target.is_file():
                    raise UserError(f"{name}: external weights {entry.value[:60]!r} are not a file beside the "
                                    "model", "keep the weights file in the model's folder")

    try:
        proto = onnx.load(str(src))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UserError(f"{name}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                        "check it with onnx.checker; custom ops are not supported") from None
    set_metadata(proto, meta)
    with atomic_path(dst) as tmp:
        onnx.save(proto, str(tmp))
    try:
        x = np.zeros((2, 3, preprocess.crop, preprocess.crop), np.float32)
        out = Session(dst).infer(x)
    except Exception as exc:
        Path(dst).unlink(missing_ok=True)
        raise UserError(f"{name}: onnxruntime cannot run it ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]})", "custom ops and non-standard domains are not "
                        "supported") from None
    if out.ndim != 2 or out.shape[0] != 2:
        Path(dst).unlink(missing_ok=True)
        raise UserError(f"{name}: the output is {list(out.shape)} for a batch of 2, not (N, classes)",
                        "pass a classifier whose output is one logit per class")
    return {"classes": int(out.shape[1])}


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """An FP16 copy of a float ONNX for strongly typed TensorRT (11+), float32 input and output kept.

    onnxconverter-common's cast pass; TensorRT 11 has no FP16 builder flag, the network's types are the file's.
    """
    onnx = require("onnx")
    float16 = require("onnxconverter_common.float16")

    proto = onnx.load(str(src))
    converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    set_metadata(converted, {"compress.precision": "fp16"})
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
