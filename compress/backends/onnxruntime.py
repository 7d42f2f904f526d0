"""onnxruntime on the CPU: accuracy sessions and latency/memory probes in a fresh process.

Two ways to execute a Q/DQ graph, and the choice matters for honest numbers:

- `as_written=True`: graph optimisations off, so DequantizeLinear -> float Conv -> QuantizeLinear runs as the
  file says. This is the arithmetic TensorRT uses for a Q/DQ network (int8 x int8 with int32 accumulation
  gives the same result), so it measures the accuracy of a TensorRT-bound `int8` variant.
- `as_written=False`: all optimisations on, Q/DQ fused into integer kernels, as an onnxruntime CPU deployment
  runs (`int8-cpu`). On x86 CPUs without VNNI the u8s8 kernels saturate intermediate sums; there the session
  sets `session.x64quantprecision=1`, which avoids it. On VNNI CPUs there is no saturation and the option
  would only cost speed (measured: 9.5 ms vs 27.5 ms for ResNet-50 int8-cpu at batch 1), so it stays off.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from compress.errors import require


def unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc}); pip install 'compress[onnx]'"
    return None


def version() -> str:
    return require("onnxruntime").__version__


def saturation_guard() -> bool:
    """Whether this CPU needs onnxruntime's u8s8 precision option: x86 without VNNI."""
    import platform

    from compress.measure import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_flags())


class Session:
    def __init__(self, path: str | os.PathLike[str], as_written: bool = False, threads: int | None = None):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if as_written:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if saturation_guard():
                opts.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input.name: batch})[0]

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *[int(d) for d in self.input.shape[1:]])


def logits(path, images, preprocess, as_written: bool, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Logits of every image of an ImageSet, with a progress bar."""
    from tqdm import tqdm

    session = Session(path, as_written=as_written)
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr, leave=False, disable=desc is None) as bar:
        for batch, _ in images.batches(preprocess, batch_size):
            out.append(session.infer(batch))
            bar.update(len(batch))
    return np.concatenate(out)


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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def probe(path: str, as_written: bool, warmup: int, runs: int, batch: int, batch_runs: int,
          threads: int | None) -> dict:
    """Latency at batch 1, peak memory, then throughput at `batch`. Run in a fresh process (see `measure`)."""
    from tqdm import tqdm

    from compress.measure import percentiles

    baseline = _rss_bytes()
    session = Session(path, as_written=as_written, threads=threads)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(session.input_shape(1), dtype=np.float32)
    for _ in range(warmup):
        session.infer(x1)
    times = []
    for _ in tqdm(range(runs), desc="latency", unit="run", file=sys.stderr, leave=False):
        t0 = time.perf_counter()
        session.infer(x1)
        times.append(time.perf_counter() - t0)
    peak = _rss_bytes()  # before the large batch: the memory of a batch-1 deployment
    xb = rng.standard_normal(session.input_shape(batch), dtype=np.float32)
    session.infer(xb)
    t0 = time.perf_counter()
    for _ in tqdm(range(batch_runs), desc=f"throughput b{batch}", unit="run", file=sys.stderr, leave=False):
        session.infer(xb)
    elapsed = time.perf_counter() - t0
    ms = np.asarray(times) * 1e3
    return {
        "latency_ms": percentiles(ms),
        "latency_runs": runs,
        "batch_size": 1,
        "throughput_batch": batch,
        "throughput_ips": batch * batch_runs / elapsed,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "threads": threads or os.cpu_count(),
        "timer": "perf_counter around InferenceSession.run, input in host memory, after warm-up",
    }


def measure(path: str | os.PathLike[str], as_written: bool, warmup: int = 10, runs: int = 100, batch: int = 32,
            batch_runs: int = 5, threads: int | None = None) -> dict:
    """Run `probe` in a fresh Python process so variants do not share caches or memory high-water marks."""
    import subprocess

    cmd = [sys.executable, "-m", "compress.backends.onnxruntime", str(path), "--warmup", str(warmup),
           "--runs", str(runs), "--batch", str(batch), "--batch-runs", str(batch_runs)]
    if as_written:
        cmd.append("--as-written")
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main() -> None:
    p = argparse.ArgumentParser(description="latency and memory probe of one ONNX file (run by `measure`)")
    p.add_argument("path")
    p.add_argument("--as-written", action="store_true")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batch-runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    print(json.dumps(probe(a.path, a.as_written, a.warmup, a.runs, a.batch, a.batch_runs, a.threads)))


if __name__ == "__main__":
    _main()
