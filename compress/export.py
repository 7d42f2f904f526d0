"""torch -> ONNX: opset 17, dynamic batch, named input and output, checked, and compared with torch."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from compress.errors import UserError, require

INPUT, OUTPUT = "input", "logits"
OPSET = 17


def export(model, path: str | os.PathLike[str], crop: int, metadata: dict[str, str] | None = None) -> None:
    """Write `model` as ONNX (atomically) and validate it with onnx.checker."""
    torch = require("torch")
    onnx = require("onnx")
    from compress.store import atomic_path

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


def set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


def metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def parity(model, onnx_path: str | os.PathLike[str], batch: np.ndarray, tolerance: float = 1e-3) -> dict:
    """Compare torch and onnxruntime logits on real images; a difference beyond `tolerance` (relative to the largest
    logit) is an error."""
    torch = require("torch")
    from compress.backends import onnxruntime as ort_backend

    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    got = ort_backend.Session(onnx_path, as_written=False).infer(batch)
    max_abs = float(np.abs(expected - got).max())
    scale = float(np.abs(expected).max()) or 1.0
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    result = {"images": int(len(batch)), "max_abs_logit_diff": max_abs, "relative": max_abs / scale,
              "top1_agreement": agreement, "tolerance": tolerance}
    if max_abs / scale > tolerance:
        raise UserError(f"{Path(onnx_path).name}: ONNX export differs from torch: {json.dumps(result)}",
                        "a custom op or an unsupported layer may not export faithfully")
    return result


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """An FP16 copy of a float ONNX for strongly typed TensorRT (11+), float32 input and output kept.

    onnxconverter-common's cast pass; TensorRT 11 has no FP16 builder flag, the network's types are the file's.
    """
    onnx = require("onnx")
    float16 = require("onnxconverter_common.float16")
    from compress.store import atomic_path

    proto = onnx.load(str(src))
    converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    set_metadata(converted, {"compress.precision": "fp16"})
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
