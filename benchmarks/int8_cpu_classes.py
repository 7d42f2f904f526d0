"""int8-cpu per CPU class on the reference model: the file made for VNNI CPUs (8-bit weights) and the one made
for x86 CPUs without VNNI (7-bit weights, `reduce_range`), each with its calibration, against FP32 on the same
1,000 evaluation images: top-1, agreement, flips, and batch-1 latency in interleaved rounds on this machine.

    python benchmarks/int8_cpu_classes.py [--rounds 3] [--runs 150]

The 7-bit file cannot saturate on any CPU, so its accuracy moves between CPUs only by the few borderline images
their float kernels decide differently (97.3% agreement on a VNNI CPU, 96.8% on an AVX2 one). The 8-bit file on
a CPU without VNNI runs with session.x64quantprecision=1 (exact) or, on the plain kernels, saturates. Latency is
this machine's: on a VNNI CPU both files run the same kernels. Writes benchmarks/results/int8-cpu-classes.{md,json}
(the table; the prose of the committed page is written by hand).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import REF, ROOT, int8_cpu_setup

sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=150)
    a = p.parse_args()

    import calibration
    from calibration.images import Preprocess
    from compress import backends
    from compress.core import metrics as measure
    from compress.core import session as ort
    from compress.core.cpu import this_cpu_class
    from compress.quantize import ranges
    from compress.quantize.ptq import BIAS_CORRECTION_IMAGES, PTQConfig, quantize

    pre = Preprocess()
    work = ROOT / "runs" / "int8-cpu-classes"
    fp32, evaluation, tensors, base = int8_cpu_setup(work, pre)
    calib = calibration.load(REF / "imagenet-calib", pre, 512, work)
    stats = ranges.collect(fp32, calib, pre, tensors)
    files = {"fp32": (fp32, "FP32", None)}
    for cpu, method, correction in (("vnni", "percentile", 0), ("vnni", "percentile", BIAS_CORRECTION_IMAGES),
                                    ("avx2", "percentile", 0), ("avx2", "percentile", BIAS_CORRECTION_IMAGES),
                                    ("avx2", "minmax", 0)):
        name = f"int8-cpu {cpu} {method}" + (" bias-corrected" if correction else "")
        path = work / f"{name.replace(' ', '-')}.onnx"
        info = quantize(fp32, path, calib, pre, "int8-cpu",
                        PTQConfig(method=method, bias_correction=correction, cpu=cpu), statistics=stats)
        files[name] = (path, f"{info['weight_bits']}-bit weights, {method} on {len(calib)} images"
                       + (f", biases corrected on {correction}" if correction else ""), cpu)
    rows = []
    for name, (path, what, cpu) in files.items():
        pred = measure.top5(ort.logits(path, evaluation, pre, as_written=False))
        rows.append({"option": name, "what": what, "cpu_class": cpu,
                     **measure.accuracy(pred, evaluation.labels, base)})
    timing = backends.latency("onnxruntime-cpu", [{"name": n, "precision": "int8-cpu" if c else "fp32",
                                                    "path": str(p), "crop": pre.crop, "cpu_class": c}
                                                   for n, (p, _, c) in files.items()],
                              a.rounds, a.runs, None, 1)
    for r in rows:
        t = timing[r["option"]]
        r["p50_ms"], r["spread_ms"] = t["latency_ms"]["p50"], t["latency_spread_ms"]
        r["speedup"] = timing["fp32"]["latency_ms"]["p50"] / r["p50_ms"]
    env = measure.environment()
    (ROOT / "benchmarks" / "results" / "int8-cpu-classes.json").write_text(
        json.dumps({"env": env, "cpu_class_here": this_cpu_class(), "rows": rows}, indent=2) + "\n")
    fp = rows[0]
    lines = ["# int8-cpu per CPU class", "",
             f"Command: `python benchmarks/int8_cpu_classes.py --rounds {a.rounds} --runs {a.runs}`.",
             f"Machine: {env['cpu']}, {env['cpu_cores']} cores ({', '.join(env['cpu_flags'])}): CPU class "
             f"`{this_cpu_class()}`; onnxruntime {env['onnxruntime']}, Python {env['python']}.",
             "ResNet-50 v1, 1,000 evaluation images; calibration on 512 calibration images (shared statistics, as "
             "`compress run`). Agreement and flips against FP32 on the same images; latency at batch 1, p50 over "
             f"{a.rounds} interleaved rounds (lowest and highest round median).", "",
             "| option | weights, calibration | top-1 | Δ | agreement | flips | p50 ms (spread) | speedup |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lo, hi = r["spread_ms"]
        lines.append(f"| {r['option']} | {r['what']} | {100 * r['top1']:.1f} | "
                     f"{100 * (r['top1'] - fp['top1']):+.1f} | {100 * r['agreement']:.1f}% | {r['flips']} | "
                     f"{r['p50_ms']:.1f} ({lo:.1f}–{hi:.1f}) | {r['speedup']:.2f}x |")
    (ROOT / "benchmarks" / "results" / "int8-cpu-classes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
