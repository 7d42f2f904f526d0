"""End to end through the CLI on the tiny model: report contract, reuse, resume, budget exit code."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from conftest import FAST, tiny_run  # noqa: E402

from compress.cli import main  # noqa: E402


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def first_run(tiny_checkpoint, data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    args = tiny_run(tiny_checkpoint, data_dirs, out)[1:-len(FAST)]
    code = main(["run", *args, *FAST])
    return out, args, code


def test_report_contract(first_run):
    out, _, code = first_run
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == "fp32"
    assert [r["variant"] for r in data["results"]] == ["fp32", "int8", "int8-cpu"]
    for r in data["results"]:
        for key in ("variant", "backend", "precision", "images", "top1", "top5", "agreement", "flips", "latency_ms",
                    "batch_size", "throughput_ips", "peak_rss_bytes", "file_bytes", "onnx", "target"):
            assert key in r, key
        assert r["backend"] == "onnxruntime-cpu" and r["images"] == 64 and r["batch_size"] == 1
        assert 0 <= r["top5"] <= 1 and r["top1"] <= r["top5"] and 0 <= r["agreement"] <= 1
        assert set(r["latency_ms"]) == {"p50", "p90", "p99"}
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["throughput_ips"] > 0 and r["peak_rss_bytes"] > r["file_bytes"] > 0
        assert (out / r["onnx"]).is_file()
    fp32, int8, cpu = data["results"]
    assert fp32["top1"] >= 0.9 and fp32["agreement"] == 1.0 and fp32["flips"] == 0
    assert (int8["precision"], int8["target"]) == ("int8", "tensorrt")
    assert (cpu["precision"], cpu["target"]) == ("int8", "onnxruntime-cpu")
    assert "as written" in int8["accuracy_method"] and "as written" not in cpu["accuracy_method"]
    assert int8["file_bytes"] < fp32["file_bytes"]  # tiny model: Q/DQ parameters weigh; ResNet-50 is checked at 30%
    for key in ("python", "onnxruntime", "torch", "cpu"):
        assert data["env"][key]
    assert fp32["build"]["parity"]["top1_agreement"] == 1.0


def test_report_files(first_run):
    out = first_run[0]
    md = (out / "report.md").read_text()
    assert "| fp32 |" in md and "| int8-cpu |" in md and "not on its target runtime (tensorrt)" in md
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("variant,backend,precision,target")
    html = (out / "report.html").read_text()
    assert "<table class='summary'>" in html and "accuracy_latency.png" in html and "memory.png" in html
    for png in ("accuracy_latency.png", "memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def stage_records(out) -> dict[str, tuple]:
    """Every stage record of a run directory, by path, as (file identity, content): a stage that is redone
    renames a new record into place, a reused one leaves it alone."""
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_text())
            for p in sorted(out.rglob("stage.json"))}


def test_second_run_reuses_every_stage(first_run, capsys):
    out, args, _ = first_run
    before, records = json.loads((out / "report.json").read_text()), stage_records(out)
    assert {"variants/fp32/stage.json", "variants/int8/stage.json", "variants/int8-cpu/stage.json",
            "results/onnxruntime-cpu/latency/stage.json"} <= set(records)
    code, _ = run(capsys, *args)
    assert code == 0
    assert stage_records(out) == records  # no stage was redone
    after = json.loads((out / "report.json").read_text())
    assert [r["top1"] for r in after["results"]] == [r["top1"] for r in before["results"]]


def test_damaged_or_unfinished_stages_are_redone(first_run, capsys):
    out, args, _ = first_run
    records = stage_records(out)
    (out / "variants" / "int8" / "model.onnx").write_bytes(b"half-written")
    (out / "results" / "onnxruntime-cpu" / "int8-cpu" / "stage.json").unlink()  # killed before the record
    code, _ = run(capsys, *args)
    assert code == 0
    again = stage_records(out)
    redone = {k for k in records if again.get(k) != records[k]}
    assert redone == {"variants/int8/stage.json", "results/onnxruntime-cpu/int8-cpu/stage.json"}
    # quantization is deterministic: the rebuilt file is the same bytes, so its measurements still stand
    rebuilt, first = (json.loads(r["variants/int8/stage.json"][2]) for r in (again, records))
    assert rebuilt["sha256"] == first["sha256"]
    assert not list(out.rglob("*.part"))


@pytest.mark.slow
def test_budget_exit_code(outlier_checkpoint, data_dirs, tmp_path, capsys):
    args = ["--model", str(outlier_checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
            "--calib", str(data_dirs["calib"]), "--out", str(tmp_path / "o")]
    code, cap = run(capsys, *args, "--max-top1-drop", "1.0")
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    drop = -data["results"][1]["top1_delta"]
    assert drop > 1.0  # the planted activation outlier breaks per-tensor INT8
    assert code == 3 and f"int8 (top-1 -{drop:.2f} points" in cap.err
    code, _ = run(capsys, *args, "--max-top1-drop", str(drop + 0.5))
    assert code == 0


@pytest.mark.slow
def test_onnx_model_and_overlap_warning(tiny_onnx, data_dirs, tmp_path, capsys):
    out = tmp_path / "o"
    code, cap = run(capsys, "--model", str(tiny_onnx), "--data", str(data_dirs["eval"]),
                    "--calib", str(data_dirs["eval"]), "--out", str(out), "--calib-limit", "16")
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert data["warnings"] and "also calibration images" in data["warnings"][0]
    stage = json.loads((out / "variants" / "fp32" / "stage.json").read_text())
    assert stage["source"] == "onnx"
    code, cap = run(capsys, "--model", str(out / "variants" / "int8" / "model.onnx"), "--data",
                    str(data_dirs["eval"]), "--out", str(tmp_path / "o2"), "--variants", "fp32")
    assert code == 2 and "already quantized" in cap.err


def test_rows_from_another_device_merge_into_the_report(first_run, tmp_path):
    """What `compress build` does with its measurements (here two hand-written rows, never committed)."""
    import shutil

    from compress import report

    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    base = json.loads((out / "report.json").read_text())["results"][0]
    gpu = "tensorrt-some-gpu-sm90-trt11.4.0-linux-x86_64"
    rows = [{**base, "variant": v, "engine": f"{v}.engine", "backend": gpu, "precision": p, "target": "tensorrt",
             "latency_ms": {"p50": ms, "p90": ms, "p99": ms}, "round_p50_ms": None, "peak_rss_bytes": None,
             "file_bytes": 1000}
            for v, p, ms in (("fp32", "fp32", 2.0), ("int8", "int8", 0.5))]
    data = report.merge(out, rows)
    assert [r["backend"] for r in data["results"]].count(gpu) == 2
    assert not any(n["backend"] == "tensorrt" for n in data["not_measured"])
    merged = {(r["variant"], r["backend"]): r for r in data["results"]}
    assert merged[("int8", gpu)]["speedup"] == 4.0  # against the FP32 engine on the same GPU, not the CPU
    cpu_fp32, cpu_int8 = merged[("fp32", "onnxruntime-cpu")], merged[("int8", "onnxruntime-cpu")]
    ratios = [a / b for a, b in zip(cpu_fp32["round_p50_ms"], cpu_int8["round_p50_ms"])]  # per round, paired
    assert min(ratios) <= cpu_int8["speedup"] <= max(ratios) and cpu_int8["speedup_ci"] is not None
    md = (out / "report.md").read_text()
    assert f"| int8 | {gpu} | tensorrt |" in md and "| — |" in md
    again = report.merge(out, rows[:1])  # re-measuring replaces, never duplicates
    assert [r["backend"] for r in again["results"]].count(gpu) == 2


@pytest.mark.slow
def test_int8_cpu_made_for_another_cpu_class_is_labelled_and_warned(tiny_checkpoint, data_dirs, tmp_path, capsys):
    """A file for CPUs without VNNI made on any machine: its row says 7-bit weights, and on a VNNI CPU the report
    says what that costs; made for this CPU's class, no warning."""
    from compress.core.cpu import this_cpu_class

    other = "avx2" if this_cpu_class() == "vnni" else "vnni"
    out = tmp_path / "r"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--cpu-class", other, variants="int8-cpu")) == 0
    capsys.readouterr()
    data = json.loads((out / "report.json").read_text())
    row = next(r for r in data["results"] if r["variant"] == "int8-cpu")
    assert row["build"]["quantization"]["cpu_class"] == other
    assert ("7-bit weights" if other == "avx2" else "x64quantprecision=1") in row["latency_method"]
    assert any(f"--cpu-class {other}" in w for w in data["warnings"])
    assert "int8-cpu is made for" in (out / "report.md").read_text()
    assert main(tiny_run(tiny_checkpoint, data_dirs, tmp_path / "same", variants="int8-cpu")) == 0
    capsys.readouterr()
    same = json.loads((tmp_path / "same" / "report.json").read_text())
    assert not any("int8-cpu is made for" in w for w in same["warnings"])
