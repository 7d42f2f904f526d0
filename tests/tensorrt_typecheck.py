"""Type-check the TensorRT backend against the `tensorrt-stubs` package, without TensorRT.

The stubs (10.13) are generated and need three fixes before mypy parses them: parameters named `in` (a
keyword), `add_scale_nd`'s `channel_axis` without a default after defaulted parameters, and no `py.typed`
(so a fixed copy goes on MYPYPATH). They are installed into a folder of their own, never into the
environment: an installed stubs-only `tensorrt` would import as an empty namespace package.

    python tests/tensorrt_typecheck.py [FILE ...]     # default: the TensorRT and CUDA backends
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS_VERSION = "10.13.0.35.1"
CACHE = ROOT / ".stubs"
TARGETS = [ROOT / "compress" / "backends" / "tensorrt.py", ROOT / "compress" / "backends" / "_cuda.py"]
CONFIG = """[mypy]
python_version = 3.11
warn_unused_ignores = False
[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True
[mypy-cuda.*,pycuda.*,onnx.*,onnxruntime.*,PIL.*,tqdm.*]
ignore_missing_imports = True
follow_imports = skip
"""


def fix(text: str) -> str:
    text = re.sub(r"\bin: ", "in_: ", text)  # `in` cannot name a parameter
    # a parameter without a default after defaulted ones is a syntax error: give it `= ...`
    return re.sub(r"(, channel_axis: int)\)", r"\1 = ...)", text)


def prepare_stubs(cache: Path = CACHE) -> Path:
    """Install the stubs into `cache/raw` (once) and write the fixed copy to `cache/fixed`; return the latter."""
    raw, fixed = cache / "raw", cache / "fixed"
    if not (raw / "tensorrt_bindings").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(raw),
                        f"tensorrt-stubs=={STUBS_VERSION}"], check=True)
    if fixed.exists():
        shutil.rmtree(fixed)
    for package in ("tensorrt", "tensorrt_bindings"):
        for src in (raw / package).rglob("*.pyi"):
            dst = fixed / src.relative_to(raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(fix(src.read_text()))
    return fixed


def run_mypy(files: list[Path], stubs: Path) -> subprocess.CompletedProcess:
    config = stubs.parent / "mypy.ini"
    config.write_text(CONFIG)
    env = {**os.environ, "MYPYPATH": f"{stubs}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental",
                           "--follow-imports", "silent", *map(str, files)],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or TARGETS
    result = run_mypy(files, prepare_stubs())
    print(result.stdout + result.stderr, end="")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
