"""The TensorRT backend is type-checked against tensorrt-stubs: a wrong flag or method fails without TensorRT."""

import subprocess

import pytest

pytest.importorskip("mypy")

from tensorrt_typecheck import TARGETS, prepare_stubs, run_mypy  # noqa: E402

BAD = '''
import tensorrt as trt


def configure(builder: trt.Builder) -> None:
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.TF23)
    config.set_flags(trt.BuilderFlag.SPARSE_WEIGHTS)
'''


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    try:
        return prepare_stubs()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"tensorrt-stubs could not be installed from the package index: {exc}")


@pytest.mark.slow
def test_backend_passes(stubs):
    result = run_mypy(TARGETS, stubs)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_misspelled_flag_and_method_fail(stubs, tmp_path):
    sample = tmp_path / "bad_build.py"
    sample.write_text(BAD)
    result = run_mypy([sample], stubs)
    assert result.returncode == 1
    assert 'has no attribute "TF23"' in result.stdout
    assert 'has no attribute "set_flags"' in result.stdout


def test_stub_fixes():
    from tensorrt_typecheck import fix

    assert fix("def f(self, in: list[int], out: list[int]) -> int:") == \
        "def f(self, in_: list[int], out: list[int]) -> int:"
    assert fix("power: Weights = None, channel_axis: int) -> IScaleLayer:") == \
        "power: Weights = None, channel_axis: int = ...) -> IScaleLayer:"
