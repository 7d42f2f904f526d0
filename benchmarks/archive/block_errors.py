"""Where a saved pruned model's refinement stops generalising: each block's relative output error against the FP32
block (each network fed its own inputs, as the reconstruction fits them) on 256 calibration images, which the
recovery trained on, and on 256 evaluation images, which it never saw. Then, with PASSES:DATA arguments, layer4
fitted and refined again from the saved model's layer3 outputs (`reconstruct.fit_block`, PASSES refinement passes, on
the 1,000 calibration images, `n`, or on them and their horizontal flips, `f`) and evaluated on the 1,000
evaluation images (top-1, flips against FP32). The layer3 outputs are cached in CACHE (2.4 GB).

    python benchmarks/archive/block_errors.py MODEL.pt [PASSES:n|f ...]
        e.g. runs/prune-budget8/variants/p30/model.pt 8:n 4:f
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import ROOT, reference_sets  # noqa: E402

CACHE = ROOT / "runs" / "reference" / "cache" / "block-errors-layer3.pt"


def main() -> None:
    import torch

    from compress.core.store import sha256_file
    from compress.prune import allocate, reconstruct, stream
    from compress.prune import channels as prune
    from compress.prune.config import ReconstructConfig

    F = torch.nn.functional
    teacher, pre, calib, evaluation = reference_sets()
    student = prune.from_record(prune.load_record(sys.argv[1]), sys.argv[1]).eval()

    def stem(net, x):
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))

    def errors(images, n: int = 256) -> list[float]:
        num, den = [0.0] * len(allocate.blocks(teacher)), [0.0] * len(allocate.blocks(teacher))
        with torch.no_grad():
            for i in range(0, n, 32):
                x = torch.from_numpy(pre.normalize(images.pixels[i:i + 32]))
                xt, xs = stem(teacher, x), stem(student, x)
                for j, (tb, sb) in enumerate(zip(allocate.blocks(teacher), allocate.blocks(student))):
                    xt, xs = tb(xt), sb(xs)
                    num[j] += float((xs - xt).pow(2).sum())
                    den[j] += float(xt.pow(2).sum())
        return [round(a / b, 4) for a, b in zip(num, den)]

    print(json.dumps({"relative_block_error": {"calibration": errors(calib), "evaluation": errors(evaluation)}}),
          flush=True)
    if len(sys.argv) < 3:
        return

    def layer3(net, images, flip=False):
        def f(i):
            x = torch.from_numpy(pre.normalize(images.pixels[i:i + 25]))
            return net.layer3(net.layer2(net.layer1(stem(net, x.flip(3) if flip else x))))

        with torch.no_grad():
            return stream.gather(f, len(images), 25)

    key = {"model": sha256_file(sys.argv[1])}  # the file's content: a model rewritten at the same path is redone
    c = torch.load(CACHE, weights_only=True) if CACHE.exists() else {}
    if c.get("model") != key["model"]:
        c = {**key, "vt": layer3(teacher, evaluation), "vs": layer3(student, evaluation),
             "ct": layer3(teacher, calib), "cs": layer3(student, calib),
             "ctf": layer3(teacher, calib, True), "csf": layer3(student, calib, True)}
        torch.save(c, CACHE)

    def head(l4, f, fc=student.fc):
        with torch.no_grad():
            return torch.cat([fc(torch.flatten(F.adaptive_avg_pool2d(l4(f[i:i + 50].float()), 1), 1))
                              for i in range(0, len(f), 50)])

    base = head(teacher.layer4, c["vt"], teacher.fc).argmax(1)
    labels = torch.from_numpy(evaluation.labels)

    def row(name, l4, **extra):
        p = head(l4, c["vs"]).argmax(1)
        print(json.dumps({"layer4": name, "top1": float((p == labels).double().mean()),
                          "flips": int((p != base).sum()), **extra}), flush=True)

    row("saved", student.layer4)
    for spec in sys.argv[2:]:
        passes, data = spec.split(":")
        xf, xp = c["ct"], c["cs"]
        if data == "f":
            xf, xp = torch.cat([xf, c["ctf"]]), torch.cat([xp, c["csf"]])
        gen = torch.Generator().manual_seed(0)
        l4 = copy.deepcopy(teacher.layer4)
        started = time.perf_counter()
        with torch.no_grad():
            for tb, sb in zip(teacher.layer4, l4):
                kept = (tb.conv1.out_channels, tb.conv2.out_channels)
                xf, xp = reconstruct.fit_block(tb, sb, kept, xf, xp, gen, ReconstructConfig(), lambda n=int(passes): n)
        row(spec, l4.eval(), seconds=round(time.perf_counter() - started))


if __name__ == "__main__":
    main()
