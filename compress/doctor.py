"""`compress doctor`: every backend and tool, usable here or not, with the one-line reason."""

from __future__ import annotations

from importlib import metadata


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _package(pkg: str, module: str, extra: str) -> str | None:
    """None if importable, else why not."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{pkg} is not installed ({exc.name or exc}); pip install 'compress[{extra}]'"
    return None


def _torch_cuda() -> str | None:
    reason = _package("torch", "torch", "torch")
    if reason:
        return reason
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _onnxruntime() -> str | None:
    from compress.backends import onnxruntime

    return onnxruntime.unavailable()


def _tensorrt() -> str | None:
    from compress.backends import tensorrt

    return tensorrt.unavailable()


def _cuda_python() -> str | None:
    from compress.backends import cuda

    return cuda.unavailable()


CHECKS = [
    # name, what it is for, check, version package
    ("onnxruntime-cpu", "measure every variant on this CPU", _onnxruntime, "onnxruntime"),
    ("torch", "load checkpoints, export, prune", lambda: _package("torch", "torch", "torch"), "torch"),
    ("torch-pruning", "structured pruning", lambda: _package("torch-pruning", "torch_pruning", "torch"),
     "torch-pruning"),
    ("onnx", "export, check and quantize ONNX", lambda: _package("onnx", "onnx", "onnx"), "onnx"),
    ("matplotlib", "report plots", lambda: _package("matplotlib", "matplotlib", "report"), "matplotlib"),
    ("torch-cuda", "PyTorch GPU baseline (FP32/TF32/FP16, CUDA graphs)", _torch_cuda, "torch"),
    ("cuda-python", "device buffers and CUDA events for TensorRT", _cuda_python, "cuda-python"),
    ("tensorrt", "build and run engines (compress build)", _tensorrt, "tensorrt"),
]


def backends() -> list[dict]:
    out = []
    for name, purpose, check, pkg in CHECKS:
        reason = check()
        out.append({"name": name, "usable": reason is None, "purpose": purpose,
                    "version": _version(pkg) if reason is None else None, "reason": reason})
    return out


def table(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    purpose = max(len(r["purpose"]) for r in rows)
    return "\n".join(
        f"{r['name']:<{width}}  {'yes' if r['usable'] else 'no ':<3}  {r['purpose']:<{purpose}}  "
        + (r["version"] or "" if r["usable"] else r["reason"]) for r in rows)
