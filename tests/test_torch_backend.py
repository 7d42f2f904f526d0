"""The PyTorch GPU backend and its benchmark script, exercised on the CPU (no GPU here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from compress.backends import torch as torch_backend  # noqa: E402
from compress.core.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_latency_on_cpu(tiny_model):
    r = torch_backend.latency(tiny_model, (2, 32), "fp32", channels_last=True, device="cpu", warmup=1, runs=5)
    assert r["device"] == "cpu" and r["batch"] == 2 and r["channels_last"]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert next(tiny_model.parameters()).dtype == torch.float32  # timed on a copy: the caller's model is untouched
    assert next(tiny_model.parameters()).is_contiguous()
    with pytest.raises(UserError, match="CUDA graphs need a CUDA device"):
        torch_backend.latency(tiny_model, (1, 32), cuda_graph=True, device="cpu")
    with pytest.raises(UserError, match="unknown mode"):
        torch_backend.latency(tiny_model, (1, 32), mode="int4", device="cpu")


@pytest.mark.slow
def test_benchmark_script_runs_without_gpu(tmp_path):
    out = tmp_path / "torch.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "torch_gpu.py"), "--device", "cpu", "--arch",
                    "test-resnet", "--prune", "0.5", "--batches", "1,4", "--crop", "32", "--runs", "3",
                    "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["variant"] for r in rows} == {"fp32", "p50"}
    assert {(r["batch"], r["mode"], r["channels_last"]) for r in rows} == {
        (b, m, c) for b in (1, 4) for m in ("fp32", "tf32", "fp16") for c in (False, True)}
    assert "| p50 | 4 | fp16 |" in out.read_text()
