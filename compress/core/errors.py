"""What the user is told: errors they can fix, progress lines, and lazy imports of optional heavy packages.

A `UserError` is printed by the CLI as one `error:` line with a hint and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def log(message: str) -> None:
    """A progress line, on stderr so that stdout stays the command's result."""
    print(message, file=sys.stderr, flush=True)


class UserError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


# Which install extra brings which optional package.
_EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "torch_pruning": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxconverter_common": "onnx",
    "matplotlib": "report",
    "tensorrt": "tensorrt",
}


def require(module: str) -> ModuleType:
    """Import an optional package, or say exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module.split(".")[0])
        hint = f"pip install 'compress[{extra}]'" if extra else f"pip install {module}"
        raise UserError(f"{module} is not installed ({exc})", hint) from None
