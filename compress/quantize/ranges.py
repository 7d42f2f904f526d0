"""Activation statistics for INT8 calibration: collected once per (model, image set) and shared by every format
that quantizes that model, in bounded memory, giving onnxruntime's own percentile ranges.

onnxruntime's calibrators keep every intermediate output of every image of a collection call before they
histogram it (gigabytes for ResNet-50), and each `quantize_static` call runs its own pass. Here the FP32 model
runs once over the images, one at a time, with every tensor a format wants as an extra output, and each image is
folded into per-tensor statistics and dropped:

- min and max (the `minmax` method);
- two histograms with the layout onnxruntime's `HistogramCollector` builds when fed `CALL` images per collection
  call (`quantize_static` with 8 batches of 8 per stride): `absolute`, of |x| (symmetric percentile, the
  TensorRT format): BINS bins over the first call's [min |x|, max |x|], then more bins of the same width as
  larger values arrive; `signed`, of x (asymmetric percentile, the onnxruntime CPU format): BINS bins over the
  first call's [-T, T], then widened on both sides by whole bins.

A percentile range only reads the tails of a histogram, so only the tails are binned: the first image of each
tensor fixes a middle [L, H) holding about 99% of its values, and the values inside it (but exact zeros, which
ReLU outputs are full of) are only counted, with the bins they can fall in. The tails, the zeros and the counts
are exact, so the cumulative counts are exact outside those bins; a range is read only where it is settled
wherever the middle's values lie (`Unsettled` otherwise, and the quantizer calibrates on its own). Counting
instead of binning makes the pass about 10x cheaper than binning every value.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from compress.core.errors import UserError
from compress.core.store import atomic_path

BINS = 2048  # onnxruntime's default for the percentile method
CALL = 64  # images per onnxruntime collection call that these statistics reproduce: the bins follow calls
MIDDLE = 0.99  # share of the first image's values a tensor's middle holds (counted, not binned)
LAYOUTS = ("absolute", "signed")  # |x| for symmetric ranges, x for asymmetric ones
_CHUNK = 1 << 18  # values binned at a time: the temporaries stay in cache


class Unsettled(ValueError):
    """A range falls in bins where values were only counted (a first image far from the rest)."""


def count(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`np.histogram(values, bins=edges)[0]` for nearly uniform edges, at the cost of the uniform case: bin i holds
    edges[i] <= v < edges[i + 1] (the last bin is closed), values outside are dropped. The index is estimated from
    the width and corrected against the edges themselves, as numpy does for uniform bins."""
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    scale = np.float32(n / (float(hi) - float(lo)))
    out = np.zeros(n, np.int64)
    for i in range(0, values.size, _CHUNK):
        v = values[i : i + _CHUNK]
        if v.min() < lo or v.max() > hi:
            v = v[(v >= lo) & (v <= hi)]
            if not v.size:
                continue
        idx = ((v - lo) * scale).astype(np.intp)
        np.clip(idx, 0, n - 1, out=idx)
        idx -= v < edges[idx]
        idx += (v >= edges[idx + 1]) & (idx != n - 1)
        out += np.bincount(idx, minlength=n)
    return out


def _bin(edges: np.ndarray, v) -> int:
    """The bin `count` puts a value in (clipped to the bins)."""
    return int(np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2))


def _uniform(lo, hi, bins: int = BINS) -> np.ndarray:
    """The edges np.histogram makes for `bins` bins of float32 data over [lo, hi] given as float32 (numpy then
    spaces them in float32 arithmetic)."""
    return np.histogram_bin_edges(np.zeros(0, np.float32), bins, range=(np.float32(lo), np.float32(hi)))


@dataclass
class _Call:
    """One tensor's values over one collection call: what the histograms need of them."""

    lo: np.float32
    hi: np.float32
    min_abs: np.float32
    size: int = 0
    zeros: int = 0  # exact zeros inside the middle
    dropped: int = 0  # values inside the middle below the |x| histogram's first edge (which drops them)
    tails: list = field(default_factory=list)


def _middle(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """[L, H): about MIDDLE of x's values, its tails cut where both layouts' tails start."""
    cut = (1 - MIDDLE) / 2
    low, high = np.quantile(x, [cut, 1 - cut])
    reach = np.quantile(np.abs(x), MIDDLE)  # |x| beyond it is the absolute layout's tail
    return np.float32(max(low, -reach)), np.float32(min(high, reach))


@dataclass
class Statistics:
    """Per tensor: min and max (float32, as onnxruntime keeps them), its middle, and per layout the bin counts and
    edges (onnxruntime's `histogram_dict` entries, less the middle's values), how many of the middle's values
    were counted instead, and the bins they span."""

    lo: dict[str, np.float32] = field(default_factory=dict)
    hi: dict[str, np.float32] = field(default_factory=dict)
    middle: dict[str, tuple[np.float32, np.float32]] = field(default_factory=dict)
    counts: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (layout, tensor) -> counts
    edges: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    counted: dict[tuple[str, str], int] = field(default_factory=dict)
    span: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # first and last bin they can be in
    images: int = 0
    _calls: dict[str, _Call] = field(default_factory=dict, repr=False)

    def add(self, name: str, x: np.ndarray) -> None:
        """One image's values of a tensor (`fold` ends each collection call)."""
        x = x.ravel()
        lo, hi = x.min(), x.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"the model computes non-finite values ({name}) on calibration images",
                            "check the checkpoint: its weights or BatchNorm statistics may be broken")
        if name not in self.middle:
            self.middle[name] = _middle(x)
        low, high = self.middle[name]
        first = name not in self.lo  # still in the first call, which lays out the bins
        c = self._calls.get(name)
        min_abs = np.abs(x).min() if first else np.float32(0)
        if c is None:
            c = self._calls[name] = _Call(lo, hi, min_abs)
        else:
            c.lo, c.hi, c.min_abs = min(c.lo, lo), max(c.hi, hi), min(c.min_abs, min_abs)
        c.size += x.size
        c.tails.append(x[(x < low) | (x >= high)])
        if low <= 0 < high:
            c.zeros += int(np.count_nonzero(x == 0))
        e0 = None if first else self.edges["absolute", name][0]
        if e0 and low < e0 and high > -e0:  # the middle's values with |x| < e0 (zeros too) fall below the bins
            inside = (x >= low) if low > -e0 else (x > -e0)
            c.dropped += int(np.count_nonzero(inside & (x < min(e0, high))))

    def fold(self) -> None:
        """End a collection call: widen the bins to its values and bin its tails, as onnxruntime's collector does."""
        for name, c in self._calls.items():
            tail = np.concatenate(c.tails)
            middle = c.size - tail.size
            if name in self.lo:
                self.lo[name], self.hi[name] = min(self.lo[name], c.lo), max(self.hi[name], c.hi)
            else:
                self.lo[name], self.hi[name] = c.lo, c.hi
            low, high = self.middle[name]
            amax = np.float32(max(abs(c.lo), abs(c.hi)))

            key = ("absolute", name)  # collect_absolute_value
            if key not in self.edges:
                self._start(key, _uniform(c.min_abs, amax))
            elif amax > self.edges[key][-1]:  # more bins of the same width (np.arange may add one extra)
                edges = self.edges[key]
                width = edges[1] - edges[0]
                edges = np.hstack((edges, np.arange(edges[-1] + width, amax + width, width))).astype(np.float32)
                self.counts[key] = np.pad(self.counts[key], (0, len(edges) - 1 - len(self.counts[key])))
                self.edges[key] = edges
            edges = self.edges[key]
            self.counts[key] += count(np.abs(tail), edges)
            if edges[0] == 0:
                self.counts[key][0] += c.zeros
            self._count(key, middle - (c.zeros if edges[0] == 0 else c.dropped), 0,
                        _bin(edges, max(abs(low), abs(high))))

            key = ("signed", name)  # collect_value, merge_histogram
            if key not in self.edges:
                self._start(key, _uniform(-amax, amax))
            elif amax > self.edges[key][-1]:  # widen both sides by whole bins of the old width
                counts, t = self.counts[key], self.edges[key][-1]
                n = len(counts)
                if t == 0:
                    self.edges[key] = _uniform(-amax, amax, n)
                else:
                    stride = 2 * t / n
                    half = int((amax - t) // stride + 1)
                    self.edges[key] = _uniform(-(half * stride + t), half * stride + t, n + 2 * half)
                    self.counts[key] = np.pad(counts, half)
                    if key in self.span:
                        self.span[key] = (self.span[key][0] + half, self.span[key][1] + half)
            edges = self.edges[key]
            self.counts[key] += count(tail, edges)
            if c.zeros:
                self.counts[key][_bin(edges, 0)] += c.zeros
            self._count(key, middle - c.zeros, _bin(edges, low), _bin(edges, high))
        self._calls.clear()

    def _start(self, key, edges) -> None:
        self.edges[key], self.counts[key], self.counted[key] = edges, np.zeros(len(edges) - 1, np.int64), 0

    def _count(self, key, n: int, first: int, last: int) -> None:
        if n:
            self.counted[key] += n
            a, b = self.span.get(key, (first, last))
            self.span[key] = (min(a, first), max(b, last))

    # -- ranges -------------------------------------------------------------------------------------------
    def histogram(self, layout: str, name: str, targets: list[float]) -> np.ndarray:
        """The counts with the middle's values put back, once the cumulative share reaches each target in the same
        bin wherever in their span they lie; `Unsettled` otherwise."""
        key = (layout, name)
        if key not in self.counts:
            raise ValueError(f"no {layout} histogram of {name!r} was collected")
        counts, n = self.counts[key], self.counted[key]
        if not n:
            return counts
        def placed(at: int) -> np.ndarray:
            h = counts.copy()
            h[at] += n
            return h

        def reached(h: np.ndarray) -> list[int]:
            cdf = np.cumsum(h / h.sum())  # as onnxruntime's compute_percentile
            return [int(np.searchsorted(cdf, p)) for p in targets]

        first, last = (placed(at) for at in self.span[key])  # all in the span's first bin, or all in its last
        if reached(first) != reached(last):
            raise Unsettled(f"the {layout} percentile range of {name!r} falls where values were only counted")
        return first

    def ranges(self, method: str, symmetric: bool, tensors: list[str], percentile: float = 99.999):
        """onnxruntime `TensorsData` for `tensors` by `method` (minmax or percentile)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

        if method == "minmax":
            pairs = {}
            for t in tensors:
                lo, hi = self.lo[t], self.hi[t]
                m = max(abs(lo), abs(hi))
                pairs[t] = (-m, m) if symmetric else (lo, hi)
            return TensorsData(CalibrationMethod.MinMax, pairs)
        if method != "percentile":
            raise ValueError(f"shared statistics serve minmax and percentile, not {method!r}")
        layout = "absolute" if symmetric else "signed"
        cut = (100.0 - percentile) / 200.0
        targets = [percentile / 100.0] if symmetric else [cut, 1.0 - cut]
        collector = HistogramCollector("percentile", symmetric, BINS, 128, percentile, "same")
        for t in tensors:
            edges = self.edges[layout, t]
            extra = () if symmetric else (edges[-1],)
            collector.histogram_dict[t] = (self.histogram(layout, t, targets), edges, self.lo[t], self.hi[t], *extra)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the collector prints its progress
            return TensorsData(CalibrationMethod.Percentile, collector.compute_collection_result())

    # -- storage ------------------------------------------------------------------------------------------
    def save(self, path) -> None:

        names, keys = sorted(self.lo), sorted(self.edges)
        arrays = {"images": np.asarray(self.images), "names": np.asarray(names, str),
                  "lo": np.asarray([self.lo[n] for n in names], np.float32),
                  "hi": np.asarray([self.hi[n] for n in names], np.float32),
                  "middle": np.asarray([self.middle[n] for n in names], np.float32).reshape(-1, 2),
                  "keys": np.asarray([f"{layout}:{n}" for layout, n in keys], str),
                  "counted": np.asarray([self.counted[k] for k in keys], np.int64),
                  "span": np.asarray([self.span.get(k, (0, 0)) for k in keys], np.int64).reshape(-1, 2),
                  **{f"counts{i}": self.counts[k] for i, k in enumerate(keys)},
                  **{f"edges{i}": self.edges[k] for i, k in enumerate(keys)}}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> Statistics:
        with np.load(path, allow_pickle=False) as z:
            names = z["names"].tolist()
            keys = [tuple(k.split(":", 1)) for k in z["keys"].tolist()]
            return cls(dict(zip(names, z["lo"])), dict(zip(names, z["hi"])),
                       {n: (lo, hi) for n, (lo, hi) in zip(names, z["middle"])},
                       {k: z[f"counts{i}"] for i, k in enumerate(keys)},
                       {k: z[f"edges{i}"] for i, k in enumerate(keys)},
                       dict(zip(keys, z["counted"].tolist())),
                       {k: (int(a), int(b)) for k, (a, b) in zip(keys, z["span"])}, int(z["images"]))


def collect(fp32_onnx, images, preprocess, tensors: set[str], progress: str | None = "calibrate") -> Statistics:
    """Run the FP32 model over `images` one at a time, folding every wanted tensor into the statistics: memory
    holds one image's activations and one call's tails, whatever the number of images."""
    import onnx
    import onnxruntime as ort
    from tqdm import tqdm

    proto = onnx.load(str(fp32_onnx))
    present = {o.name for o in proto.graph.output}
    for name in sorted(set(tensors) - present):
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's calibrator
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names, feed = sorted(tensors), session.get_inputs()[0].name
    stats = Statistics()
    with tqdm(total=len(images), desc=progress, unit="img", file=sys.stderr, leave=False,
              disable=progress is None) as bar:
        for batch, _ in images.batches(preprocess, 1):  # bit for bit what a batch gives, and fastest here
            for name, out in zip(names, session.run(names, {feed: batch})):
                stats.add(name, out)
            stats.images += 1
            if stats.images % CALL == 0:
                stats.fold()
            bar.update(1)
    stats.fold()
    return stats


def tensors_to_calibrate(proto, op_types: tuple[str, ...] | None) -> set[str]:
    """The float activations onnxruntime calibrates for these op types (None: every op it can quantize): the
    inputs and outputs of those nodes that are neither initializers nor integer tensors."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    types = set(op_types) if op_types else set(QLinearOpsRegistry) | set(QDQRegistry)
    inferred = onnx.shape_inference.infer_shapes(proto)
    floats = {v.name for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
              if v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    inits = {i.name for i in proto.graph.initializer}
    return {t for n in proto.graph.node if n.op_type in types for t in (*n.input, *n.output)
            if t and t in floats and t not in inits}
