"""Activation statistics for INT8 calibration: collected once per (model, image set) and shared by every format
that quantizes that model, in bounded memory.

onnxruntime's calibrators keep every intermediate output of every image of a collection call before they
histogram it (gigabytes for ResNet-50), and each `quantize_static` call runs its own pass. Here the FP32 model
runs once over the images, a few at a time, with every tensor a format wants as an extra output; each batch is
folded into per-tensor statistics and dropped:

- min and max (the `minmax` method);
- a histogram of x over [-T, T] with fixed-width bins, widened as larger values arrive: folded at 0 it is the
  histogram of |x| (symmetric percentile, the TensorRT format); as it is, asymmetric percentile (the
  onnxruntime CPU format).

The ranges are then computed by onnxruntime's own code (`HistogramCollector`) from these histograms, which
have the layout its collector builds, and handed to `quantize_static` as a calibration cache.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from compress.errors import UserError

BINS = 2048  # onnxruntime's default for the percentile method: bins of |x| over [0, T]
_CHUNK = 1 << 20  # elements folded at a time: the temporaries stay in cache


@dataclass
class Statistics:
    """Per tensor: min, max, and a histogram of x with 2 * BINS bins over [-T, T], widened on both sides (by
    whole bins) when larger values arrive. Folding it at 0 gives the histogram of |x| with BINS bins over
    [0, T] that symmetric percentile calibration reads; as it is, x over [-T, T] for asymmetric percentile.
    Either is merged into onnxruntime's layout for all the data at once (BINS bins over the final range) before
    its collector computes the percentile. The first batch sets the bin width, so the order of the images can
    still move a range by up to one of those bins (benchmarks/results/calibration-subsets.md)."""

    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    edge: dict[str, float] = field(default_factory=dict)  # T
    images: int = 0

    def add(self, name: str, x: np.ndarray) -> None:
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"the model computes non-finite values ({name}) on calibration images",
                            "check the checkpoint: its weights or BatchNorm statistics may be broken")
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))
        amax = max(abs(lo), abs(hi))
        edge = self.edge.get(name, amax if amax > 0 else 1e-12)
        hist = self.hist.get(name, np.zeros(2 * BINS, np.int64))
        stride = 2 * edge / len(hist)
        grow = max(0, int(np.ceil((amax - edge) / stride)))
        if grow:
            hist = np.concatenate([np.zeros(grow, np.int64), hist, np.zeros(grow, np.int64)])
            edge += grow * stride
        n, scale = len(hist), np.float32(len(hist) / (2 * edge))
        buf = np.empty(min(_CHUNK, x.size), np.float32)
        for i in range(0, x.size, _CHUNK):  # bin index = floor((x + T) / stride); x == T lands in bin n
            part = x[i : i + _CHUNK]
            b = buf[: part.size]
            np.add(part, np.float32(edge), out=b)
            np.multiply(b, scale, out=b)
            counts = np.bincount(b.astype(np.int32), minlength=n + 1)
            counts[n - 1] += counts[n:].sum()  # the last edge is inclusive, as in np.histogram
            hist += counts[:n]
        self.hist[name], self.edge[name] = hist, edge

    def relu(self, name: str, source: str) -> None:
        """Statistics of relu(source) from those of source: the negative mass moves to the bin holding 0."""
        hist = self.hist[source].copy()
        half = len(hist) // 2  # bins [0, half) hold x < 0; bin `half` starts at 0
        hist[half] += hist[:half].sum()
        hist[:half] = 0
        self.hist[name], self.edge[name] = hist, self.edge[source]
        self.lo[name], self.hi[name] = max(self.lo[source], 0.0), max(self.hi[source], 0.0)

    # -- ranges -------------------------------------------------------------------------------------------
    def ranges(self, method: str, symmetric: bool, tensors: list[str], percentile: float = 99.999):
        """onnxruntime `TensorsData` for `tensors` by `method` (minmax or percentile)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

        if method == "minmax":
            pairs = {}
            for t in tensors:
                lo, hi = np.float32(self.lo[t]), np.float32(self.hi[t])
                m = max(abs(lo), abs(hi))
                pairs[t] = (-m, m) if symmetric else (lo, hi)
            return TensorsData(CalibrationMethod.MinMax, pairs)
        if method != "percentile":
            raise ValueError(f"shared statistics serve minmax and percentile, not {method!r}")
        collector = HistogramCollector("percentile", symmetric, BINS, 128, percentile, "same")
        for t in tensors:
            lo, hi = np.float32(self.lo[t]), np.float32(self.hi[t])
            hist, edge = self.hist[t], self.edge[t]
            if symmetric:  # |x|: fold at 0
                half = len(hist) // 2
                hist, lo_edge = hist[half:] + hist[:half][::-1], 0.0
            else:
                lo_edge = -edge
            # onnxruntime's layout for all the data at once: BINS bins over the final range (merged from ours)
            merge = -(-len(hist) // BINS)
            hist = np.pad(hist, (0, merge * BINS - len(hist))).reshape(BINS, merge).sum(axis=1)
            top = lo_edge + (merge * BINS) * (2 * edge / len(self.hist[t]))
            edges = np.linspace(lo_edge, top, BINS + 1).astype(np.float32)
            extra = () if symmetric else (np.float32(edge),)
            collector.histogram_dict[t] = (hist, edges, lo, hi, *extra)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the collector prints its progress
            return TensorsData(CalibrationMethod.Percentile, collector.compute_collection_result())

    # -- storage ------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        from compress.store import atomic_path

        names = sorted(self.hist)
        arrays = {"images": np.asarray(self.images), "names": np.asarray(names, str),
                  "lo": np.asarray([self.lo[n] for n in names], np.float64),
                  "hi": np.asarray([self.hi[n] for n in names], np.float64),
                  "edge": np.asarray([self.edge[n] for n in names], np.float64),
                  **{f"hist{i}": self.hist[n] for i, n in enumerate(names)}}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> Statistics:
        with np.load(path, allow_pickle=False) as z:
            names = z["names"].tolist()
            return cls(dict(zip(names, z["lo"].tolist())), dict(zip(names, z["hi"].tolist())),
                       {n: z[f"hist{i}"] for i, n in enumerate(names)}, dict(zip(names, z["edge"].tolist())),
                       int(z["images"]))


def collect(fp32_onnx, images, preprocess, tensors: set[str], batch_size: int = 1,
            progress: str | None = "calibrate") -> Statistics:
    """Run the FP32 model over `images` once, `batch_size` at a time, folding every wanted tensor into the
    statistics: memory holds one batch's activations, whatever the number of images."""
    import onnx
    import onnxruntime as ort
    from tqdm import tqdm

    wanted = set(tensors)
    proto = onnx.load(str(fp32_onnx))
    # A Relu's output is its input with the negatives at 0: its statistics follow from the input's, exactly but
    # for the bin layout, at no cost (ResNet-50: 49 of 123 tensors).
    relu = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Relu" and n.input[0] in wanted
            and n.output[0] in wanted}
    present = {o.name for o in proto.graph.output}
    for name in sorted(wanted - set(relu) - present):
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor stays observable
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = sorted(wanted - set(relu))
    stats = Statistics()
    with tqdm(total=len(images), desc=progress, unit="img", file=sys.stderr, leave=False,
              disable=progress is None) as bar:
        for batch, _ in images.batches(preprocess, batch_size):
            for name, out in zip(names, session.run(names, {session.get_inputs()[0].name: batch})):
                stats.add(name, out)
            stats.images += len(batch)
            bar.update(len(batch))
    for out, x in relu.items():
        stats.relu(out, x)
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
