"""Pruning sweep on the reference model: ratios x (with, without BN re-estimation) x (FP32, INT8), on
onnxruntime CPU, against FP32 on the same images.

    python benchmarks/prune_sweep.py [--ratios 0.2,0.3,0.5] [--finetune-epochs N]

writes two runs through benchmarks/run.py (prune-sweep-bn, prune-sweep-nobn) and
benchmarks/results/prune-sweep.md, the side-by-side table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from run import RESULTS, machine, run

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"


def reference_model() -> str:
    out = subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.3,0.5")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--variants", default="fp32,int8")
    a = p.parse_args()
    common = ["--model", reference_model(), "--arch", "resnet50-v1", "--data", str(REF / "imagenet-val"),
              "--calib", str(REF / "imagenet-calib"), "--variants", a.variants, "--prune-ratios", a.ratios]
    if a.finetune_epochs:
        common += ["--finetune-epochs", str(a.finetune_epochs), "--finetune-images", str(REF / "imagenet-calib")]
    with_bn = run("prune-sweep-bn", common)
    without = run("prune-sweep-nobn", [*common, "--no-bn-recalibration"])

    def rows(data):
        return {r["variant"]: r for r in data["results"]}

    bn, nobn = rows(with_bn), rows(without)
    lines = [
        "# Pruning sweep: ResNet-50 v1, onnxruntime CPU",
        "",
        f"Machine: {machine(with_bn['env'])}.",
        f"Evaluation: {with_bn['images']['count']} images of `reference/imagenet-val`; calibration and BN "
        "re-estimation: 512 images of `reference/imagenet-calib` (unlabelled use).",
        "Channels pruned per layer by L1 magnitude with Torch-Pruning, counts rounded to multiples of 8, stem and "
        "classifier kept; no fine-tuning unless stated. Latency: batch 1, p50 over 100 runs; speedup against FP32 "
        "on the same CPU. INT8 is the TensorRT Q/DQ file, accuracy as TensorRT computes it; its CPU latency is "
        "not on its target runtime.",
        f"Commands: `python benchmarks/prune_sweep.py --ratios {a.ratios}` (runs "
        "[prune-sweep-bn](prune-sweep-bn.md) and [prune-sweep-nobn](prune-sweep-nobn.md)).",
        "",
        "| variant | params M | GMACs | top-1 no BN | top-1 BN re-est. | Δtop1 BN | agree BN % | flips BN | "
        "p50 ms | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in bn.items():
        n = nobn.get(name, {})
        lines.append(
            f"| {name} | {(r.get('params') or 0) / 1e6:.2f} | {(r.get('macs') or 0) / 1e9:.2f} | "
            f"{100 * n.get('top1', float('nan')):.1f} | {100 * r['top1']:.1f} | {r['top1_delta']:+.1f} | "
            f"{100 * r['agreement']:.1f} | {r['flips']} | {r['latency_ms']['p50']:.1f} | {r['speedup']:.2f}x |")
    (RESULTS / "prune-sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
