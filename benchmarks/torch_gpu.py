"""PyTorch on a GPU: the baseline TensorRT speedups are reported against.

For the reference FP32 ResNet-50 and a pruned variant: batch 1 and 256, FP32 (TF32 off), TF32, FP16,
channels-last, CUDA graphs on and off. Timing: CUDA events around the forward pass, input on the device.

    python benchmarks/torch_gpu.py [--prune 0.3] [--batches 1,256] [--out benchmarks/results/torch-gpu.md]

`--device cpu --arch test-resnet` runs the same code without a GPU (CUDA graphs skipped), as the tests do.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variants(arch: str, checkpoint: str | None, prune_ratio: float, crop: int):
    from compress.core import model as models
    from compress.prune import channels as prune

    net = models.load(arch, checkpoint) if checkpoint else models.create(arch, 1000).eval()
    out = {"fp32": net}
    if prune_ratio:
        pruned = copy.deepcopy(net)
        prune.channels(pruned, prune_ratio, crop)
        out[f"p{round(prune_ratio * 100)}"] = pruned
    return out


def sweep(models: dict, batches: list[int], crop: int, device: str, runs: int) -> list[dict]:
    from compress.backends import torch as torch_backend

    rows = []
    graphs = (False, True) if device.startswith("cuda") else (False,)
    for name, net in models.items():
        for batch in batches:
            for mode in torch_backend.MODES:
                for channels_last in (False, True):
                    for graph in graphs:
                        r = torch_backend.latency(net, (batch, crop), mode, channels_last, graph, device,
                                                  warmup=10, runs=runs)
                        rows.append({"variant": name, **r})
                        print(f"{name} b{batch} {mode} cl={channels_last} graph={graph}: "
                              f"p50 {r['latency_ms']['p50']:.3f} ms, {r['throughput_ips']:.0f} img/s", flush=True)
    return rows


def markdown(rows: list[dict], device: str, command: str) -> str:
    lines = [f"# PyTorch on {rows[0]['device']}", "", f"Command: `{command}`", "",
             f"Timing: {rows[0]['timer']}.", "",
             "| variant | batch | mode | channels-last | CUDA graph | p50 ms | p90 ms | p99 ms | img/s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['peak_memory_bytes'] / 1e6:.0f}" if r["peak_memory_bytes"] else "—"
        lat = r["latency_ms"]
        lines.append(f"| {r['variant']} | {r['batch']} | {r['mode']} | {r['channels_last']} | {r['cuda_graph']} | "
                     f"{lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {r['throughput_ips']:.0f} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50-v1")
    p.add_argument("--checkpoint", help="state_dict (default: the reference model, via get_resnet50.py)")
    p.add_argument("--prune", type=float, default=0.3, help="also measure a variant with this ratio pruned")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torch-gpu.md"))
    a = p.parse_args(argv)
    checkpoint = a.checkpoint
    if checkpoint is None and a.arch == "resnet50-v1":
        import subprocess

        ref = ROOT.parent / "shared" / "reference" / "get_resnet50.py"
        checkpoint = subprocess.run([sys.executable, str(ref)], capture_output=True, text=True,
                                    check=True).stdout.split()[-1]
    rows = sweep(variants(a.arch, checkpoint, a.prune, a.crop), [int(b) for b in a.batches.split(",")], a.crop,
                 a.device, a.runs)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/torch_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(markdown(rows, a.device, command.strip()))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
