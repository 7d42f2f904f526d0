"""The measure stage: every variant on every usable backend `compress run` measures, accuracy in this process
and latency in interleaved rounds of fresh processes, each reduced to one `Result` row."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from compress import __version__, backends
from compress.core.errors import UserError, log
from compress.core.metrics import accuracy as figures
from compress.core.metrics import top5
from compress.core.result import Result
from compress.core.stage import stage
from compress.core.store import read_json, write_json
from compress.core.variant import Variant
from compress.run.context import Context

BASELINE = "onnxruntime-cpu"  # the backend whose FP32 predictions every row's agreement is counted against


def measure_all(ctx: Context, variants: list[Variant]) -> list[Result]:
    """Every variant on every usable backend, with accuracy against the labels and against FP32 on the baseline."""
    rows, preds = [], {}
    wanted = ctx.spec.measure.backends
    for backend in backends.all_backends():
        if backend.stage != "run" or (wanted and backend.name not in wanted) or backend.unavailable():
            continue
        runnable = [(v, info, how) for v in variants
                    for info in [file_of(ctx, v)] if (how := backend.runs(info)) is not None]
        if not runnable:
            continue
        timing = latency(ctx, backend, [info for _, info, _ in runnable])
        for v, info, how in runnable:
            preds[(v.name, backend.name)] = accuracy(ctx, backend, v, info)
            rows.append(result(ctx, v, backend, how, timing[v.name]))
    base, labels = preds[("fp32", BASELINE)], ctx.evaluation.labels
    return [dataclasses.replace(r, **figures(preds[(r.variant, r.backend)], labels, base)) for r in rows]


def file_of(ctx: Context, v: Variant) -> dict:
    """What a backend is told of a variant's file."""
    info = {"name": v.name, "precision": v.precision, "path": ctx.run_dir.onnx(v.name), "crop": ctx.pre.crop}
    if v.precision == "int8-cpu":
        info["cpu_class"] = ctx.records[v.name].get("quantization", {}).get("cpu_class")
    return info


def accuracy(ctx: Context, backend, v: Variant, info: dict) -> np.ndarray:
    """A variant's top-5 predictions on the evaluation images through `backend` (one stage, reused by key)."""
    evaluation = ctx.evaluation
    how = {k: x for k, x in backend.runs(info).items() if k != "file"}
    key = {"onnx": ctx.digest(v.name), "images": evaluation.key, "backend": ctx.env(backend), "how": how,
           "compress": __version__}
    if backend.name.startswith("torch"):
        key["torch_model"] = ctx.records[v.name]["sha256"].get("model.pt")

    def fill(d: Path) -> dict:
        session = backend.open(info, for_accuracy=True)
        out = []
        with tqdm(total=len(evaluation), desc=f"evaluate {v.name} on {backend.name}", unit="img",
                  file=sys.stderr, leave=False) as bar:
            for batch, _ in evaluation.batches(ctx.pre, 32):
                out.append(session.infer(batch))
                bar.update(len(batch))
        logits = np.concatenate(out)
        if logits.ndim != 2 or int(evaluation.labels.max()) >= logits.shape[1]:
            raise UserError(f"{evaluation.root}: labels go up to {int(evaluation.labels.max())} but {v.name} "
                            f"has {logits.shape[1] if logits.ndim == 2 else '?'} classes",
                            "the class indices must be those of the model's head (0-based)")
        if not np.isfinite(logits).all():
            raise UserError(f"{v.name} computes non-finite logits on {backend.name}",
                            "check the model's weights (NaN or Inf)")
        np.save(d / "top5.npy", top5(logits).astype(np.int32))
        return {}

    directory = ctx.run_dir.result_dir(backend.name, v.name)
    _, reused = stage(directory, key, ["top5.npy"], fill)
    log(f"{v.name}: accuracy on {backend.name} {'reused' if reused else 'measured'}")
    return np.load(directory / "top5.npy", allow_pickle=False)


def latency(ctx: Context, backend, files: list[dict]) -> dict[str, dict]:
    """All variants of a backend timed together, in interleaved rounds: one stage, redone if any changes."""
    m = ctx.spec.measure
    key = {"files": {f["name"]: ctx.digest(f["name"]) for f in files}, "backend": ctx.env(backend),
           "runs": m.latency_runs, "rounds": m.rounds, "batch": m.throughput_batch, "threads": m.threads,
           "compress": __version__}

    def fill(d: Path) -> dict:
        with tqdm(total=m.rounds * len(files), desc=f"latency on {backend.name}", unit="probe", file=sys.stderr,
                  leave=False) as bar:
            timing = backends.latency(backend.name, files, m.rounds, m.latency_runs, m.threads,
                                      m.throughput_batch, progress=lambda: bar.update(1))
        write_json(d / "latency.json", timing)
        return {}

    directory = ctx.run_dir.root / "results" / backend.name / "latency"
    record, reused = stage(directory, key, ["latency.json"], fill)
    log(f"latency on {backend.name}: " + ("reused" if reused else f"measured in {record['seconds']} s"))
    return read_json(directory / "latency.json")


def result(ctx: Context, v: Variant, backend, how: dict, timing: dict) -> Result:
    """One row: how the variant was made (its stage record and its lineage's) and what the backend timed."""
    record = ctx.records[v.name]
    lineage = record if v.precision == "fp32" else ctx.records.get(v.parent or "fp32", {})
    path = ctx.run_dir.onnx(v.name)
    return Result(
        variant=v.name, backend=backend.name, precision=how["precision"], target=v.target,
        accuracy_method=how["accuracy_method"], latency_method=how["latency_method"],
        latency_ms=timing["latency_ms"], latency_spread_ms=timing["latency_spread_ms"],
        round_p50_ms=timing.get("round_p50_ms"), rounds=timing["rounds"], timed_runs=timing.get("latency_runs"),
        throughput_ips=timing["throughput_ips"], throughput_batch=timing["throughput_batch"],
        peak_rss_bytes=timing["peak_rss_bytes"], baseline_rss_bytes=timing["baseline_rss_bytes"],
        threads=timing["threads"], file_bytes=Path(how["file"]).stat().st_size,
        onnx=str(path.relative_to(ctx.run_dir.root)),
        parent=v.parent, params=lineage.get("params"), macs=lineage.get("macs"), recovery=lineage.get("recovery"),
        sparsity="2:4" if v.prune == "s24" else None,
        build={k: x for k, x in record.items() if k in ("parity", "quantization", "source", "prune", "recovery")},
        fallback=record.get("fallback"), extra={"device": ctx.env(backend).get("device")})


def not_measured(wanted: tuple[str, ...] | None = None) -> list[dict]:
    """Every registered backend `compress run` did not measure, with the reason: the report names each."""
    out = []
    for b in backends.all_backends():
        reason = b.unavailable()
        if reason is None and b.stage == "run" and wanted and b.name not in wanted:
            reason = "left out by --backends"
        if b.stage == "build" and reason is None:
            reason = "engines are built and measured by 'compress build RUN_DIR' on the GPU that runs them"
        if reason:
            out.append({"backend": b.name, "reason": reason})
    return out
