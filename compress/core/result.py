"""One variant measured on one backend: the record the report, the CSV and report.json share."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from compress.core.variant import parse_variant


@dataclass(frozen=True)
class Result:
    """One variant measured on one backend: what the report shows, the CSV lists and report.json stores.

    Rates are fractions (top1 0.8 = 80%); latencies in ms at batch 1 over all timed runs, with the spread of the
    per-round medians (interleaved rounds: see `backends.latency`). Derived fields (deltas against FP32, speedup,
    Pareto) are filled by `report.derive`.
    """

    variant: str
    backend: str
    precision: str  # the arithmetic: fp32, fp16, int8
    target: str  # the runtime the file is made for ("any" for float files)
    accuracy_method: str
    latency_method: str
    latency_ms: dict  # p50, p90, p99
    images: int | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    flips: int | None = None
    flips_to_wrong: int | None = None
    flips_to_right: int | None = None
    latency_spread_ms: list | None = None  # [lowest, highest] p50 across rounds
    round_p50_ms: list | None = None  # each round's median, in round order: the speedup's paired ratios
    rounds: int | None = None
    timed_runs: int | None = None  # batch-1 runs behind the percentiles, over all rounds
    batch_size: int = 1
    throughput_ips: float | None = None
    throughput_batch: int | None = None
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    threads: int | None = None
    file_bytes: int | None = None
    onnx: str | None = None
    parent: str | None = None
    params: int | None = None
    macs: int | None = None
    recovery: list | None = None
    sparsity: str | None = None
    engine: str | None = None
    build: dict = field(default_factory=dict)  # how the variant was made (parity, quantization, pruning)
    fallback: dict | None = None
    extra: dict = field(default_factory=dict)  # backend-specific: CUDA-graph latency, copies, engine memory
    # derived against FP32 (report.derive); intervals are 95% (report.intervals)
    top1_delta: float | None = None
    top1_delta_ci: list | None = None  # points, paired (Newcombe)
    agreement_ci: list | None = None  # fraction (Wilson)
    speedup: float | None = None  # geometric mean of per-round paired ratios (pooled p50s without rounds)
    speedup_ci: list | None = None  # Student's t on the log ratios
    size_ratio: float | None = None
    pareto: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        """A result read from report.json (untrusted): known fields only, names and types checked."""
        if not isinstance(d, dict):
            raise ValueError("a result is not an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        missing = [k for k, f in known.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and k not in values]
        if missing:
            raise ValueError(f"a result lacks {', '.join(missing)}")
        parse_variant(values["variant"])
        for key in ("backend", "precision", "target", "accuracy_method", "latency_method"):
            if not isinstance(values[key], str):
                raise ValueError(f"result field {key} is not text")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,80}", values["backend"]):
            raise ValueError(f"result backend {values['backend'][:40]!r} is not a backend name")
        lat = values["latency_ms"]
        if not (isinstance(lat, dict) and all(isinstance(lat.get(p), (int, float)) for p in ("p50", "p90", "p99"))):
            raise ValueError("result latency_ms needs p50, p90 and p99")
        for key in ("top1", "top5", "agreement"):
            if values.get(key) is not None and not (isinstance(values[key], (int, float)) and 0 <= values[key] <= 1):
                raise ValueError(f"result {key} is not a fraction")
        return cls(**values)


CSV_SKIP = ("accuracy_method", "latency_method", "build", "fallback", "extra", "recovery", "latency_ms",
            "latency_spread_ms", "round_p50_ms", "top1_delta_ci", "agreement_ci", "speedup_ci")
CSV_INTERVALS = ("top1_delta", "agreement", "speedup")  # each followed by its _low and _high column


def csv_fields() -> list[str]:
    """The CSV columns: every scalar field of `Result`, latencies flattened."""
    names = [f.name for f in dataclasses.fields(Result) if f.name not in CSV_SKIP]
    at = names.index("batch_size")
    names = names[:at] + ["p50_ms", "p90_ms", "p99_ms", "p50_low_ms", "p50_high_ms"] + names[at:]
    for name in CSV_INTERVALS:
        at = names.index(name) + 1
        names[at:at] = [f"{name}_low", f"{name}_high"]
    return names
