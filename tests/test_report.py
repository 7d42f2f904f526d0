"""The report from fixed results: the recommendation per runtime, spreads, and golden Markdown and CSV files.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change, and review the diff."""

import os
from pathlib import Path

import pytest

from compress import report
from compress.core.result import Result, csv_fields
from compress.report import render

GOLDEN = Path(__file__).parent / "golden"


def row(variant, backend, target, top1, agreement, flips, p50, spread, file_mb, **extra):
    return Result(variant=variant, backend=backend, precision="int8" if "int8" in variant else "fp32", target=target,
                  accuracy_method="m", latency_method="t", latency_ms={"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2},
                  latency_spread_ms=list(spread), rounds=3, images=1000, top1=top1, top5=top1 + 0.1,
                  agreement=agreement, flips=flips, flips_to_wrong=flips // 2, flips_to_right=flips - flips // 2,
                  throughput_ips=100.0, throughput_batch=32, peak_rss_bytes=400_000_000, file_bytes=int(file_mb * 1e6),
                  onnx=f"variants/{variant}/model.onnx", **extra).to_dict()


@pytest.fixture()
def data():
    cpu, torch_cpu = "onnxruntime-cpu", "torch-cpu"
    results = [
        row("fp32", cpu, "any", 0.800, 1.0, 0, 25.9, (25.5, 26.4), 102.1, params=25_500_000, macs=4_100_000_000),
        row("int8", cpu, "tensorrt", 0.798, 0.981, 19, 50.1, (49.0, 51.0), 25.8),
        row("int8-cpu", cpu, "onnxruntime-cpu", 0.801, 0.982, 18, 9.2, (9.1, 9.4), 26.1),
        row("p30", cpu, "any", 0.770, 0.90, 100, 17.0, (16.0, 18.5), 70.0, recovery=[{"reconstruction": 128}]),
        row("p30-int8-cpu", cpu, "onnxruntime-cpu", 0.760, 0.88, 120, 9.0, (8.0, 9.6), 18.0),
        row("fp32", torch_cpu, "any", 0.800, 1.0, 0, 60.0, (55.0, 70.0), 102.6),
    ]
    d = {"format": 1, "baseline": "fp32", "results": results, "warnings": [],
         "env": {"cpu": "Test CPU", "cpu_cores": 2, "cpu_flags": ["avx2"], "onnxruntime": "1.0", "torch": "2.0",
                 "python": "3.11"},
         "images": {"evaluation": "val/", "count": 1000, "skipped": 0, "calibration": "calib/"},
         "not_measured": [{"backend": "tensorrt", "reason": "TensorRT is not installed"}],
         "recipe": {"budget": {"max_top1_drop": 0.5, "min_agreement": None}}}
    report.derive(d["results"])
    d["recommendations"] = report.recommendations(d)
    return d


def test_recommendation_is_the_fastest_on_target_within_budget(data):
    recs = {r["backend"]: r for r in data["recommendations"]}
    cpu = recs["onnxruntime-cpu"]
    # p30-int8-cpu is faster but 4 points down; int8 is within budget but not made for this runtime
    assert cpu["variant"] == "int8-cpu" and cpu["speedup"] == pytest.approx(25.9 / 9.2, abs=1e-3)
    assert cpu["smaller"] == pytest.approx(102.1 / 26.1, rel=1e-3) and cpu["top1_delta"] == 0.1
    assert recs["torch-cpu"]["variant"] == "fp32"
    data["recipe"]["budget"] = {"max_top1_drop": None, "min_agreement": None}  # none given: one point
    assert {r["backend"]: r["variant"] for r in report.recommendations(data)}["onnxruntime-cpu"] == "int8-cpu"
    data["recipe"]["budget"] = {"max_top1_drop": 5.0, "min_agreement": None}
    assert {r["backend"]: r["variant"] for r in report.recommendations(data)}["onnxruntime-cpu"] == "p30-int8-cpu"


def test_close_latencies_are_flagged(data):
    warnings = report.spread_warnings(data)
    assert any("p30-int8-cpu and int8-cpu differ by 0.20 ms" in w for w in warnings)
    assert not any("fp32 and int8 " in w for w in warnings)


def test_csv_columns_are_the_result_fields(data):
    header = report.to_csv(data).splitlines()[0].split(",")
    assert header == csv_fields() and {"p50_ms", "p50_low_ms", "p50_high_ms", "top1_delta"} <= set(header)


@pytest.mark.parametrize("name, render", [("report.md", report.markdown), ("report.csv", report.to_csv)])
def test_golden(data, name, render):
    text = render(data)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):  # rewritten, never compared with itself: the next run compares
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"{name} rewritten: review the diff, then run the tests again")
    assert text == path.read_text(), f"{name} changed: review it, then UPDATE_GOLDEN=1 to accept"


def test_first_screen_of_the_html(data):
    page = report.to_html(data)
    first = page.split("<h2>Every figure</h2>")[0]
    assert "ship <code>int8-cpu</code>" in first and "2.81x faster" in first
    assert "<table class='summary'>" in first and first.count("<th>") == len(render.SUMMARY)
    assert "overflow-x:auto" in page  # the full table scrolls inside its box, never the page
