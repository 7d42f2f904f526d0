"""The same command gives the same pruned model whatever the machine's load: `compress run --variants fp32,p30`
twice on the reference model, the second with BUSY CPU-bound processes running beside it the whole time, then the
two p30 files compared (the ONNX bytes; the torch weights tensor by tensor, since a torch archive names the
temporary file it was written to).

    python benchmarks/determinism.py [--images 64] [--busy 2] [--against RUN] [--beside TEXT]

--images sets --reconstruction-images, with a short evaluation (64 images, one round); at 1,000 the command is the
README's default exactly (about 20 minutes quiet, two to four times that beside busy processes on 2 cores). The
plan and the arithmetic are the same at any count. --against compares with a finished quiet run of the same
command instead of running one (benchmarks/memory.py's runs/memory-1000 is the default command), --against-code
the commit it ran at; --beside names
other work that ran beside the loaded run, for the record. The machine's load is sampled while each run works.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, bounded, commit, default_pruned_run, publish


def run(out, images: int, busy: int) -> tuple[float, float]:
    """The command's wall seconds beside `busy` busy loops, and the machine's mean 1-minute load meanwhile."""
    args = default_pruned_run(out)
    if images != 1000:
        args += ["--reconstruction-images", str(images), "--rounds", "1", "--latency-runs", "5", "--eval-limit", "64"]
    busy_loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    started, load, done = time.perf_counter(), [], threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            load.append(os.getloadavg()[0])

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        for p in busy_loops:
            p.kill()
        done.set()
    return time.perf_counter() - started, sum(load) / max(1, len(load))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=bounded(int, 16, 100_000), default=64)
    p.add_argument("--busy", type=bounded(int, 0, 64), default=2)
    p.add_argument("--against", type=Path, help="a finished quiet run of the same command, compared with")
    p.add_argument("--against-code", default="", help="the commit the --against run ran at, for the record")
    p.add_argument("--beside", default="", help="other work that ran beside the loaded run, for the record")
    a = p.parse_args()
    import torch

    from compress.prune import channels as prune

    code = commit()
    runs = ROOT / "runs"
    outs = [a.against or runs / f"determinism-quiet-{a.images}", runs / f"determinism-loaded-{a.images}"]
    for out in outs[int(a.against is not None):]:
        shutil.rmtree(out, ignore_errors=True)
    quiet = None if a.against is not None else run(outs[0], a.images, 0)
    loaded = run(outs[1], a.images, a.busy)
    onnx = [hashlib.sha256((o / "variants" / "p30" / "model.onnx").read_bytes()).hexdigest() for o in outs]
    sd = [prune.load_record(o / "variants" / "p30" / "model.pt")["state_dict"] for o in outs]
    same = sd[0].keys() == sd[1].keys() and all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    shown = f"python benchmarks/determinism.py --images {a.images} --busy {a.busy}" + (
        f" --against {a.against}" if a.against else "") + (
        f" --against-code {a.against_code}" if a.against_code else "") + (f' --beside "{a.beside}"' if a.beside else "")
    at = f" (commit {a.against_code})" if a.against_code else ""
    first = (f"| quiet | {quiet[0] / 60:.1f} min | {quiet[1]:.1f} |" if quiet else
             f"| quiet: {a.against}{at} | see its own record | — |")
    lines = ["# The same command, the same pruned model, under load", "",
             f"Command: `{shown}` (commit {code}).", "",
             "| run | wall | machine load | p30 model.onnx sha256 |", "| --- | ---: | ---: | --- |",
             f"{first} `{onnx[0]}` |",
             f"| beside {a.busy} busy loop(s){' and ' + a.beside if a.beside else ''} | {loaded[0] / 60:.1f} min | "
             f"{loaded[1]:.1f} | `{onnx[1]}` |", "",
             "Machine load: the mean 1-minute load average while the run worked (2 cores: about 2 alone).", "",
             f"ONNX bytes identical: {onnx[0] == onnx[1]}; torch weights identical, tensor by tensor: {same}."]
    publish("determinism" if a.images == 64 else f"determinism-{a.images}", {
        "images": a.images, "busy": a.busy, "against": str(a.against or ""), "against_code": a.against_code,
        "beside": a.beside, "quiet": quiet,
        "loaded": loaded, "onnx_sha256": onnx, "onnx_identical": onnx[0] == onnx[1], "weights_identical": same}, lines)


if __name__ == "__main__":
    main()
