"""Bundles for Jetson, `compress build` without TensorRT, engine storage decisions, doctor."""

import json
import tarfile

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import FAST  # noqa: E402

from compress.cli import main  # noqa: E402
from compress.core.errors import UserError  # noqa: E402
from compress.core.store import sha256_file  # noqa: E402
from compress.devices.engine import Device  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint, data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--calib", str(data_dirs["calib"]), "--out", str(out), "--variants", "int8,int8-cpu",
                 *FAST]) == 0
    return out


def unpack(archive, dest):
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return next(dest.iterdir())


def test_agx_orin_bundle(run_dir, data_dirs, tmp_path, capsys):
    assert main(["bundle", str(run_dir), "--target", "agx-orin", "--out", str(tmp_path), "--data",
                 str(data_dirs["eval"])]) == 0
    archive = capsys.readouterr().out.strip()
    root = unpack(archive, tmp_path / "x")
    manifest = json.loads((root / "bundle.json").read_text())
    assert manifest["profile"]["dla_cores"] == 2 and manifest["profile"]["tensorrt_major"] == 10
    assert {v["name"] for v in manifest["variants"]} == {"fp32", "int8"}  # int8-cpu is not for TensorRT
    for rel, digest in manifest["files"].items():
        assert sha256_file(root / rel) == digest, rel
    for rel in ("variants/fp32/model.onnx", "variants/int8/model.onnx", "recipe.json", "eval/manifest.txt",
                "README.md", "build-trtexec.sh"):
        assert (root / rel).is_file(), rel
    assert sha256_file(root / "variants/int8/model.onnx") == sha256_file(run_dir / "variants/int8/model.onnx")
    assert len((root / "eval/manifest.txt").read_text().splitlines()) == 1 + 64
    lines = {c["engine"]: c["trtexec"] for c in manifest["engines"]}
    assert set(lines) == {"fp32", "fp16", "fp16-dla0", "int8", "int8-dla0"}
    assert "--noTF32" in lines["fp32"] and "--fp16" not in lines["fp32"] and "--useDLACore" not in lines["fp32"]
    assert "--fp16" in lines["fp16"] and "--int8" not in lines["fp16"]
    assert "--int8" in lines["int8"] and "--onnx=variants/int8/model.onnx" in lines["int8"]
    for name in ("fp16-dla0", "int8-dla0"):
        assert "--useDLACore=0" in lines[name] and "--allowGPUFallback" in lines[name]
    assert all("--stronglyTyped" not in line for line in lines.values())  # JetPack 6: TensorRT 10
    assert "--maxShapes=input:8x3x32x32" in lines["fp32"]
    script = (root / "build-trtexec.sh").read_text()
    assert all(line in script for line in lines.values())
    assert any("--dla-core 0 --gpu-fallback" in c for c in manifest["compress_build"])
    assert json.loads((root / "recipe.json").read_text())["preprocess"]["crop"] == 32


def test_orin_nano_has_no_dla_and_eval_images_travel(run_dir, data_dirs, tmp_path, capsys):
    assert main(["bundle", str(run_dir), "--target", "orin-nano", "--out", str(tmp_path), "--eval-images",
                 "--data", str(data_dirs["eval"])]) == 0
    root = unpack(capsys.readouterr().out.strip(), tmp_path / "x")
    manifest = json.loads((root / "bundle.json").read_text())
    assert all(c["dla_core"] is None and "--useDLACore" not in c["trtexec"] for c in manifest["engines"])
    assert all("--dla-core" not in c for c in manifest["compress_build"])
    labels = (root / "eval/labels.txt").read_text().splitlines()
    assert len(labels) == 64 and all((root / "eval" / line.split()[0]).is_file() for line in labels)


@pytest.mark.no_tensorrt
def test_build_without_tensorrt_says_why(run_dir, tmp_path, capsys):
    """On the device, `compress build` takes the bundle as a run directory; here it explains why it cannot."""
    assert main(["bundle", str(run_dir), "--target", "orin-nano", "--out", str(tmp_path)]) == 0
    root = unpack(capsys.readouterr().out.strip(), tmp_path / "x")
    code = main(["build", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: cannot build TensorRT engines on this machine")


def test_bundle_errors(run_dir, tmp_path, capsys):
    assert main(["bundle", str(run_dir), "--target", "jetson-nano-2019"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert main(["bundle", str(tmp_path), "--target", "agx-orin"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["build", str(run_dir), "--precisions", "fp8"]) == 2
    assert "unknown precision" in capsys.readouterr().err


@pytest.mark.no_tensorrt
def test_report_says_tensorrt_not_measured_here(run_dir):
    data = json.loads((run_dir / "report.json").read_text())
    trt = next(n for n in data["not_measured"] if n["backend"] == "tensorrt")
    assert "TensorRT is not installed" in trt["reason"]
    assert "- **tensorrt**: not measured here: TensorRT is not installed" in (run_dir / "report.md").read_text()


def test_engines_are_keyed_by_device_reused_and_refused_elsewhere(run_dir, tmp_path, monkeypatch):
    """The storage decisions of `compress build`, with the TensorRT call itself replaced by a recorder."""
    from compress.backends import tensorrt as trt_backend
    from compress.devices import build as build_mod
    from compress.devices.engine import Profile, plan

    calls = []

    def fake_build(p, onnx, cache):
        calls.append((p.engine_name, onnx.name))
        return b"serialized-engine", 0.5

    monkeypatch.setattr(trt_backend, "build", fake_build)
    h100 = Device("NVIDIA H100 80GB HBM3", "9.0", "11.4.0.1")
    p = plan("fp32", "fp32", "fp16", 11, Profile("input", (3, 32, 32)))
    engine_dir = run_dir / "engines" / h100.key
    engine = build_mod.build_one(run_dir, engine_dir, p, h100, engine_dir / "timing.cache")
    assert calls == [("fp16", "model-fp16.onnx")]  # TensorRT 11: FP16 comes from an FP16 ONNX
    assert (run_dir / "variants/fp32/model-fp16.onnx").is_file()
    side = json.loads(engine.with_suffix(".json").read_text())
    assert side["gpu"] == h100.gpu and side["engine_bytes"] == len(b"serialized-engine")
    assert side["source_onnx_sha256"] == sha256_file(run_dir / "variants/fp32/model-fp16.onnx")
    build_mod.build_one(run_dir, engine_dir, p, h100, engine_dir / "timing.cache")
    assert len(calls) == 1  # reused
    assert build_mod.load_engine(engine, h100) == b"serialized-engine"
    with pytest.raises(UserError, match="built on another device"):
        build_mod.load_engine(engine, Device("Orin", "8.7", "10.3.0.30", "Linux-aarch64"))
    newer = Device(h100.gpu, "9.0", "11.5.0.0")
    build_mod.build_one(run_dir, run_dir / "engines" / newer.key, p, newer, engine_dir / "timing.cache")
    assert len(calls) == 2 and newer.key != h100.key


def test_doctor_lists_every_backend(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    from compress.backends import REGISTRY

    assert names == [*REGISTRY, "torch", "torch-pruning", "onnx", "matplotlib"]
    assert all(line.split()[1] in ("yes", "no") for line in out)
    usable = {line.split()[0]: line.split()[1] == "yes" for line in out}
    assert usable["onnxruntime-cpu"] and usable["torch-cpu"] and usable["torch"]  # installed by the dev extra


def test_engine_latency_has_its_spread():
    from compress.devices.build import spread

    assert spread([1.0] * 10 + [3.0] * 10, rounds=2) == [1.0, 3.0]
    assert spread([2.0, 2.0, 2.0], rounds=5) == [2.0, 2.0]  # fewer runs than groups: no empty group
