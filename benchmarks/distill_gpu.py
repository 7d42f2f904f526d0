"""Distillation of a pruned variant on a GPU box (one or several GPUs), timed, then measured like any variant:

    python benchmarks/distill_gpu.py [--variant p30] [--epochs 30] [--gpus 1]

1. `compress run` builds fp32, the variant (reconstruction only: --distill-epochs 0) and its int8-cpu sibling;
2. `compress distill` (under torchrun when --gpus > 1) distils the variant for --epochs on the calibration images;
3. `compress run` with the same options keeps the distilled variant, re-quantizes the sibling, measures all.
Each step's wall time and the variant's rows before and after go to benchmarks/results/distill-gpu.md. The
model and image folders default to the reference ones (--model, --arch, --data, --calib to change them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import REF, RESULTS, ROOT, machine, reference_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="p30")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--gpus", type=int, default=1, help="processes under torchrun (one per GPU)")
    p.add_argument("--model")
    p.add_argument("--arch", default="resnet50-v1")
    p.add_argument("--data", default=str(REF / "imagenet-val"))
    p.add_argument("--calib", default=str(REF / "imagenet-calib"))
    p.add_argument("--out", default=str(ROOT / "runs" / "distill-gpu"))
    p.add_argument("--results", default=str(RESULTS / "distill-gpu.md"))
    p.add_argument("extra", nargs="*", help="more compress run options, after --")
    a = p.parse_args()
    v = a.variant
    run = [sys.executable, "-m", "compress", "run", "--model", a.model or reference_checkpoint(), "--arch", a.arch,
           "--data", a.data, "--calib", a.calib, "--out", a.out, "--variants", f"fp32,{v},{v}-int8-cpu",
           "--distill-epochs", "0", *a.extra]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.gpus}"]
                if a.gpus > 1 else [sys.executable])
    distill = [*launcher, "-m", "compress", "distill", a.out, "--variant", v, "--images", a.calib,
               "--epochs", str(a.epochs)]
    seconds, rows = {}, {}
    for step, cmd in (("build", run), ("distill", distill), ("measure", run)):
        started = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if code not in (0, 3):
            raise SystemExit(f"{step} failed ({code}): {' '.join(cmd)}")
        seconds[step] = time.perf_counter() - started
        if step != "distill":
            data = json.loads((ROOT / a.out / "report.json").read_text())
            rows[step] = [r for r in data["results"] if r["variant"] in ("fp32", v, f"{v}-int8-cpu")]
    record = json.loads((ROOT / a.out / "variants" / v / "stage.json").read_text())
    facts = next(s["distillation"] for s in record["recovery"] if isinstance(s, dict) and "distillation" in s)
    lines = [f"# Distilling {v} on {facts['processes']} {facts['device'].upper()} process(es)", "",
             f"Command: `python benchmarks/distill_gpu.py --variant {v} --epochs {a.epochs} --gpus {a.gpus}`.",
             f"Machine: {machine(data['env'])}.",
             f"Wall time: build {seconds['build'] / 60:.1f} min, distill {seconds['distill'] / 60:.1f} min "
             f"({facts['epochs']} epochs of {facts['images']} images, batch {facts['batch']}, lr {facts['lr']}; "
             f"mean loss per epoch {', '.join(f'{x:.3f}' for x in facts['losses'])}), measure "
             f"{seconds['measure'] / 60:.1f} min.", "",
             "| when | variant | runtime | top-1 | agreement | flips | p50 ms |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for step in ("build", "measure"):
        for r in rows[step]:
            lines.append(f"| {'before' if step == 'build' else 'after'} | {r['variant']} | {r['backend']} | "
                         f"{100 * r['top1']:.1f}% | {100 * r['agreement']:.1f}% | {r['flips']} | "
                         f"{r['latency_ms']['p50']:.2f} |")
    (ROOT / a.results).write_text("\n".join(lines) + "\n")  # an absolute --results stays as it is
    print("\n".join(lines))


if __name__ == "__main__":
    main()
