"""Whether the refinement generalises better with FP32 inputs mixed into the pruned network's (QDrop's regulariser
for block reconstruction from few images): block IDX of a saved pruned model fitted again from the saved model's
own inputs to it (`reconstruct.fit_block`, no refinement), then refined with each EPOCHS:LR:MIX setting (Adam, cosine,
batch 16, as `refining.refine`; each input element taken from the FP32 network's input with probability MIX)
on the 1,000 calibration images; the block's relative output error against the FP32 block on them and on 500
evaluation images, each network fed its own inputs. The inputs are cached in CACHE (1.2 GB for a layer3 block).

    python benchmarks/archive/refine_mix.py MODEL.pt IDX EPOCHS:LR:MIX ...
    e.g. runs/prune-budget8/variants/p30/model.pt 10 8:1e-3:0 8:1e-3:0.5
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import ROOT, reference_sets  # noqa: E402

CACHE = ROOT / "runs" / "reference" / "cache" / "refine-mix-inputs.pt"


def main() -> None:
    import torch

    from compress.core.store import sha256_file
    from compress.prune import allocate, reconstruct, stream
    from compress.prune import channels as prune
    from compress.prune import refine as refining
    from compress.prune.config import ReconstructConfig

    teacher, pre, calib, evaluation = reference_sets()
    student = prune.from_record(prune.load_record(sys.argv[1]), sys.argv[1]).eval()
    idx = int(sys.argv[2])
    tbs, sbs = allocate.blocks(teacher), allocate.blocks(student)

    def inputs(net, bs, images, n):  # the network's input to block idx
        def f(i):
            h = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(pre.normalize(images.pixels[i:i + 25]))))))
            for b in bs[:idx]:
                h = b(h)
            return h

        with torch.no_grad():
            return stream.gather(f, n, 25)

    key = {"model": sha256_file(sys.argv[1]), "block": idx}
    c = torch.load(CACHE, weights_only=True) if CACHE.exists() else {}
    if {k: c.get(k) for k in key} != key:
        c = {**key, "ct": inputs(teacher, tbs, calib, 1000), "cs": inputs(student, sbs, calib, 1000),
             "vt": inputs(teacher, tbs, evaluation, 500), "vs": inputs(student, sbs, evaluation, 500)}
        torch.save(c, CACHE)
    tb = tbs[idx]

    def out(b, x):
        with torch.no_grad():
            return stream.gather(lambda i: b(x[i:i + 50].float()), len(x), 50)

    target = {"calibration": out(tb, c["ct"]), "evaluation": out(tb, c["vt"])}

    def row(name, b, **extra):
        errors = {}
        for data, x in (("calibration", c["cs"]), ("evaluation", c["vs"])):
            y, t = out(b, x).float(), target[data].float()
            errors[data] = round(float((y - t).pow(2).sum() / t.pow(2).sum()), 5)
        print(json.dumps({"block": idx, "refinement": name, "relative_error": errors, **extra}), flush=True)

    row("saved", sbs[idx])
    fitted = copy.deepcopy(tb)
    with torch.no_grad():
        kept = (sbs[idx].conv1.out_channels, sbs[idx].conv2.out_channels)
        reconstruct.fit_block(tb, fitted, kept, c["ct"], c["cs"], torch.Generator().manual_seed(0), ReconstructConfig())
    row("closed-form fits only", fitted)
    for spec in sys.argv[3:]:
        epochs, lr, mix = int(spec.split(":")[0]), float(spec.split(":")[1]), float(spec.split(":")[2])
        block, gen, started = copy.deepcopy(fitted), torch.Generator().manual_seed(0), time.perf_counter()
        refining.refine(block, c["cs"], target["calibration"], epochs, lr, gen, ReconstructConfig(),
                        (c["ct"], mix) if mix else None)
        row(spec, block, seconds=round(time.perf_counter() - started))


if __name__ == "__main__":
    main()
