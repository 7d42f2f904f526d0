"""Shared, streamed calibration statistics: the same ranges as onnxruntime's calibrator, one pass for two formats."""

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from conftest import TINY, images  # noqa: E402

from calibration import ranges  # noqa: E402
from compress.errors import UserError  # noqa: E402
from compress.quantize import quantize  # noqa: E402


def ort_percentile(batches, symmetric: bool, percentile: float = 99.999) -> tuple[float, float]:
    """onnxruntime's own collector, fed everything at once."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    c = HistogramCollector("percentile", symmetric, ranges.BINS, 128, percentile, "same")
    c.collect({"t": [np.concatenate(batches)]})
    lo, hi, *_ = c.compute_collection_result()["t"]
    return float(lo), float(hi)


def test_streamed_batches_give_onnxruntimes_ranges():
    rng = np.random.default_rng(0)
    # later batches reach further out: the histogram must widen without losing what it holds
    batches = [rng.standard_normal(200_000).astype(np.float32) * s + o for s, o in ((1, 0), (3, 1), (0.5, -2))]
    stats = ranges.Statistics()
    for b in batches:
        stats.add("t", b)
    every = np.concatenate(batches)
    assert stats.lo["t"] == every.min() and stats.hi["t"] == every.max()
    assert int(stats.hist["t"].sum()) == every.size
    for symmetric in (True, False):
        got = stats.ranges("percentile", symmetric, ["t"])["t"].range_value
        want = ort_percentile(batches, symmetric)
        width = 2 * stats.edge["t"] / ranges.BINS  # one bin of the coarser layout
        np.testing.assert_allclose([float(got[0]), float(got[1])], want, atol=width)
    lo, hi = stats.ranges("minmax", True, ["t"])["t"].range_value
    assert -float(lo) == float(hi) == max(-every.min(), every.max())


def test_non_finite_activations_are_a_clear_error():
    stats = ranges.Statistics()
    with pytest.raises(UserError, match="non-finite"):
        stats.add("t", np.array([1.0, np.nan], np.float32))


def test_one_pass_serves_both_formats_and_survives_a_round_trip(tiny_onnx, data_dirs, tmp_path):
    from compress.backends import onnxruntime as ort

    calib = images(data_dirs["calib"], 32)
    proto = onnx.load(str(tiny_onnx))
    tensors = ranges.tensors_to_calibrate(proto, None)
    assert ranges.tensors_to_calibrate(proto, ("Conv", "Gemm", "MatMul", "Add")) <= tensors
    stats = ranges.collect(tiny_onnx, calib, TINY, tensors, progress=None)
    assert stats.images == 32
    stats.save(tmp_path / "s.npz")
    again = ranges.Statistics.load(tmp_path / "s.npz")
    assert again.lo == stats.lo and all(np.array_equal(again.hist[k], stats.hist[k]) for k in stats.hist)
    ev = images(data_dirs["eval"])
    reference = ort.logits(tiny_onnx, ev, TINY, as_written=False).argmax(1)
    for fmt in ("int8", "int8-cpu"):
        shared, own = tmp_path / f"{fmt}-shared.onnx", tmp_path / f"{fmt}-own.onnx"
        assert quantize(tiny_onnx, shared, calib, TINY, fmt, statistics=again, bias_correction=0)["shared_statistics"]
        assert not quantize(tiny_onnx, own, calib, TINY, fmt, bias_correction=0)["shared_statistics"]
        a, b = onnx.load(str(shared)), onnx.load(str(own))
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]  # same placement
        written = fmt == "int8"
        agree = [(ort.logits(p, ev, TINY, as_written=written).argmax(1) == reference).mean() for p in (shared, own)]
        assert agree[0] >= agree[1] - 0.05 and agree[0] >= 0.9
