"""The backend interface: one contract over every registered backend, interleaved latency, torch-cpu rows."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import TINY, images, tiny_run  # noqa: E402

from compress import backends  # noqa: E402
from compress.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_variant(tiny_model, tmp_path_factory):
    """A float variant as the pipeline writes it: model.onnx with its metadata, model.pt beside it."""
    from compress.core import export
    from compress.prune import channels as prune

    d = tmp_path_factory.mktemp("variant")
    export.export(tiny_model, d / "model.onnx", TINY.crop,
                  {"compress.preprocess": json.dumps(TINY.to_dict()), "compress.precision": "fp32"})
    prune.save(tiny_model, d / "model.pt", "test-resnet")
    return {"name": "fp32", "precision": "fp32", "path": d / "model.onnx", "crop": TINY.crop}


@pytest.mark.parametrize("name", list(backends.REGISTRY))
def test_every_backend_keeps_the_contract(name, tiny_variant, data_dirs):
    b = backends.get(name)
    assert b.name == name and b.purpose and b.stage in ("run", "build")
    reason = b.unavailable()
    if reason is not None:
        assert isinstance(reason, str) and reason  # named, never silently skipped
        pytest.skip(f"{name} is not usable here: {reason}")
    assert b.describe()["device"] if b.stage == "run" else b.describe()
    how = b.runs(tiny_variant)
    if b.stage == "build":
        pytest.skip("engines are opened by compress build")
    assert set(how) >= {"precision", "accuracy_method", "latency_method", "file"}
    x = next(images(data_dirs["eval"], 8).batches(TINY, 8))[0]
    reference = backends.get("onnxruntime-cpu").open(tiny_variant, for_accuracy=True).infer(x)
    got = b.open(tiny_variant, for_accuracy=True).infer(x)
    assert got.shape == reference.shape == (8, 4)
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-3)


def test_quantized_files_are_for_onnxruntime_only(tiny_variant):
    int8 = {**tiny_variant, "precision": "int8"}
    assert backends.get("torch-cpu").runs(int8) is None
    assert "as written" in backends.get("onnxruntime-cpu").runs(int8)["accuracy_method"]
    assert backends.get("tensorrt").runs({**tiny_variant, "precision": "int8-cpu"}) is None


def test_latency_rounds_interleave_variants(monkeypatch):
    """Each round runs every variant once, in order; the figures come from every round."""
    calls = []

    def fake_probe(backend, variant, runs, warmup, threads, batch):
        calls.append((variant["name"], batch))
        slow = 2.0 if variant["name"] == "b" else 1.0
        r = len([c for c in calls if c[0] == variant["name"]])  # this variant's round, 1-based
        return {"times_ms": [slow * r] * runs, "peak_rss_bytes": 100 * r, "baseline_rss_bytes": 10,
                "throughput_ips": 5.0 if batch else None, "threads": 2}

    monkeypatch.setattr(backends, "_probe", fake_probe)
    out = backends.latency("onnxruntime-cpu", [{"name": "a"}, {"name": "b"}], rounds=3, runs=9, threads=None,
                           batch=4)
    assert [c[0] for c in calls] == ["a", "b", "a", "b", "a", "b"]
    assert [c[1] for c in calls] == [0, 0, 0, 0, 4, 4]  # throughput in the last round only
    assert out["a"]["latency_spread_ms"] == [1.0, 3.0] and out["b"]["latency_spread_ms"] == [2.0, 6.0]
    assert out["a"]["latency_ms"]["p50"] == 2.0 and out["a"]["latency_runs"] == 9
    assert out["b"]["peak_rss_bytes"] == 200 and out["b"]["throughput_ips"] == 5.0


@pytest.mark.slow
def test_torch_cpu_rows_in_the_report(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_run(tiny_checkpoint, data_dirs, out, "--method", "l1", variants="p50")
    args[args.index("onnxruntime-cpu")] = "onnxruntime-cpu,torch-cpu"
    assert main(args) == 0
    capsys.readouterr()
    data = json.loads((out / "report.json").read_text())
    rows = {(r["variant"], r["backend"]): r for r in data["results"]}
    assert set(rows) == {(v, b) for v in ("fp32", "p50") for b in ("onnxruntime-cpu", "torch-cpu")}
    torch_fp32 = rows[("fp32", "torch-cpu")]
    assert torch_fp32["agreement"] == 1.0 and torch_fp32["top1"] == rows[("fp32", "onnxruntime-cpu")]["top1"]
    assert torch_fp32["speedup"] == 1.0 and rows[("p50", "torch-cpu")]["speedup"] > 0
    assert "PyTorch eager on cpu" in torch_fp32["latency_method"]
    assert torch_fp32["file_bytes"] == (out / "variants" / "fp32" / "model.pt").stat().st_size
    assert {rec["backend"] for rec in data["recommendations"]} == {"onnxruntime-cpu", "torch-cpu"}
    left_out = {n["backend"]: n["reason"] for n in data["not_measured"]}
    assert "torch-cuda" in left_out and "tensorrt" in left_out


def test_unknown_or_partial_backends_are_refused(tiny_checkpoint, data_dirs, tmp_path, capsys):
    args = tiny_run(tiny_checkpoint, data_dirs, tmp_path / "o", variants="fp32")
    i = args.index("onnxruntime-cpu")
    for value, needle in (("onnxruntime-cpu,tpu", "unknown backend(s) tpu"),
                          ("torch-cpu", "--backends must include onnxruntime-cpu")):
        args[i] = value
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.gpu
def test_torch_cuda_is_measured_where_torch_sees_a_gpu(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_run(tiny_checkpoint, data_dirs, out, variants="fp32")
    args[args.index("onnxruntime-cpu")] = "onnxruntime-cpu,torch-cuda"
    assert main(args) == 0
    rows = {r["backend"]: r for r in json.loads((out / "report.json").read_text())["results"]}
    assert rows["torch-cuda"]["agreement"] >= 0.98 and "on cuda" in rows["torch-cuda"]["latency_method"]

