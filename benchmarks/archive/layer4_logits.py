"""layer4 and the classifier of a saved pruned model trained toward FP32's logits from the pruned model's own
layer3 outputs on the 1,000 calibration images (cached once, centre crops, no augmentation), evaluated on the
1,000 reference evaluation images: top-1, agreement with FP32 and the RMS logit difference.

    python benchmarks/archive/layer4_logits.py MODEL.pt EPOCHS:LR:T:FEATURE_WEIGHT ...     e.g. 2:1e-4:2:1
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
from common import logits, reference_sets, scores  # noqa: E402


def main() -> None:
    import torch
    import torch.nn.functional as F

    from compress.prune import channels as prune

    torch.manual_seed(0)
    teacher, pre, calib, evaluation = reference_sets()
    base = logits(teacher, evaluation, pre)
    student0 = prune.from_record(prune.load_record(sys.argv[1]), sys.argv[1]).eval()
    print(json.dumps({"training": "none", **scores(logits(student0, evaluation, pre), base, evaluation.labels)}),
          flush=True)

    def to_layer4(net, x):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer3(net.layer2(net.layer1(x)))

    xs, target_logits, target_features = [], [], []
    with torch.no_grad():
        for i in range(0, len(calib), 50):
            x = torch.from_numpy(pre.normalize(calib.pixels[i:i + 50]))
            xs.append(to_layer4(student0, x).half())
            f = teacher.layer4(to_layer4(teacher, x))
            target_features.append(f.half())
            target_logits.append(teacher.fc(torch.flatten(teacher.avgpool(f), 1)))
    xs, tl, tf = torch.cat(xs), torch.cat(target_logits), torch.cat(target_features)

    for spec in sys.argv[2:]:
        epochs, lr, temperature, feature_weight = (float(v) for v in spec.split(":"))
        s = copy.deepcopy(student0).eval()  # BatchNorm statistics fixed
        opt = torch.optim.Adam([*s.layer4.parameters(), *s.fc.parameters()], lr=lr)
        batch = 32
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, int(epochs) * (len(xs) // batch))
        g = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for _ in range(int(epochs)):
            order = torch.randperm(len(xs), generator=g)
            for i in range(0, len(xs) - batch + 1, batch):
                idx = order[i:i + batch]
                h = s.layer4(xs[idx].float())
                out = s.fc(torch.flatten(s.avgpool(h), 1))
                kl = F.kl_div(F.log_softmax(out / temperature, 1), F.log_softmax(tl[idx] / temperature, 1),
                              log_target=True, reduction="batchmean") * temperature ** 2
                loss = kl + feature_weight * (h - tf[idx].float()).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        print(json.dumps({"training": spec, "seconds": round(time.perf_counter() - started),
                          **scores(logits(s, evaluation, pre), base, evaluation.labels)}), flush=True)


if __name__ == "__main__":
    main()
