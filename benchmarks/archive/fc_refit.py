"""The classifier of a saved pruned model re-fitted in closed form: ridge regression from the pruned model's
pooled features to FP32's logits on the 1,000 calibration images (and their flips), pulled toward the current
weights, evaluated on the 1,000 reference evaluation images (top-1, agreement, flips against FP32).

    python benchmarks/archive/fc_refit.py MODEL.pt        e.g. runs/refine6/variants/p30/model.pt
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import reference_sets  # noqa: E402


def main() -> None:
    import torch

    from compress.prune import channels as prune

    teacher, pre, calib, evaluation = reference_sets()
    student = prune.from_record(prune.load_record(sys.argv[1]), sys.argv[1]).eval()

    def pooled(net, images, flip=False):
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 25):
                x = torch.from_numpy(pre.normalize(images.pixels[i:i + 25]))
                f = net.maxpool(net.relu(net.bn1(net.conv1(x.flip(3) if flip else x))))
                f = net.layer4(net.layer3(net.layer2(net.layer1(f))))
                out.append(torch.flatten(net.avgpool(f), 1))
        return torch.cat(out).double()

    started = time.perf_counter()
    sv, tv = pooled(student, evaluation), pooled(teacher, evaluation)
    sc = torch.cat([pooled(student, calib), pooled(student, calib, True)])
    tc = torch.cat([pooled(teacher, calib), pooled(teacher, calib, True)])
    print(json.dumps({"features_seconds": round(time.perf_counter() - started)}), flush=True)
    w, b = student.fc.weight.double(), student.fc.bias.double()
    tw, tb = teacher.fc.weight.double(), teacher.fc.bias.double()
    base = (tv @ tw.T + tb).argmax(1)
    labels = torch.from_numpy(evaluation.labels)

    def row(name, w, b):
        p = (sv @ w.T + b).argmax(1)
        print(json.dumps({"fit": name, "top1": float((p == labels).double().mean()),
                          "agreement": float((p == base).double().mean()), "flips": int((p != base).sum())}),
              flush=True)

    row("none", w, b)
    target = tc @ tw.T + tb
    for n in (1000, 2000):  # the calibration images, then with their flips
        x = torch.cat([sc[:n], torch.ones(n, 1, dtype=torch.float64)], 1)
        residual = target[:n] - x @ torch.cat([w, b[:, None]], 1).T
        gram = x.T @ x
        for damping in (1e-1, 1, 10, 100, 1000):  # times the mean diagonal of the Gram matrix
            eye = torch.eye(gram.shape[0], dtype=torch.float64)
            d = torch.linalg.solve(gram + damping * gram.diagonal().mean() * eye, x.T @ residual)
            row(f"{n} images, damping {damping}", w + d[:-1].T, b + d[-1])


if __name__ == "__main__":
    main()
