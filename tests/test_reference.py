"""A short run on the real ResNet-50 v1 and ImageNet images; skipped where the reference assets are absent."""

import json

import pytest
from conftest import REFERENCE, REFERENCE_MODEL

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not (REFERENCE / "imagenet-val" / "labels.txt").is_file(),
                       reason=f"reference images not found at {REFERENCE}"),
    pytest.mark.skipif(not REFERENCE_MODEL.is_file(),
                       reason=f"reference model not found at {REFERENCE_MODEL}; run 'make reference-model'"),
]


def test_reference_resnet50_v1_short_run(tmp_path, capsys):
    pytest.importorskip("torch")
    import onnx

    from compress.cli import main
    from compress.quantize.tensorrt_check import tensorrt_problems

    out = tmp_path / "ref"
    code = main(["run", "--model", str(REFERENCE_MODEL), "--arch", "resnet50-v1",
                 "--data", str(REFERENCE / "imagenet-val"), "--calib", str(REFERENCE / "imagenet-calib"),
                 "--out", str(out), "--eval-limit", "48", "--calib-limit", "32", "--latency-runs", "3",
                 "--throughput-batch", "2"])
    capsys.readouterr()
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    rows = {(r["variant"], r["backend"]): r for r in data["results"]}
    assert set(rows) == {("fp32", "onnxruntime-cpu"), ("int8", "onnxruntime-cpu"), ("fp32", "torch-cpu")}
    fp32, int8 = rows[("fp32", "onnxruntime-cpu")], rows[("int8", "onnxruntime-cpu")]
    assert rows[("fp32", "torch-cpu")]["agreement"] >= 0.97  # PyTorch eager and onnxruntime on the same weights
    assert fp32["build"]["parity"]["relative"] < 1e-4
    assert fp32["images"] == 48 and fp32["top1"] >= 0.6  # these weights score about 80% on these images
    assert int8["agreement"] >= 0.85  # 32 calibration images only: a smoke test, not the benchmark
    assert int8["file_bytes"] <= 0.3 * fp32["file_bytes"]
    assert tensorrt_problems(onnx.load(str(out / int8["onnx"]))) == []

    # The deploy bundle of the reference run for an AGX Orin: unpack it and check it.
    import tarfile

    from compress.core.store import sha256_file

    assert main(["bundle", str(out), "--target", "agx-orin", "--out", str(tmp_path)]) == 0
    archive = capsys.readouterr().out.strip()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    root = tmp_path / "x" / "compress-bundle-agx-orin"
    manifest = json.loads((root / "bundle.json").read_text())
    assert all(sha256_file(root / rel) == digest for rel, digest in manifest["files"].items())
    lines = {c["engine"]: c["trtexec"] for c in manifest["engines"]}
    assert set(lines) == {"fp32", "fp16", "fp16-dla0", "int8", "int8-dla0"}
    assert "--noTF32" in lines["fp32"] and "--int8" in lines["int8"] and "--useDLACore=0" in lines["int8-dla0"]
    assert "--minShapes=input:1x3x224x224" in lines["fp16"]
    assert json.loads((root / "recipe.json").read_text())["arch"] == "resnet50-v1"
