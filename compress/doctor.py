"""`compress doctor`: every backend of the registry and every tool, usable here or not, with the reason."""

from __future__ import annotations

from importlib import metadata

from compress.backends import all_backends


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


TOOLS = [  # name, what it is for, module, install extra
    ("torch", "load checkpoints, export, prune", "torch", "torch"),
    ("torch-pruning", "structured pruning", "torch_pruning", "torch"),
    ("onnx", "export, check and quantize ONNX", "onnx", "onnx"),
    ("matplotlib", "report plots", "matplotlib", "report"),
]


def backends() -> list[dict]:
    """Every registered backend (whether `compress run` or `compress build` measures it), usable or not."""

    out = []
    for b in all_backends():
        reason = b.unavailable()
        out.append({"name": b.name, "kind": "backend", "stage": b.stage, "usable": reason is None,
                    "purpose": b.purpose, "reason": reason})
    return out


def tools() -> list[dict]:
    out = []
    for name, purpose, module, extra in TOOLS:
        reason = _package(name, module, extra)
        out.append({"name": name, "kind": "tool", "usable": reason is None, "purpose": purpose,
                    "version": _version(name) if reason is None else None, "reason": reason})
    return out


def table(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    purpose = max(len(r["purpose"]) for r in rows)
    return "\n".join(
        f"{r['name']:<{width}}  {'yes' if r['usable'] else 'no ':<3}  {r['purpose']:<{purpose}}  "
        + ((r.get("version") or "") if r["usable"] else r["reason"]) for r in rows)
