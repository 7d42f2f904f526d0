"""The report from planted results: intervals on every comparison with FP32, a recommendation that tells a real
gain from noise, the front per runtime, and golden Markdown and CSV files.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change, and review the diff."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from compress import report
from compress.cli import main
from compress.core.budget import Budget
from compress.core.result import Result, csv_fields
from compress.report import intervals, render

GOLDEN = Path(__file__).parent / "golden"
ROUNDS = 7


def rounds(p50: float, spread: tuple[float, float]) -> list[float]:
    """Seven round medians between the spread's ends, with p50 in the middle (the same shape for every row, so
    two rows' paired ratios are nearly constant unless their spreads say otherwise)."""
    low, high = spread
    return [low, (low + p50) / 2, p50, p50, p50, (p50 + high) / 2, high]


def row(variant, backend, target, top1, flips, p50, spread, file_mb, to_wrong=None, **extra):
    """A result on 1,000 images: `flips` images changed against FP32, `to_wrong` of them (default half) from
    right to wrong; its agreement follows."""
    to_wrong = flips // 2 if to_wrong is None else to_wrong
    return Result(variant=variant, backend=backend, precision="int8" if "int8" in variant else "fp32", target=target,
                  accuracy_method="m", latency_method="t", latency_ms={"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2},
                  latency_spread_ms=list(spread), round_p50_ms=rounds(p50, spread), rounds=ROUNDS, timed_runs=105,
                  images=1000, top1=top1, top5=top1 + 0.1, agreement=1 - flips / 1000, flips=flips,
                  flips_to_wrong=to_wrong, flips_to_right=flips - to_wrong, throughput_ips=100.0, throughput_batch=32,
                  peak_rss_bytes=400_000_000, file_bytes=int(file_mb * 1e6), onnx=f"variants/{variant}/model.onnx",
                  **extra).to_dict()


def assembled(results: list[dict], budget: dict | None = None) -> dict:
    d = {"format": 1, "baseline": "fp32", "results": results, "warnings": [],
         "env": {"cpu": "Test CPU", "cpu_cores": 2, "cpu_flags": ["avx2"], "onnxruntime": "1.0", "torch": "2.0",
                 "python": "3.11"},
         "images": {"evaluation": "val/", "count": 1000, "skipped": 0, "calibration": "calib/"},
         "not_measured": [{"backend": "tensorrt", "reason": "TensorRT is not installed"}],
         "recipe": {"budget": budget or {"max_top1_drop": 0.5, "min_agreement": None}}}
    report.derive(d["results"])
    d["recommendations"] = report.recommendations(d)
    return d


@pytest.fixture()
def data():
    cpu, torch_cpu = "onnxruntime-cpu", "torch-cpu"
    return assembled([
        row("fp32", cpu, "any", 0.800, 0, 25.9, (25.5, 26.4), 102.1, params=25_500_000, macs=4_100_000_000),
        row("int8", cpu, "tensorrt", 0.798, 19, 50.1, (49.0, 51.0), 25.8, to_wrong=10),
        row("int8-cpu", cpu, "onnxruntime-cpu", 0.801, 18, 9.2, (9.1, 9.4), 26.1, to_wrong=8),
        row("p30", cpu, "any", 0.770, 100, 17.0, (16.0, 18.5), 70.0, to_wrong=65, recovery=[{"reconstruction": 128}]),
        row("p30-int8-cpu", cpu, "onnxruntime-cpu", 0.760, 120, 9.0, (8.0, 9.6), 18.0, to_wrong=80),
        row("fp32", torch_cpu, "any", 0.800, 0, 60.0, (55.0, 70.0), 102.6),
    ])


def by(data, variant, backend="onnxruntime-cpu"):
    return next(r for r in data["results"] if r["variant"] == variant and r["backend"] == backend)


def test_intervals_match_their_methods():
    assert intervals.wilson(945, 1000) == pytest.approx((0.9291, 0.9575), abs=1e-4)
    low, high = intervals.paired_difference(1000, 800, 19, 17)  # p30's "+0.2" of the issue: 19 lost, 17 gained
    assert low < 0 < high and 0.8 < 100 * (high - low) / 2 < 1.5
    mean, ci = intervals.ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert mean == pytest.approx(2.0) and ci == pytest.approx((2.0, 2.0))
    assert intervals.ratio([1.0], [2.0]) == (0.5, None)
    with pytest.raises(ValueError):
        intervals.paired_difference(10, 5, 6, 0)  # more flipped to wrong than were right


def test_one_image_is_no_measurable_change_and_forty_are_a_change():
    fp32 = row("fp32", "onnxruntime-cpu", "any", 0.800, 0, 20.0, (19.5, 20.5), 100)
    one = row("int8-cpu", "onnxruntime-cpu", "onnxruntime-cpu", 0.799, 1, 10.0, (9.9, 10.1), 25, to_wrong=1)
    forty = row("p30", "onnxruntime-cpu", "any", 0.760, 40, 15.0, (14.9, 15.1), 70, to_wrong=40)
    d = assembled([fp32, one, forty], {"max_top1_drop": 10.0, "min_agreement": 0.9})
    assert render.change_cell(by(d, "int8-cpu")) == "no measurable change"
    assert by(d, "int8-cpu")["top1_delta_ci"][0] < 0 < by(d, "int8-cpu")["top1_delta_ci"][1]
    assert render.change_cell(by(d, "p30")).startswith("-4.00 (") and by(d, "p30")["top1_delta_ci"][1] < 0
    first = report.to_html(d).split("<h2>Every figure</h2>")[0]
    assert "no measurable change in top-1" in first


def test_a_speedup_inside_the_noise_goes_to_the_simpler_variant(data):
    """p30-int8-cpu is 0.2 ms faster than int8-cpu in p50 but their rounds overlap: a tie, and int8-cpu (one step
    from FP32, higher agreement) is recommended, saying why."""
    data["recipe"]["budget"] = {"max_top1_drop": 5.0, "min_agreement": None}
    rec = {r["backend"]: r for r in report.recommendations(data)}["onnxruntime-cpu"]
    assert rec["variant"] == "int8-cpu" and rec["tied_with"] == "p30-int8-cpu"
    assert any("p30-int8-cpu and int8-cpu differ by 0.20 ms" in w for w in report.spread_warnings(data))
    # the same p50s, but rounds that do not overlap: a real gain, and the faster variant is recommended
    fast = by(data, "p30-int8-cpu")
    fast["round_p50_ms"] = [x * 0.8 for x in by(data, "int8-cpu")["round_p50_ms"]]
    fast["latency_ms"]["p50"] = 0.8 * 9.2
    rec = {r["backend"]: r for r in report.recommendations(data)}["onnxruntime-cpu"]
    assert rec["variant"] == "p30-int8-cpu" and "tied_with" not in rec


def test_recommendation_within_the_budget_and_on_its_runtime(data):
    recs = {r["backend"]: r for r in data["recommendations"]}
    cpu = recs["onnxruntime-cpu"]
    # p30-int8-cpu is faster but 4 points down; int8 is within budget but not made for this runtime
    assert cpu["variant"] == "int8-cpu" and cpu["speedup"] == pytest.approx(25.9 / 9.2, rel=0.02)
    assert cpu["speedup_ci"][0] < cpu["speedup"] < cpu["speedup_ci"][1]
    assert cpu["smaller"] == pytest.approx(102.1 / 26.1, rel=1e-3) and cpu["top1_delta"] == 0.1
    assert recs["torch-cpu"]["variant"] == "fp32"


def test_the_default_budget_guards_agreement(data):
    data["recipe"]["budget"] = {"max_top1_drop": None, "min_agreement": None}  # none given: the default
    for r in data["results"]:  # every variant within one point of FP32: top-1 alone would not separate them
        r["top1"], r["top1_delta"] = 0.800, 0.0
    by(data, "int8-cpu")["round_p50_ms"] = [x * 1.5 for x in by(data, "int8-cpu")["round_p50_ms"]]
    by(data, "int8-cpu")["latency_ms"]["p50"] = 13.8  # now p30-int8-cpu is faster beyond the noise
    rec = {r["backend"]: r for r in report.recommendations(data)}["onnxruntime-cpu"]
    assert rec["variant"] == "int8-cpu" and "agreement at least 97.0%" in rec["budget"]  # 88% agreement is out


def test_off_target_rows_never_reach_the_front_or_the_first_screen(data):
    int8 = by(data, "int8")
    assert not int8["pareto"] and by(data, "int8-cpu")["pareto"]
    md = report.markdown(data)
    first, full = md.split("## Every figure")
    assert "| int8 |" not in first and "| int8 | onnxruntime-cpu | tensorrt (not its runtime) |" in full
    assert all(r["variant"] != "int8" for r in data["recommendations"])
    page = report.to_html(data).split("<h2>Every figure</h2>")[0]
    assert "<td>int8</td>" not in page


def test_a_tie_is_not_a_win_on_the_front():
    """Two on-target variants whose accuracy intervals overlap and whose rounds overlap: both stay on the front."""
    fp32 = row("fp32", "onnxruntime-cpu", "any", 0.800, 0, 20.0, (19.5, 20.5), 100)
    a = row("int8-cpu", "onnxruntime-cpu", "onnxruntime-cpu", 0.801, 20, 10.0, (9.5, 10.5), 25, to_wrong=9)
    b = row("p20-int8-cpu", "onnxruntime-cpu", "onnxruntime-cpu", 0.799, 24, 9.9, (9.4, 10.4), 20, to_wrong=13)
    d = assembled([fp32, a, b])
    assert by(d, "int8-cpu")["pareto"] and by(d, "p20-int8-cpu")["pareto"]


def test_pareto_and_budget_logic_without_intervals():
    from compress.report import mark_pareto, over_budget

    def r(name, top1, p50, backend="cpu"):
        return {"variant": name, "top1": top1, "latency_ms": {"p50": p50}, "backend": backend, "target": "any"}

    results = [r("fp32", 0.80, 50), r("int8", 0.79, 20), r("slow", 0.78, 60), r("same", 0.80, 50.0),
               r("gpu", 0.70, 100, "gpu")]
    mark_pareto(results)
    assert [x["pareto"] for x in results] == [True, True, False, True, True]
    data = {"results": [{"variant": "a", "top1_delta": -0.3, "backend": "cpu"},
                        {"variant": "b", "top1_delta": -1.2, "backend": "cpu"},
                        {"variant": "c", "top1_delta": 0.4, "backend": "cpu"}]}
    for r in data["results"]:
        r["agreement"] = 0.99
    data["results"][2]["agreement"] = 0.9
    assert over_budget(data, Budget(0.5)) == [("b", 1.2, 0.99)]
    assert np.isclose(over_budget(data, Budget(0.0))[0][1], 0.3)
    assert [name for name, _, _ in over_budget(data, Budget(0.5, min_agreement=0.95))] == ["b", "c"]
    assert [name for name, _, _ in over_budget(data, Budget(None, min_agreement=0.95))] == ["c"]
    data["results"].append({"variant": "b-mixed", "top1_delta": -0.2, "agreement": 0.99})
    for r in data["results"]:
        r["backend"] = "cpu"
    assert over_budget(data, Budget(0.5)) == []  # b's mixed sibling is within budget
    on_budget = {"variant": "d", "backend": "cpu", "top1_delta": 100 * (0.798 - 0.800), "agreement": 0.985}
    assert -on_budget["top1_delta"] > 0.2  # float arithmetic puts it a hair over
    assert over_budget({"results": [on_budget]}, Budget(0.2, 0.985)) == []  # exactly on budget is within


def test_over_budget_says_which_limit_with_its_sign():
    from compress.core.budget import Budget

    text = Budget(max_top1_drop=0.5, min_agreement=0.985).broken(-1.33, 0.973)
    assert text == "agreement 97.3% (limit 98.5%)"  # 1.33 points *above* FP32: only agreement is over
    assert Budget(max_top1_drop=0.5).broken(1.2, 0.99) == "top-1 -1.20 points against FP32 (limit -0.5)"


def _engines_only() -> dict:
    """Rows from `compress build --precisions int8` alone: no FP32 engine, no onnxruntime baseline."""
    backend = "tensorrt-h100-sm90-trt11-linux"
    results = [row("int8", backend, "tensorrt", 0.801, 20, 0.9, (0.88, 0.93), 26.0, engine="int8.engine"),
               row("p30-int8", backend, "tensorrt", 0.79, 60, 0.7, (0.69, 0.72), 19.0, engine="p30-int8.engine")]
    return assembled(results)


def test_tensorrt_rows_without_an_fp32_engine_report_without_a_speedup():
    d = _engines_only()
    assert all(r["speedup"] is None and r["top1_delta"] is None for r in d["results"])
    text = report.markdown(d)
    assert "no FP32 on this runtime to compare with" in text and "ship `" in text


def test_one_variant_only():
    d = assembled([row("fp32", "onnxruntime-cpu", "any", 0.8, 0, 20.0, (19.0, 21.0), 100)])
    assert d["recommendations"][0]["variant"] == "fp32" and by(d, "fp32")["pareto"]
    report.markdown(d), report.to_csv(d), report.to_html(d)


def test_compress_report_on_tensorrt_only_rows(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "variants").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": 1, "compress": "0.1.0"}))
    d = _engines_only()
    (run / "report.json").write_text(json.dumps(d))
    pytest.importorskip("matplotlib")
    assert main(["report", str(run)]) == 0
    assert "p30-int8" in (run / "report.md").read_text()


def test_csv_columns_are_the_result_fields(data):
    header = report.to_csv(data).splitlines()[0].split(",")
    assert header == csv_fields()
    assert {"p50_ms", "p50_low_ms", "top1_delta", "top1_delta_low", "speedup_high", "agreement_low"} <= set(header)


@pytest.mark.parametrize("name, render_", [("report.md", report.markdown), ("report.csv", report.to_csv)])
def test_golden(data, name, render_):
    text = render_(data)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):  # rewritten, never compared with itself: the next run compares
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"{name} rewritten: review the diff, then run the tests again")
    assert text == path.read_text(), f"{name} changed: review it, then UPDATE_GOLDEN=1 to accept"


def test_first_screen_of_the_html(data):
    page = report.to_html(data)
    first = page.split("<h2>Every figure</h2>")[0]
    assert "ship <code>int8-cpu</code>" in first and "2.8" in first and "95% interval" in first
    assert "<table class='summary'>" in first and first.count("<th>") == len(render.SUMMARY)
    assert "overflow-x:auto" in page  # the full table scrolls inside its box, never the page
