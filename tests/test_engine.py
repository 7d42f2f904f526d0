"""Every TensorRT decision, tested without TensorRT."""

import sys
import types

import numpy as np
import pytest

from compress.core.errors import UserError
from compress.devices.engine import (
    Device,
    Placement,
    Profile,
    check_compatible,
    plan,
    reusable,
    sidecar,
    trtexec_command,
)

PROFILE = Profile("input", (3, 224, 224), 1, 1, 32)
H100 = Device("NVIDIA H100 80GB HBM3", "9.0", "11.4.0.1", "Linux-x86_64")


def test_tensorrt_11_is_strongly_typed_without_precision_flags():
    fp32 = plan("fp32", "fp32", "fp32", 11, PROFILE)
    assert fp32.strongly_typed and fp32.set_flags == () and fp32.clear_flags == ("TF32",)
    fp16 = plan("fp32", "fp32", "fp16", 11, PROFILE)
    assert fp16.onnx == "model-fp16.onnx" and fp16.set_flags == () and fp16.clear_flags == ()
    int8 = plan("int8", "int8", "int8", 11, PROFILE)
    assert int8.onnx == "model.onnx" and int8.set_flags == () and int8.strongly_typed


def test_tensorrt_10_uses_builder_flags():
    fp32 = plan("fp32", "fp32", "fp32", 10, PROFILE)
    assert not fp32.strongly_typed and fp32.clear_flags == ("TF32",) and fp32.set_flags == ()
    fp16 = plan("fp32", "fp32", "fp16", 10, PROFILE)
    assert fp16.onnx == "model.onnx" and fp16.set_flags == ("FP16",)
    int8 = plan("int8", "int8", "int8", 10, PROFILE)
    assert int8.set_flags == ("FP16", "INT8")


def test_sparse_and_dla_options():
    assert "SPARSE_WEIGHTS" in plan("s24", "fp32", "fp16", 11, PROFILE, sparse=True).set_flags
    dla = plan("int8", "int8", "int8", 10, PROFILE, placement=Placement(dla_core=1, gpu_fallback=True))
    assert dla.dla_core == 1 and "GPU_FALLBACK" in dla.set_flags and dla.engine_name == "int8-dla1"
    with pytest.raises(UserError, match="DLA runs FP16 and INT8 only"):
        plan("fp32", "fp32", "fp32", 10, PROFILE, placement=Placement(dla_core=0))
    with pytest.raises(UserError, match="only applies with --dla-core"):
        plan("fp32", "fp32", "fp16", 10, PROFILE, placement=Placement(gpu_fallback=True))


def test_precision_must_match_the_variant():
    with pytest.raises(UserError, match="cannot give a int8 engine"):
        plan("fp32", "fp32", "int8", 11, PROFILE)
    with pytest.raises(UserError, match="cannot give a fp16 engine"):
        plan("int8", "int8", "fp16", 11, PROFILE)
    with pytest.raises(UserError, match="onnxruntime's CPU kernels"):
        plan("int8-cpu", "int8-cpu", "int8", 11, PROFILE)
    with pytest.raises(UserError, match="too old"):
        plan("fp32", "fp32", "fp32", 7, PROFILE)


def test_engine_names():
    assert [plan(v, vp, p, 11, PROFILE).engine_name for v, vp, p in [
        ("fp32", "fp32", "fp32"), ("fp32", "fp32", "fp16"), ("int8", "int8", "int8"), ("p30", "fp32", "fp16"),
        ("p30-int8", "int8", "int8")]] == ["fp32", "fp16", "int8", "p30-fp16", "p30-int8"]


def test_device_key_and_refusal_elsewhere():
    assert H100.key == "nvidia-h100-80gb-hbm3-sm90-trt11.4.0.1-linux-x86_64"
    assert H100.tensorrt_major == 11
    side = sidecar(plan("fp32", "fp32", "fp32", 11, PROFILE), H100, "abc", 12.345, 1000)
    assert side["build"]["clear_flags"] == ["TF32"] and side["profile"]["max"] == [32, 3, 224, 224]
    assert (side["source_onnx_sha256"], side["build_seconds"], side["engine_bytes"]) == ("abc", 12.35, 1000)
    check_compatible(side, H100)
    for other in (Device("NVIDIA A100-SXM4-80GB", "8.0", "11.4.0.1", "Linux-x86_64"),
                  Device(H100.gpu, "9.0", "10.13.0.35", "Linux-x86_64"),
                  Device(H100.gpu, "9.0", "11.4.0.1", "Windows-AMD64")):
        with pytest.raises(UserError, match="built on another device or TensorRT"):
            check_compatible(side, other)


def test_reuse_needs_same_device_onnx_and_plan():
    p = plan("fp32", "fp32", "fp16", 11, PROFILE)
    side = sidecar(p, H100, "abc", 1.0, 10)
    assert reusable(side, p, H100, "abc")
    assert not reusable(side, p, H100, "changed")
    assert not reusable(side, plan("fp32", "fp32", "fp16", 11, Profile("input", (3, 224, 224), 1, 1, 64)), H100, "abc")
    assert not reusable(side, p, Device(H100.gpu, "9.0", "11.5.0.0"), "abc")
    assert not reusable(None, p, H100, "abc")


def test_trtexec_lines():
    line = trtexec_command(plan("fp32", "fp32", "fp32", 11, PROFILE), "m.onnx", "e.engine")
    assert "--noTF32" in line and "--stronglyTyped" in line and "--fp16" not in line
    assert "--minShapes=input:1x3x224x224" in line and "--maxShapes=input:32x3x224x224" in line
    dla = Placement(workspace_mib=512, dla_core=0, gpu_fallback=True)
    line = trtexec_command(plan("int8", "int8", "int8", 10, PROFILE, placement=dla), "q.onnx", "e.engine", "t.cache")
    for flag in ("--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:512M",
                 "--timingCacheFile=t.cache"):
        assert flag in line
    assert "--stronglyTyped" not in line


def test_every_planned_flag_is_a_tensorrt_flag(monkeypatch):
    from compress.backends import tensorrt as trt_backend

    names = {f for major in (10, 11) for v, vp, p in [("fp32", "fp32", "fp32"), ("fp32", "fp32", "fp16"),
                                                       ("int8", "int8", "int8")]
             for f in (*plan(v, vp, p, major, PROFILE, sparse=True).set_flags,
                       *plan(v, vp, p, major, PROFILE).clear_flags)}
    dla = Placement(dla_core=0, gpu_fallback=True)
    names |= set(plan("int8", "int8", "int8", 10, PROFILE, placement=dla).set_flags)
    fake = types.ModuleType("tensorrt")
    fake.BuilderFlag = types.SimpleNamespace(**{n: f"BuilderFlag.{n}" for n in names})
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert {trt_backend._flag(n) for n in names} == {f"BuilderFlag.{n}" for n in names}


def test_stub_only_tensorrt_is_not_tensorrt(monkeypatch):
    from compress.backends import tensorrt as trt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what installed stubs look like
    assert "no Builder" in trt_backend.unavailable()


def test_fp16_onnx_for_strongly_typed_builds(tiny_onnx, tmp_path, data_dirs):
    onnx = pytest.importorskip("onnx")
    from conftest import TINY, images

    from compress.core.export import to_fp16
    from compress.core.session import Session

    out = tmp_path / "model-fp16.onnx"
    to_fp16(tiny_onnx, out)
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stay float32
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer if i.name in conv_weights)
    x = TINY.normalize(images(data_dirs["eval"], 16).pixels)
    ref, half = Session(tiny_onnx).infer(x), Session(out).infer(x)
    assert np.abs(ref - half).max() <= 0.02 * np.abs(ref).max()
    assert (ref.argmax(1) == half.argmax(1)).mean() >= 0.9


def test_decisions_import_nothing_heavy():
    import subprocess

    code = ("import sys, compress.devices.engine, compress.devices.bundle; "
            "print([m for m in ('tensorrt', 'torch', 'onnx', 'onnxruntime') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
