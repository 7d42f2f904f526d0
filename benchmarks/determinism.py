"""The same command gives the same pruned model whatever the machine's load: `compress run --variants fp32,p30`
twice on the reference model, the second with BUSY CPU-bound processes running beside it the whole time, then the
two p30 files compared (the ONNX bytes; the torch weights tensor by tensor, since a torch archive names the
temporary file it was written to).

    python benchmarks/determinism.py [--images 64] [--busy 2]

--images sets --reconstruction-images (the default command fits on 1,000: about 20 minutes quiet, four times that
beside two busy processes on 2 cores); the plan and the arithmetic are the same at any count.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time

from common import REF, ROOT, commit, publish, reference_checkpoint


def run(out, images: int, busy: int) -> float:
    args = [sys.executable, "-m", "compress", "run", "--model", reference_checkpoint(), "--arch", "resnet50-v1",
            "--data", str(REF / "imagenet-val"), "--calib", str(REF / "imagenet-calib"), "--variants", "fp32,p30",
            "--backends", "onnxruntime-cpu", "--reconstruction-images", str(images), "--rounds", "1",
            "--latency-runs", "5", "--eval-limit", "64", "--out", str(out)]
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    started = time.perf_counter()
    try:
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        for p in load:
            p.kill()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--busy", type=int, default=2)
    a = p.parse_args()
    import torch

    from compress.prune import channels as prune

    code = commit()
    outs = [ROOT / "runs" / f"determinism-{kind}" for kind in ("quiet", "loaded")]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    seconds = [run(outs[0], a.images, 0), run(outs[1], a.images, a.busy)]
    onnx = [hashlib.sha256((o / "variants" / "p30" / "model.onnx").read_bytes()).hexdigest() for o in outs]
    sd = [prune.load_record(o / "variants" / "p30" / "model.pt")["state_dict"] for o in outs]
    same = sd[0].keys() == sd[1].keys() and all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    lines = ["# The same command, the same pruned model, under load", "",
             f"Command: `python benchmarks/determinism.py --images {a.images} --busy {a.busy}` (commit {code}).", "",
             "| run | wall | p30 model.onnx sha256 |", "| --- | ---: | --- |",
             f"| quiet | {seconds[0] / 60:.1f} min | `{onnx[0]}` |",
             f"| beside {a.busy} CPU-bound processes | {seconds[1] / 60:.1f} min | `{onnx[1]}` |", "",
             f"ONNX bytes identical: {onnx[0] == onnx[1]}; torch weights identical, tensor by tensor: {same}."]
    publish("determinism", {"images": a.images, "busy": a.busy, "seconds": seconds, "onnx_sha256": onnx,
                            "onnx_identical": onnx[0] == onnx[1], "weights_identical": same}, lines)


if __name__ == "__main__":
    main()
