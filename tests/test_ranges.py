"""Shared, streamed calibration statistics: the same ranges as onnxruntime's calibrator, one pass for two formats."""

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from conftest import TINY, images  # noqa: E402

from compress.core.errors import UserError  # noqa: E402
from compress.quantize import ranges
from compress.quantize.ptq import PTQConfig, quantize  # noqa: E402


def ort_percentile(calls, symmetric: bool, percentile: float = 99.999) -> tuple[float, float]:
    """onnxruntime's own collector, fed one collection call at a time."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    c = HistogramCollector("percentile", symmetric, ranges.BINS, 128, percentile, "same")
    for call in calls:
        c.collect({"t": [call]})
    lo, hi, *_ = c.compute_collection_result()["t"]
    return float(lo), float(hi)


def streamed(images) -> ranges.Statistics:
    stats = ranges.Statistics()
    for i, x in enumerate(images, 1):
        stats.add("t", x)
        if i % ranges.CALL == 0:
            stats.fold()
    stats.fold()
    return stats


def synthetic(shape: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n = ranges.CALL * 3 + 5
    scale = np.linspace(3, 0.5, n) if shape == "shrinking" else np.linspace(1, 4, n)
    images = [(rng.standard_t(4, 3000) * s + 0.3).astype(np.float32) for s in scale]
    if shape == "relu":  # exact zeros, about half of the values
        images = [np.maximum(x, 0) for x in images]
    if shape == "tiny":  # later images reach below the first call's min |x|: the |x| histogram drops them
        images = [np.where(np.abs(x) < 0.05, x * (1e-6 if i > ranges.CALL else 1.0), x).astype(np.float32)
                  for i, x in enumerate(images)]
    return images


@pytest.mark.parametrize("shape", ["widening", "relu", "shrinking", "tiny"])
def test_streamed_images_give_onnxruntimes_ranges_exactly(shape):
    """Image by image, binning only the tails, the ranges equal onnxruntime's collector fed `CALL` images per
    call, though later images reach further out (the bins grow), lie inside, or fall below the first bin."""
    images = synthetic(shape)
    stats = streamed(images)
    every = np.concatenate(images)
    assert stats.lo["t"] == every.min() and stats.hi["t"] == every.max()
    assert 0 < stats.counted["signed", "t"] < every.size  # most values were counted, not binned
    assert int(stats.counts["signed", "t"].sum()) + stats.counted["signed", "t"] == every.size
    calls = [np.concatenate(images[i : i + ranges.CALL]) for i in range(0, len(images), ranges.CALL)]
    for symmetric in (True, False):
        for percentile in (99.999, 99.9):
            got = stats.ranges("percentile", symmetric, ["t"], percentile)["t"].range_value
            assert (float(got[0]), float(got[1])) == ort_percentile(calls, symmetric, percentile)
    lo, hi = stats.ranges("minmax", True, ["t"])["t"].range_value
    assert -float(lo) == float(hi) == max(-every.min(), every.max())


def test_a_range_among_the_counted_values_is_refused():
    """A first image far wider than the rest puts every later value in its middle, where values are only counted
    (and its own tail is too short to hold the range): the range is not guessed."""
    rng = np.random.default_rng(2)
    images = [rng.standard_normal(100).astype(np.float32) * 50]
    images += [rng.standard_normal(3000).astype(np.float32) for _ in range(ranges.CALL * 4)]
    stats = streamed(images)
    with pytest.raises(ranges.Unsettled):
        stats.ranges("percentile", True, ["t"])


def test_counts_are_numpys_histogram():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000).astype(np.float32)
    edges = np.hstack([np.linspace(-1, 1, 65, dtype=np.float32), np.arange(1.03125, 3, 0.03125, dtype=np.float32)])
    edges = edges.astype(np.float32)
    np.testing.assert_array_equal(ranges.count(x, edges), np.histogram(x, edges)[0])
    on_edges = edges[::3].copy()  # values exactly on an edge go to the bin it opens; the last edge is closed
    np.testing.assert_array_equal(ranges.count(on_edges, edges), np.histogram(on_edges, edges)[0])


def test_non_finite_activations_are_a_clear_error():
    stats = ranges.Statistics()
    with pytest.raises(UserError, match="non-finite"):
        stats.add("t", np.array([1.0, np.nan], np.float32))


def test_one_pass_serves_both_formats_and_survives_a_round_trip(tiny_onnx, data_dirs, tmp_path):
    from compress.core import session as ort

    calib = images(data_dirs["calib"], 32)
    proto = onnx.load(str(tiny_onnx))
    tensors = ranges.tensors_to_calibrate(proto, None)
    assert ranges.tensors_to_calibrate(proto, ("Conv", "Gemm", "MatMul", "Add")) <= tensors
    stats = ranges.collect(tiny_onnx, calib, TINY, tensors, progress=None)
    assert stats.images == 32
    stats.save(tmp_path / "s.npz")
    again = ranges.Statistics.load(tmp_path / "s.npz")
    assert again.lo == stats.lo and again.middle == stats.middle and again.counted == stats.counted
    assert again.span == stats.span and again.edges.keys() == stats.edges.keys()
    assert all(np.array_equal(again.counts[k], stats.counts[k]) and np.array_equal(again.edges[k], stats.edges[k])
               for k in stats.edges)
    ev = images(data_dirs["eval"])
    reference = ort.logits(tiny_onnx, ev, TINY, as_written=False).argmax(1)
    for fmt in ("int8", "int8-cpu"):
        shared, own = tmp_path / f"{fmt}-shared.onnx", tmp_path / f"{fmt}-own.onnx"
        facts = quantize(tiny_onnx, shared, calib, TINY, fmt, PTQConfig(bias_correction=0), statistics=again)
        assert facts["shared_statistics"]
        assert not quantize(tiny_onnx, own, calib, TINY, fmt, PTQConfig(bias_correction=0))["shared_statistics"]
        a, b = onnx.load(str(shared)), onnx.load(str(own))
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]  # same placement
        written = fmt == "int8"
        agree = [(ort.logits(p, ev, TINY, as_written=written).argmax(1) == reference).mean() for p in (shared, own)]
        assert agree[0] >= agree[1] - 0.05 and agree[0] >= 0.9


def test_the_quantizer_calibrates_on_its_own_when_a_range_is_unsettled(tiny_onnx, data_dirs, tmp_path, monkeypatch,
                                                                        capsys):
    calib = images(data_dirs["calib"], 16)
    stats = ranges.collect(tiny_onnx, calib, TINY, ranges.tensors_to_calibrate(onnx.load(str(tiny_onnx)), None),
                           progress=None)

    def unsettled(*args):
        raise ranges.Unsettled("the absolute percentile range of 'x' falls where values were only counted")

    monkeypatch.setattr(stats, "histogram", unsettled)
    record = quantize(tiny_onnx, tmp_path / "q.onnx", calib, TINY, "int8", PTQConfig(bias_correction=0),
                      statistics=stats)
    assert not record["shared_statistics"]
    assert "calibrating with onnxruntime's own pass" in capsys.readouterr().err
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
