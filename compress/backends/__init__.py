"""Backends: the runtimes a variant is measured on, behind one small interface and a lazy registry.

A backend says whether it is usable here and why not (`unavailable`), describes itself (`describe`: device and
versions), says which variants it runs and with what arithmetic (`runs`), and opens a session on a variant
(`open`: `infer(batch) -> logits`). Measuring is shared (`compress.run.measure`): accuracy on the run's images in
this process, latency in fresh processes, interleaved across variants (`latency`). Nothing is imported until a
backend is asked for, so `compress --help` never loads a runtime.

Adding a backend: one module with a `Backend` subclass, and one line in `REGISTRY`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from compress.core.metrics import percentiles
from compress.core.onnxfile import metadata, preprocess_of


class Session(Protocol):
    def infer(self, batch: np.ndarray) -> np.ndarray: ...


class Backend:
    name = ""
    purpose = ""
    stage = "run"  # measured by `compress run`; "build": by `compress build` (engines)

    def unavailable(self) -> str | None:
        """None when usable here, else the one-line reason (with what to install)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Device and versions, recorded with every result."""
        raise NotImplementedError

    def runs(self, variant: dict) -> dict | None:
        """For a variant (`RunDir.variants` entry) this backend can execute: {"precision", "accuracy_method",
        "latency_method", "file" (what it loads)}; None when it cannot."""
        raise NotImplementedError

    def open(self, variant: dict, for_accuracy: bool, threads: int | None = None) -> Session:
        raise NotImplementedError


# name -> (module, class, constructor arguments)
REGISTRY: dict[str, tuple[str, str, dict]] = {
    "onnxruntime-cpu": ("compress.backends.onnxruntime", "OnnxRuntimeCPU", {}),
    "torch-cpu": ("compress.backends.torch_cpu", "TorchCPU", {}),
    "torch-cuda": ("compress.backends.torch", "TorchCUDA", {}),
    "tensorrt": ("compress.backends.tensorrt", "TensorRT", {}),
}


def get(name: str) -> Backend:
    module, cls, kwargs = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def all_backends() -> list[Backend]:
    return [get(name) for name in REGISTRY]


# -- latency: interleaved rounds of fresh processes ------------------------------------------------------------
def latency(backend: str, variants: list[dict], rounds: int, runs: int, threads: int | None, batch: int,
            warmup: int = 5, progress=None) -> dict[str, dict]:
    """Batch-1 latency of every variant, taken in `rounds` rounds; each round runs every variant in turn, each in
    a fresh process (no shared caches or memory high-water marks), so load that comes and goes hits all alike.
    Returns per variant: percentiles over all timed runs, each round's median (the speedup's paired ratios) and
    the lowest and highest of them, peak memory (median across rounds) and throughput at `batch` (last round)."""

    per_round = max(1, -(-runs // rounds))
    raw: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            raw[v["name"]].append(_probe(backend, v, per_round, warmup, threads, batch if r == rounds - 1 else 0))
            if progress:
                progress()
    out = {}
    for name, probes in raw.items():
        times = [t for p in probes for t in p["times_ms"]]
        medians = [float(np.median(p["times_ms"])) for p in probes]
        out[name] = {
            "latency_ms": percentiles(times), "latency_spread_ms": [min(medians), max(medians)],
            "round_p50_ms": medians,
            "rounds": rounds, "latency_runs": len(times),
            "peak_rss_bytes": int(np.median([p["peak_rss_bytes"] for p in probes])),
            "baseline_rss_bytes": int(np.median([p["baseline_rss_bytes"] for p in probes])),
            "throughput_ips": probes[-1]["throughput_ips"], "throughput_batch": batch,
            "threads": probes[-1]["threads"],
        }
    return out


def _probe(backend: str, variant: dict, runs: int, warmup: int, threads: int | None, batch: int) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "compress.backends", backend, str(variant["path"]), "--name", variant["name"],
           "--precision", variant["precision"], "--runs", str(runs), "--warmup", str(warmup), "--batch", str(batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_bytes() -> int:
    """Peak resident memory of this process so far. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork and exec, so a probe started by a large process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def probe(backend: str, variant: dict, runs: int, warmup: int, threads: int | None, batch: int) -> dict:
    """In a fresh process: open the variant, time `runs` batch-1 inferences after `warmup`, read peak memory,
    then (batch > 0) throughput at `batch`."""
    baseline = _rss_bytes()
    session = get(backend).open(variant, for_accuracy=False, threads=threads)
    crop = variant.get("crop", 224)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, crop, crop), dtype=np.float32)
    for _ in range(warmup):
        session.infer(x1)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.infer(x1)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = _rss_bytes()  # before the large batch: the memory of a batch-1 deployment
    throughput = None
    if batch:
        xb = rng.standard_normal((batch, 3, crop, crop), dtype=np.float32)
        session.infer(xb)
        t0, n = time.perf_counter(), 3
        for _ in range(n):
            session.infer(xb)
        throughput = batch * n / (time.perf_counter() - t0)
    return {"times_ms": times, "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
            "throughput_ips": throughput, "threads": threads or os.cpu_count()}


def _main() -> None:
    p = argparse.ArgumentParser(description="latency and memory probe of one variant (run by `latency`)")
    p.add_argument("backend", choices=list(REGISTRY))
    p.add_argument("path")
    p.add_argument("--name", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()

    path = Path(a.path)
    crop = preprocess_of(metadata(path), path).crop
    variant = {"name": a.name, "precision": a.precision, "path": path, "crop": crop}
    print(json.dumps(probe(a.backend, variant, a.runs, a.warmup, a.threads, a.batch)))


if __name__ == "__main__":
    _main()
