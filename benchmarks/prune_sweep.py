"""Pruning study on the reference model: MAC reductions x recovery (reconstruction; Torch-Pruning L1 with
BatchNorm re-estimation), FP32 and their int8-cpu siblings, on onnxruntime CPU, against FP32 on the same images.

    python benchmarks/prune_sweep.py [--ratios 0.2,0.3,0.5]

writes two runs through benchmarks/run.py (prune-reconstruct, prune-l1-bn) and benchmarks/results/prune-sweep.md,
the side-by-side table with each variant's recovery time. Calibration images only: no labels are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import REF, RESULTS, machine, reference_checkpoint
from run import run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.3,0.5")
    p.add_argument("--methods", default="reconstruct,l1")
    a = p.parse_args()
    common = ["--model", reference_checkpoint(), "--arch", "resnet50-v1", "--data", str(REF / "imagenet-val"),
              "--calib", str(REF / "imagenet-calib"), "--variants", "fp32,int8-cpu", "--prune-ratios", a.ratios,
              "--backends", "onnxruntime-cpu"]
    names = {"reconstruct": "prune-reconstruct", "l1": "prune-l1-bn"}
    runs = {m: run(names[m], [*common, "--method", m]) for m in a.methods.split(",")}
    first = next(iter(runs.values()))
    lines = [
        "# Pruning study: ResNet-50 v1, onnxruntime CPU",
        "",
        f"Machine: {machine(first['env'])}.",
        f"Evaluation: {first['images']['count']} images of `reference/imagenet-val`; calibration, reconstruction "
        "and BN re-estimation: images of `reference/imagenet-calib`, unlabelled (reconstruction: the first 128).",
        "pNN removes NN% of the conv and linear MACs. reconstruct: inner bottleneck channels chosen by activation "
        "energy through the consumer's weights, each block re-fitted by ridge least squares to the FP32 "
        "activations; l1: Torch-Pruning L1 over every channel group, then BatchNorm statistics re-estimated. "
        "Counts multiples of 8, stem and classifier kept, no fine-tuning. Latency: batch 1, p50 over interleaved "
        "rounds; speedup against FP32 in the same run. GMACs as Torch-Pruning counts every op; l1 aims at the same "
        "target by that count in 20 iterative steps and overshoots, so compare the two methods at equal speedup "
        "rather than equal name.",
        f"Command: `python benchmarks/prune_sweep.py --ratios {a.ratios} --methods {a.methods}` (runs "
        + ", ".join(f"[{names[m]}]({names[m]}.md)" for m in runs) + ").",
        "",
        "| method | variant | GMACs | top-1 | Δtop1 | agree % | flips | p50 ms (spread) | speedup | recovery min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, data in runs.items():
        for r in data["results"]:
            stage = ROOT / "runs" / names[method] / "variants" / r["variant"] / "stage.json"
            seconds = json.loads(stage.read_text()).get("seconds") if r["variant"].startswith("p") else None
            lo, hi = r["latency_spread_ms"]
            lines.append(
                f"| {method} | {r['variant']} | {(r.get('macs') or 0) / 1e9:.2f} | {100 * r['top1']:.1f} | "
                f"{r['top1_delta']:+.1f} | {100 * r['agreement']:.1f} | {r['flips']} | "
                f"{r['latency_ms']['p50']:.1f} ({lo:.1f}–{hi:.1f}) | {r['speedup']:.2f}x | "
                + (f"{seconds / 60:.1f} |" if seconds is not None and not r["variant"].endswith("int8-cpu") else "— |"))
    (RESULTS / "prune-sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
