"""`compress build`: TensorRT engines for this machine's GPU from a run (or bundle) directory, measured on the
run's evaluation images and added to its report.

Engines live under `engines/<device key>/`, the key naming GPU, compute capability, TensorRT version and OS;
beside each engine a JSON sidecar says what it is. An engine whose sidecar names another device is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import calibration
from compress import report
from compress.backends import tensorrt as trt
from compress.core import export
from compress.core import metrics as measure
from compress.core.errors import UserError, log
from compress.core.result import Result
from compress.core.rundir import RunDir
from compress.core.store import atomic_path, read_json, sha256_file, write_json
from compress.devices.bundle import engine_precisions, plans_for
from compress.devices.engine import (
    BUILD_MAJORS,
    GPU,
    PRECISIONS,
    BuildPlan,
    Device,
    Placement,
    Profile,
    check_compatible,
    reusable,
    sidecar,
)


@dataclass(frozen=True)
class BuildSpec:
    """What `compress build` is asked for: engine precisions, the profile's largest batch, where the engines run
    (`Placement`), the timing cache, and timed runs per engine."""

    precisions: tuple[str, ...] = PRECISIONS
    max_batch: int = 32
    placement: Placement = GPU
    timing_cache: str | Path | None = None
    runs: int = 200


def build(run_dir: str | Path, spec: BuildSpec, data: str | Path | None = None) -> list[Result]:
    """Build and measure every engine; accuracy on `data` (the run's evaluation folder, named again here) or on
    a bundle's own copy of its images."""

    run = RunDir(run_dir).check()
    reason = trt.unavailable()
    if reason:
        raise UserError(f"cannot build TensorRT engines on this machine: {reason}",
                        "'compress doctor' lists the backends; for a Jetson, 'compress bundle' then build there")
    device = trt.device()
    if device.tensorrt_major not in BUILD_MAJORS:
        raise UserError(f"TensorRT {device.tensorrt} is not supported by compress build",
                        "use TensorRT 10 or 11, or the trtexec lines of 'compress bundle'")
    with run.lock():
        return _build(run, device, spec, data)


def _build(run: RunDir, device: Device, spec: BuildSpec, data: str | Path | None) -> list[Result]:
    found = [v for v in run.variants() if engine_precisions(v["precision"])]
    crop = run.crop(found)
    at = spec.placement
    profile = Profile("input", (3, crop, crop), 1, 1, spec.max_batch)
    plans = plans_for(found, device.tensorrt_major, spec.precisions, profile, (at.dla_core,), at.gpu_fallback,
                      at.workspace_mib)
    engine_dir = run.engines(device.key)
    cache = Path(spec.timing_cache) if spec.timing_cache else engine_dir / "timing.cache"
    pre = {v["name"]: v["preprocess"] for v in found}
    rows = []
    for p in plans:
        engine = build_one(run.root, engine_dir, p, device, cache)
        rows.append(measure_engine(run, engine, pre[p.variant], spec.max_batch, spec.runs, data))

    report.merge(run.root, [r.to_dict() for r in rows])
    return rows


def build_one(run_dir: Path, engine_dir: Path, p: BuildPlan, device: Device, cache: Path) -> Path:

    onnx = run_dir / "variants" / p.variant / p.onnx
    if not onnx.exists() and p.onnx == "model-fp16.onnx":
        export.to_fp16(onnx.with_name("model.onnx"), onnx)
    digest = sha256_file(onnx)
    engine, side_path = engine_dir / f"{p.engine_name}.engine", engine_dir / f"{p.engine_name}.json"
    side = read_json(side_path) if side_path.exists() and engine.exists() else None
    if reusable(side, p, device, digest):
        log(f"{p.engine_name}: engine reused ({engine})")
        return engine
    log(f"{p.engine_name}: building ({', '.join(p.set_flags) or 'no flags'}"
        f"{'; cleared ' + ', '.join(p.clear_flags) if p.clear_flags else ''})")
    data, seconds = trt.build(p, onnx, cache)
    with atomic_path(engine) as tmp:
        tmp.write_bytes(data)
    write_json(side_path, sidecar(p, device, digest, seconds, len(data)))
    return engine


ROUNDS = 5


def spread(times_ms: list[float], rounds: int = ROUNDS) -> list[float]:
    """Lowest and highest median of `rounds` consecutive groups of timed runs: how steady the GPU was."""
    medians = [float(np.median(g)) for g in np.array_split(np.asarray(times_ms), rounds) if len(g)]
    return [min(medians), max(medians)]


def load_engine(engine: Path, device: Device) -> bytes:
    """The engine's bytes, refused if its sidecar names another device or TensorRT version."""
    side_path = engine.with_suffix(".json")
    if not side_path.exists():
        raise UserError(f"{engine} has no sidecar", "engines are only used where 'compress build' made them")
    check_compatible(read_json(side_path), device)
    return engine.read_bytes()


def evaluation_images(run: RunDir, data: str | Path | None) -> tuple[Path | None, int | None]:
    """Images to measure accuracy on, and how many: the folder named by --data (with the run's --eval-limit, so
    the images are the run's), else a bundle's own copy, else none."""
    if data is not None:
        return Path(data), run.eval_limit()
    bundled = run.root / "eval"
    return (bundled, None) if (bundled / "labels.txt").exists() else (None, None)


def measure_engine(run: RunDir, engine: Path, pre, batch: int, runs: int, data: str | Path | None = None) -> Result:
    """GPU latency by CUDA events (CUDA graph off and on), copies apart, throughput, memory and accuracy: the
    same `Result` row that `compress run` measures."""

    device = trt.device()
    side = read_json(engine.with_suffix(".json"))
    data = load_engine(engine, device)
    one = trt.Runner(data, 1)
    plain = one.time_gpu(runs, warmup=20, cuda_graph=False)
    graphed = one.time_gpu(runs, warmup=20, cuda_graph=True)
    copies = one.time_copies(20)
    many = trt.Runner(data, batch)
    batch_ms = float(np.median(many.time_gpu(max(runs // 10, 10), warmup=5, cuda_graph=False)))
    extra = {"dla_core": side["build"]["dla_core"], "latency_ms_cuda_graph": measure.percentiles(graphed),
             "copies_ms": copies, "engine_bytes": side["engine_bytes"],
             "activation_bytes": one.activation_bytes, "device_memory_delta_bytes": one.device_memory_delta}
    row = Result(
        variant=side["variant"], engine=engine.name, backend=f"tensorrt-{device.key}",
        precision=side["precision"], target="tensorrt",
        latency_ms=measure.percentiles(plain), batch_size=1, throughput_batch=batch,
        latency_spread_ms=spread(plain), rounds=ROUNDS,
        throughput_ips=batch * 1000.0 / batch_ms, peak_rss_bytes=None, extra=extra,
        file_bytes=side["engine_bytes"], onnx=f"variants/{side['variant']}/{side['source_onnx']}",
        latency_method="CUDA events around execute_async_v3 on one stream, after warm-up; host-device copies "
                       "timed separately (copies_ms); spread over 5 consecutive groups of runs",
        accuracy_method="TensorRT engine on this GPU")
    folder, limit = evaluation_images(run, data)
    if folder is None:
        extra["accuracy_note"] = "no evaluation images here"
        return row
    images = calibration.load(folder, pre, limit, run.cache)
    logits = []
    for x, _ in images.batches(pre, batch):
        padded = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)]) if len(x) < batch else x
        logits.append(many.infer(padded)[: len(x)])
    pred5 = measure.top5(np.concatenate(logits))
    base_path = run.result_dir("onnxruntime-cpu", "fp32") / "top5.npy"
    base = np.load(base_path, allow_pickle=False) if base_path.exists() else None
    if base is None or base.shape != pred5.shape:
        base = pred5  # no FP32 reference on these images: agreement is not measured
        extra["agreement_note"] = "no FP32 predictions on the same images"
    return dataclasses.replace(row, **measure.accuracy(pred5, images.labels, base))
