"""The ONNX file contract: input and output names, opset, and the metadata every variant carries."""

from __future__ import annotations

import json
import os
from pathlib import Path

from calibration.images import Preprocess
from compress.core.errors import UserError, require

INPUT, OUTPUT = "input", "logits"
OPSET = 17


def preprocess_of(meta: dict, where: Path | str):
    """The preprocessing recorded in an ONNX file's metadata: what its weights expect."""
    text = meta.get("compress.preprocess")
    if not text:
        raise UserError(f"{where} records no preprocessing", "export it with 'compress run'")
    try:
        return Preprocess.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: unreadable preprocessing metadata ({exc})") from None


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
