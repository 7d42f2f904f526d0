"""Pruning with reconstruction: remove inner bottleneck channels (pNN) or whole blocks (dN, `drop`), then re-fit
the layers that consume them so the pruned network reproduces the FP32 network's activations on unlabelled
images. No labels, minutes on a CPU.

Where: the inner channels of every residual block (the outputs of conv1 and conv2), never the residual stream,
the stem or the classifier: they carry most of the MACs (conv2 loses them on both sides) and no other block
depends on them. Counts stay multiples of `round_to`.

Which: a channel is worth what its consumer loses without it, measured on the FP32 network: greedily, the
channel whose removal the re-fitted consumer feels least goes first (optimal brain surgeon's rule on the
consumer's input statistics), or, cheaper, by activation energy through the consumer's weights.

How: block by block, from the pruned network's own inputs (so errors do not accumulate), each conv is re-fitted
by ridge least squares, closed form, to the FP32 network's pre-activation outputs (BatchNorm folded in): conv1 to
FP32 conv1's kept channels, conv2 to FP32 conv2's kept channels, conv3 to FP32 conv3's output plus the error of
the shortcut path (so the block's output, not only its branch, matches). Each conv feeds a ReLU, so values the
FP32 network's ReLU zeroes only need to stay at or below zero: a few rounds re-fit with those targets relaxed
(`_relu_fit`). Statistics are accumulated over image chunks at sampled positions: memory is bounded by the
chunk, not the image count. Then, optionally, a few passes of Adam on the whole block toward the FP32 block's
output (`_refine`), which the closed-form fits cannot do: move conv1 and conv2 off FP32's kept channels.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable

from compress.errors import UserError, require

REVISION = 4  # of what a recovery does with the same options: a saved pruned model from another one is redone
# (2: dN's blocks are refined too; 3: pNN gives back what rounding removed beyond NN%, `give_back`;
# 4: the cut moves from layer3 to layer1 and layer2, `STAGE_SHARES`)


def blocks(model) -> list:
    from torchvision.models.resnet import Bottleneck

    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def _fold(conv, bn):
    """(weight, bias) of conv followed by eval-mode BatchNorm."""
    torch = require("torch")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale[:, None, None, None]
    b = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias.detach() * scale
    return w, b


def inner_counts_of(block, fraction: float, round_to: int) -> tuple[int, int]:
    """Channels kept in conv1 and conv2 of a block when `fraction` of them go, rounded to `round_to`; none go at
    fraction 0, even from a width that is not a multiple of `round_to`."""
    def keep(c: int) -> int:
        if fraction <= 0:
            return c
        return int(min(c, max(round_to, round_to * round((1 - fraction) * c / round_to))))

    return keep(block.conv1.out_channels), keep(block.conv2.out_channels)


ALLOCATIONS = ("stages", "uniform", "sensitivity")  # where the channels go (`reconstruct`)
# each stage's share of the pruned fraction, layer1..layer4 (prune-distill.md, "The default since: the cut moved")
STAGE_SHARES = (1.5, 1.2, 0.7, 0.0)
MOST_CUT = 0.5  # what a share above 1 may take from a block (`inner_counts`)


def stage_shares(model) -> list[float]:
    """Each block's share of the pruned fraction, by stage (a stage starts at a block whose shortcut is not the
    identity; counted back from the last, so a model with fewer stages takes the last `STAGE_SHARES`, and one with
    more gives the extra first stages the first share). By default the last stage loses nothing: its fit has the
    fewest rows (7x7 positions per image at 224 pixels, for the widest convs) and its errors reach the classifier
    directly (on ResNet-50 at p30 this removes more than a quarter of the flips that reconstruction leaves); the
    third loses less than the first two, because the refinement's gains carry over to unseen images in layer1 and
    layer2 and stop doing so in layer3 (p30: 62 flips with shares 1:1:1:0, 57 with these)."""
    starts = list(itertools.accumulate(b.downsample is not None for b in blocks(model)))
    stage = [max(0, s - 1) for s in starts]
    n = stage[-1] + 1 if stage else 0
    return [float(STAGE_SHARES[max(0, len(STAGE_SHARES) - n + s)]) for s in stage]


def inner_counts(model, fraction: float, round_to: int, shares: list[float] | None = None) -> list[tuple[int, int]]:
    """Channels kept in conv1 and conv2 of each block when `fraction` (times the block's share) of them go,
    rounded to `round_to`. A share above 1 takes a block to at most `MOST_CUT` of its channels, or to `fraction`
    when that is more: the default shares were measured at p30, where layer1 loses half, and nothing measured says
    a stage should lose more than that while the others lose less (at p50, layer1 would keep 8 of 64)."""
    bs = blocks(model)
    return [inner_counts_of(b, min(fraction * s, max(fraction, MOST_CUT)), round_to)
            for b, s in zip(bs, shares or [1.0] * len(bs))]


def _output_sizes(model, crop: int) -> dict:
    """Each conv's output positions (H x W) at this crop: one forward pass."""
    torch = require("torch")
    sizes: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, o.shape[2] * o.shape[3]))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, crop, crop))
    for h in hooks:
        h.remove()
    return sizes


def macs(model, crop: int, counts: list[tuple[int, int]] | None = None, sizes: dict | None = None) -> int:
    """Conv and linear MACs at batch 1 of `model`, or of it with each block's inner channels cut to `counts`
    (what pNN counts; the report's MACs are Torch-Pruning's count of every op). `sizes`: `_output_sizes`, when
    the caller counts many cuts of one model."""
    torch = require("torch")
    sizes = sizes if sizes is not None else _output_sizes(model, crop)
    cut = {}
    for b, (k1, k2) in zip(blocks(model), counts or []):
        cut[b.conv1] = (b.conv1.in_channels, k1)
        cut[b.conv2] = (k1, k2)
        cut[b.conv3] = (k2, b.conv3.out_channels)
    total = 0
    for m, hw in sizes.items():
        cin, cout = cut.get(m, (m.in_channels, m.out_channels))
        total += cin // m.groups * cout * m.kernel_size[0] * m.kernel_size[1] * hw
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return int(total)


def fraction_for(model, crop: int, mac_reduction: float, round_to: int, shares: list[float] | None = None,
                 sizes: dict | None = None) -> float:
    """The inner-channel fraction (times each block's share) whose pruned model has `mac_reduction` fewer MACs
    (0.3: 30% fewer). `sizes`: `_output_sizes`, as for `macs`."""
    sizes = sizes if sizes is not None else _output_sizes(model, crop)  # shapes do not change with the cut
    full = macs(model, crop, sizes=sizes)
    target = (1 - mac_reduction) * full
    low, high = 0.0, 0.95
    most = 1 - macs(model, crop, inner_counts(model, high, round_to, shares), sizes) / full
    if most < mac_reduction:
        raise UserError(f"pruning inner channels cannot remove {100 * mac_reduction:.0f}% of this model's MACs",
                        f"ask for at most p{int(100 * most)}"
                        + (", or use --allocation uniform" if shares else ", or use --method l1"))
    for _ in range(30):
        mid = (low + high) / 2
        if macs(model, crop, inner_counts(model, mid, round_to, shares), sizes) > target:
            low = mid
        else:
            high = mid
    return high


def give_back(model, crop: int, mac_reduction: float, counts: list[tuple[int, int]], round_to: int,
              sizes: dict | None = None) -> list[tuple[int, int]]:
    """`counts` with `round_to` channels of conv1 and conv2 given back to each pruned block, the last block first,
    while the model still has `mac_reduction` fewer MACs: rounding every block down to `round_to` removes more than
    asked (p30 on ResNet-50: 31.2%), and those channels are accuracy for nothing. A block takes one step at most,
    so the shares stay as even as rounding allows; the last blocks take it because their errors reach the
    classifier with the fewest layers after them to make up for them."""
    sizes = sizes if sizes is not None else _output_sizes(model, crop)
    target = (1 - mac_reduction) * macs(model, crop, sizes=sizes)
    bs, counts = blocks(model), list(counts)
    for i in reversed(range(len(bs))):
        w1, w2 = bs[i].conv1.out_channels, bs[i].conv2.out_channels
        if counts[i] == (w1, w2):  # whole, by its share or its sensitivity
            continue
        trial = counts[:i] + [(min(w1, counts[i][0] + round_to), min(w2, counts[i][1] + round_to))] + counts[i + 1:]
        if macs(model, crop, trial, sizes) <= target:
            counts = trial
    return counts


def _chunked(f, x, chunk: int):
    """f over x, `chunk` images at a time (memory of one chunk's intermediates), in float32; the results are kept
    in float16 (`_gather`)."""
    return _gather(lambda i: f(x[i:i + chunk].float()), len(x), chunk)


def _gather(f, n: int, chunk: int):
    """The results of f(i) for the chunks i = 0, chunk, 2 * chunk, ... of n images, kept in float16: half the
    memory of float32 (the activations of every image at one block are what bounds the reconstruction's memory;
    float16's relative error, 5e-4, is far below what pruning moves)."""
    torch = require("torch")
    out = None
    for i in range(0, n, chunk):
        y = f(i)
        if out is None:
            out = torch.empty((n, *y.shape[1:]), dtype=torch.float16)
        out[i:i + len(y)] = _half(y)
    return out


def _half(y):
    """y in float16, refusing what float16 cannot hold (an activation beyond 65504 would turn into inf)."""
    torch = require("torch")
    h = y.half()
    if not bool(torch.isfinite(h).all()):
        raise UserError("this model's activations exceed float16's range (65504), which the reconstruction keeps "
                        "them in", "check the checkpoint: a trained network's activations stay far below it")
    return h


def _stem(model, x, chunk: int):
    """The input of the first block: conv1, BN, ReLU, max-pool."""
    return _chunked(lambda xs: model.maxpool(model.relu(model.bn1(model.conv1(xs)))), x, chunk)


def _head(model, x):
    torch = require("torch")
    return model.fc(torch.flatten(model.avgpool(x.float()), 1))


def sensitivities(teacher, images, preprocess, fraction: float = 0.5, round_to: int = 8, damp: float = 1e-3,
                  positions: int = 512, chunk: int = 16, selection: str = "obs") -> list[float]:
    """Per block, how much the network's output moves when only that block loses `fraction` of its inner channels
    and is re-fitted: KL(FP32 || pruned) of the softmax outputs, mean over `images`."""
    torch = require("torch")
    F = torch.nn.functional
    t = teacher.eval()
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        x = torch.from_numpy(preprocess.normalize(images.pixels))
        h = _stem(t, x, chunk)
        inputs = []
        for b in blocks(t):
            inputs.append(h)
            h = _chunked(b, h, chunk)
        reference = F.log_softmax(_head(t, h), 1)
        for i, tb in enumerate(blocks(t)):
            k1, k2 = inner_counts_of(tb, fraction, round_to)
            _, h = _block(tb, copy.deepcopy(tb), k1, k2, inputs[i], inputs[i], damp, positions, chunk, gen, F,
                          selection)
            for b in blocks(t)[i + 1:]:
                h = _chunked(b, h, chunk)
            pruned = F.log_softmax(_head(t, h), 1)
            out.append(float(F.kl_div(pruned, reference, log_target=True, reduction="batchmean")))
    return out


def allocate(model, crop: int, mac_reduction: float, sens: list[float], measured_at: float, round_to: int,
             most: float = 0.75) -> list[tuple[int, int]]:
    """Per-block inner channel counts with `mac_reduction` fewer MACs, where they cost least: greedily, `round_to`
    channels of conv1 and conv2 at a time from the block whose modelled loss grows least per MAC saved. A block's
    loss at fraction f is modelled as sens * (f / measured_at)^2 (the least useful channels go first); no block
    loses more than `most` of its channels."""
    sizes = _output_sizes(model, crop)
    full = macs(model, crop, sizes=sizes)
    target = (1 - mac_reduction) * full
    bs = blocks(model)
    widths = [(b.conv1.out_channels, b.conv2.out_channels) for b in bs]
    counts = list(widths)

    def loss(i: int, k: tuple[int, int]) -> float:
        f = 1 - (k[0] + k[1]) / (widths[i][0] + widths[i][1])
        return sens[i] * (f / measured_at) ** 2

    current = macs(model, crop, counts, sizes)
    while current > target:
        best = None
        for i, (k1, k2) in enumerate(counts):
            step = (k1 - round_to, k2 - round_to)
            if min(step[0] / widths[i][0], step[1] / widths[i][1]) < 1 - most or min(step) < round_to:
                continue
            trial = counts[:i] + [step] + counts[i + 1:]
            saved = current - macs(model, crop, trial, sizes)
            cost = (loss(i, step) - loss(i, counts[i])) / max(saved, 1)
            if best is None or cost < best[0]:
                best = (cost, i, step, current - saved)
        if best is None:
            raise UserError(f"pruning inner channels cannot remove {100 * mac_reduction:.0f}% of this model's MACs",
                            "ask for a smaller pNN, or use --method l1")
        _, i, step, current = best
        counts[i] = step
    return counts


class _Ridge:
    """Accumulates X^T X and X^T Y over chunks; solves the ridge regression with a bias column."""

    def __init__(self, features: int, outputs: int):
        torch = require("torch")
        self.xx = torch.zeros(features + 1, features + 1, dtype=torch.float64)
        self.xy = torch.zeros(features + 1, outputs, dtype=torch.float64)

    def add(self, x, y, gram: bool = True) -> None:  # x (samples, features), y (samples, outputs)
        torch = require("torch")
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        # one chunk's products in float32 (the cost of the fit), summed over chunks in float64
        if gram:
            self.xx += (x.T @ x).double()
        self.xy += (x.T @ y).double()

    def damped(self, damp: float):
        """X^T X with damp * (its mean weight diagonal) added to the weights' diagonal: the bias is not shrunk."""
        h = self.xx.clone()
        h.diagonal()[:-1] += damp * h.diagonal()[:-1].mean().clamp_min(1e-12)
        return h

    def solve(self, damp: float):
        torch = require("torch")
        sol = torch.linalg.solve(self.damped(damp), self.xy)
        return sol[:-1].T.float(), sol[-1].float()  # weight (outputs, features), bias (outputs,)


RELU_ROUNDS = 2  # rounds of `_relu_fit` after the plain fit: p30 on 256 images, agreement 84.7% -> 86.0%


def _relu_fit(rows, features: int, outputs: int, damp: float, rounds: int | None = None):
    """Weight (outputs, features) and bias such that ReLU(x W^T + b + off) matches ReLU(y + off) on the rows that
    `rows()` yields as (x, y, off). The next layer only sees what passes the ReLU: where
    y + off <= 0, any prediction at or below -off is exact. So after the ridge fit to y, each round fits those
    rows to min(prediction, -off) instead (majorize-minimize: every round lowers the error where the target is
    active plus the error after the ReLU where it is not); X^T X stays, only X^T Y is gathered again. The rows
    are kept in memory for the rounds (at most about 2 GB for ResNet-50 on 1,000 images): a round is then two
    matrix products, not the network's forward passes again."""
    torch = require("torch")
    rounds = RELU_ROUNDS if rounds is None else rounds
    data = list(rows()) if rounds else rows()
    ridge = _Ridge(features, outputs)
    for x, y, _ in data:
        ridge.add(x, y)
    w, b = ridge.solve(damp)
    for _ in range(rounds):
        ridge.xy.zero_()
        for x, y, off in data:
            ridge.add(x, torch.where(y + off > 0, y, torch.minimum(x @ w.T + b, -off)), gram=False)
        w, b = ridge.solve(damp)
    return w, b


def _obs_keep(ridge: _Ridge, group: int, keep: int, damp: float):
    """The `keep` input channels (each `group` consecutive features of `ridge`) whose removal raises the re-fitted
    layer's squared error least, by optimal brain surgeon's group rule: removing the features S from the fitted
    weights W costs tr(W_S^T (H^-1)_SS^-1 W_S) (H = X^T X, damped), and the remaining features take up what
    they did (W and H^-1 are updated). Greedy: one channel at a time, the cheapest first."""
    torch = require("torch")
    hi = torch.linalg.inv(ridge.damped(damp))
    w = hi @ ridge.xy  # (features + 1, outputs): the ridge solution, bias row last
    alive = torch.ones((len(hi) - 1) // group, dtype=torch.bool)
    offsets = torch.arange(group)
    while int(alive.sum()) > keep:
        idx = torch.nonzero(alive).squeeze(1)
        rows = idx[:, None] * group + offsets  # (alive, group)
        ws = w[rows]  # (alive, group, outputs)
        cost = torch.einsum("cij,cjo,cio->c", torch.linalg.inv(hi[rows[:, :, None], rows[:, None, :]]), ws, ws)
        gone = rows[int(torch.argmin(cost))]
        m = hi[:, gone] @ torch.linalg.inv(hi[gone][:, gone])
        w -= m @ w[gone]
        hi -= m @ hi[gone]
        alive[gone[::group] // group] = False
    return torch.nonzero(alive).squeeze(1)


def _patches(x, conv):
    """(samples, features) rows of the conv's input patches, one per output position."""
    torch = require("torch")
    cols = torch.nn.functional.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(y):
    """(samples, channels) rows of an NCHW tensor, one per position."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def reconstruct(teacher, images, preprocess, mac_reduction: float, round_to: int = 8, damp: float = 1e-3,
                positions: int = 512, chunk: int = 16, progress: bool = True,
                allocation: str = "stages", sensitivity_images: int = 64,
                selection: str = "obs", refine_epochs: int = 0,
                seconds: float | None = None) -> tuple[object, dict]:
    """A copy of `teacher` with `mac_reduction` of its MACs removed from inner bottleneck channels and every
    block re-fitted on `images` (unlabelled), then refined by `refine_epochs` of Adam (`_refine`); with `seconds`,
    by as many of them as fit in what is left (`_Schedule`): the whole reconstruction ends within it.
    `allocation`: "stages", the same share of every block's channels but less in the last stage
    (`stage_shares`); "uniform", the same in every block; "sensitivity", per-block shares from each block's
    measured sensitivity on `sensitivity_images` (`sensitivities`, `allocate`). Returns the model and what was
    done."""
    torch = require("torch")
    F = torch.nn.functional
    from tqdm import tqdm

    started = time.perf_counter()
    teacher = teacher.eval()
    crop = preprocess.crop
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}")
    shares = stage_shares(teacher) if allocation == "stages" else None
    sizes = _output_sizes(teacher, crop)  # one forward pass for the search and the give-back
    fraction = fraction_for(teacher, crop, mac_reduction, round_to, shares, sizes)
    sens = None
    if allocation != "sensitivity":
        counts = give_back(teacher, crop, mac_reduction, inner_counts(teacher, fraction, round_to, shares), round_to,
                           sizes)
    else:
        probe = images.sample(sensitivity_images)
        sens = sensitivities(teacher, probe, preprocess, 0.5, round_to, damp, positions, chunk, selection)
        counts = allocate(teacher, crop, mac_reduction, sens, 0.5, round_to)
    student = copy.deepcopy(teacher)
    gen = torch.Generator().manual_seed(0)
    schedule = _Schedule(refine_epochs, None if seconds is None or not refine_epochs else
                         _pass_seconds(teacher, counts, crop, len(images)), seconds, started)
    with torch.no_grad():
        x = torch.from_numpy(preprocess.normalize(images.pixels))
        x_fp = _stem(teacher, x, chunk)
        x_pr = x_fp  # nothing pruned yet (blocks write new tensors, never into their inputs)
        pairs = list(zip(blocks(teacher), blocks(student), counts))
        bar = tqdm(pairs, desc="reconstruct", unit="block", file=sys.stderr, leave=False, disable=not progress)
        for tb, sb, (k1, k2) in bar:
            schedule.begin()
            x_fp, x_pr = _block(tb, sb, k1, k2, x_fp, x_pr, damp, positions, chunk, gen, F, selection,
                                schedule.passes)
            schedule.end()
            bar.set_postfix(passes=schedule.given[-1])
    facts = {"method": "reconstruct", "mac_reduction": mac_reduction, "round_to": round_to, "images": len(images),
             "inner_channels": counts, "allocation": allocation,
             "selection": selection, "refine_epochs": refine_epochs, "refine_passes": schedule.given}
    if sens is None:
        facts["inner_fraction"] = round(fraction, 4)
        if shares is not None:
            facts["stage_shares"] = list(STAGE_SHARES)
    else:
        facts["sensitivity"] = {"images": sensitivity_images, "fraction": 0.5, "kl": [round(k, 5) for k in sens]}
    return student.eval(), facts


def _block(tb, sb, k1, k2, x_fp, x_pr, damp, positions, chunk, gen, F, selection="obs",
           refine: Callable[[], int] = lambda: 0):
    """Block `sb` of the student pruned to (k1, k2) inner channels and re-fitted to `tb`'s output, then refined by
    `refine()` passes (asked once the fit is done); returns the FP32 and the pruned network's next inputs."""
    torch = require("torch")
    (w1, b1), (w2, b2), (w3, b3) = _fold(tb.conv1, tb.bn1), _fold(tb.conv2, tb.bn2), _fold(tb.conv3, tb.bn3)
    ds = tb.downsample

    def shortcut(xs):
        return ds(xs) if ds is not None else xs

    def fp(xs, depth: int = 3):  # the FP32 block's pre-activations, only as deep as asked
        a1 = F.conv2d(xs, w1, b1, tb.conv1.stride, tb.conv1.padding)
        if depth == 1:
            return (a1,)
        a2 = F.conv2d(a1.relu(), w2, b2, tb.conv2.stride, tb.conv2.padding)
        if depth == 2:
            return a1, a2
        return a1, a2, F.conv2d(a2.relu(), w3, b3), shortcut(xs)

    def fp_in(i):  # one chunk of the FP32 network's / the pruned network's input to this block, in float32
        return x_fp[i:i + chunk].float()

    def pr(i):
        return x_pr[i:i + chunk].float()

    whole = (k1, k2) == (w1.shape[0], w2.shape[0])
    keep1, keep2 = torch.arange(w1.shape[0]), torch.arange(w2.shape[0])
    if not whole:
        keep1, keep2 = _choose(fp, fp_in, len(x_fp), w2, w3, k1, k2, tb.conv2, damp, positions, chunk, gen,
                               selection)

    conv1, conv2, conv3 = _convs(tb, k1, k2)

    def fit(conv, inputs, target, offset=None) -> tuple:
        """conv re-fitted so that ReLU(conv(inputs) + offset) matches ReLU(target) (`_relu_fit`): the branch is
        fitted to target - offset, so it makes up the offset's error too."""
        seed = int(torch.randint(2**31, (1,), generator=gen))

        def rows():  # positions sampled by the fit's own seed
            g = torch.Generator().manual_seed(seed)
            for i in range(0, len(x_fp), chunk):
                xs, ys = _patches(inputs(i), conv), _rows(target(i))
                idx = torch.randperm(len(xs), generator=g)[:positions * chunk]
                if offset is None:
                    yield xs[idx], ys[idx], torch.zeros(())
                else:
                    off = _rows(offset(i))[idx]
                    yield xs[idx], ys[idx] - off, off

        w, b = _relu_fit(rows, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels,
                         damp)
        conv.weight.copy_(w.reshape(conv.weight.shape))
        return b

    def r1(i):
        return F.conv2d(pr(i), conv1.weight, bias1, conv1.stride).relu()

    def r2(i):
        return F.conv2d(r1(i), conv2.weight, bias2, conv2.stride, conv2.padding).relu()

    bias1 = fit(conv1, pr, lambda i: fp(fp_in(i), 1)[0][:, keep1])
    bias2 = fit(conv2, r1, lambda i: fp(fp_in(i), 2)[1][:, keep2])

    def block_fp(i):  # the FP32 block's output before its ReLU
        _, _, a3, idf = fp(fp_in(i))
        return a3 + idf

    bias3 = fit(conv3, r2, block_fp, lambda i: shortcut(pr(i)))  # the shortcut's error is the branch's to make up
    nxt_fp = _gather(lambda i: block_fp(i).relu(), len(x_fp), chunk)
    for name, conv, bias in (("1", conv1, bias1), ("2", conv2, bias2), ("3", conv3, bias3)):
        setattr(sb, f"conv{name}", conv)
        setattr(sb, f"bn{name}", _identity_bn(bias))
    passes = refine()
    if passes:
        nxt_pr = _refine(sb, x_pr, nxt_fp, passes, REFINE_LR / 10 if whole else REFINE_LR, gen, chunk)
    else:
        nxt_pr = _gather(lambda i: (F.conv2d(r2(i), conv3.weight, bias3) + shortcut(pr(i))).relu(), len(x_pr), chunk)
    return nxt_fp, nxt_pr


def _convs(tb, k1: int, k2: int) -> tuple:
    """conv1, conv2 and conv3 of block `tb` with (k1, k2) inner channels, without bias (BatchNorm adds it)."""
    torch = require("torch")
    return (torch.nn.Conv2d(tb.conv1.in_channels, k1, 1, tb.conv1.stride, bias=False),
            torch.nn.Conv2d(k1, k2, 3, tb.conv2.stride, tb.conv2.padding, bias=False),
            torch.nn.Conv2d(k2, tb.conv3.out_channels, 1, bias=False))


REFINE_LR = 1e-3  # Adam; a block left whole moves at a tenth (its fit is already close: at 1e-3 layer4 diverged)
REFINE_BATCH = 16


def _refine(block, x, target, epochs: int, lr: float, gen, chunk: int):
    """Adam on all of `block`'s weights toward `target` (the FP32 block's output) from `x` (the pruned network's
    input to it), `epochs` passes over the images under a cosine decay. The closed-form fits hold conv1 and conv2
    to FP32's kept channels; here they may move to whatever serves the block's output. Kept only if the error on
    these images went down (a step size too large for a block makes it worse, never the model). Returns the
    block's outputs on `x`, as `_chunked` keeps them."""
    torch = require("torch")

    def outputs():  # the block's outputs and their squared error to `target`, in one pass
        error = 0.0

        def f(i):
            nonlocal error
            y = block(x[i:i + chunk].float())
            error += float((y - target[i:i + chunk].float()).pow(2).sum())
            return y

        return _gather(f, len(x), chunk), error

    before, saved = outputs()[1], copy.deepcopy(block.state_dict())
    batch = min(REFINE_BATCH, len(x))
    steps = epochs * (len(x) // batch)
    with torch.enable_grad():
        opt = torch.optim.Adam(block.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - batch + 1, batch):
                idx = order[i:i + batch]
                loss = (block(x[idx].float()) - target[idx].float()).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
    try:
        out, after = outputs()
    except UserError:  # outputs beyond float16's range (`_half`): the step diverged
        out, after = None, math.inf
    if after < before:
        return out
    block.load_state_dict(saved)
    return _chunked(block, x, chunk)


RESERVE = 0.02  # of a time limit, left unplanned: p30 on the reference model ended 0.1 min past 45 without it


class _Schedule:
    """How many refinement passes each block gets, at most `most`: with a time limit (`seconds` from `started`),
    as many as fit in what is left once the later blocks' fits (as long as the fits so far, on average) and as
    many passes of theirs are counted. A pass's cost is `costs` (`_pass_seconds`, one per block) scaled by what the
    refined blocks actually took, so a probe that misjudges this machine is corrected as the blocks go."""

    def __init__(self, most: int, costs: list[float] | None = None, seconds: float | None = None,
                 started: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        self.most, self.costs, self.clock = most, costs or [], clock
        # a reserve of the time for what the estimates miss: the last block has no later one to absorb it
        self.deadline = None if seconds is None or costs is None else started + (1 - RESERVE) * seconds
        self.fits: list[float] = []
        self.given: list[int] = []
        self.taken, self.expected = 0.0, 0.0

    def begin(self) -> None:
        self.t0 = self.clock()

    def passes(self) -> int:
        """The next block's passes, asked once its fit is done."""
        now, i = self.clock(), len(self.given)
        self.fits.append(now - self.t0)
        n = self.most
        if self.deadline is not None:
            later_fits = sum(self.fits) / len(self.fits) * (len(self.costs) - i - 1)
            scale = self.taken / self.expected if self.expected else 1.0
            # n + 1 passes' time a block: the refinement runs the block over the images twice more to measure it
            n = min(n, int((self.deadline - now - later_fits) / (scale * sum(self.costs[i:]))) - 1)
        self.t1 = now
        self.given.append(max(n, 0))
        return self.given[-1]

    def end(self) -> None:
        n = self.given[-1]
        if n and self.deadline is not None:
            self.taken += self.clock() - self.t1
            self.expected += (n + 1) * self.costs[len(self.given) - 1]


def _pass_seconds(teacher, counts: list[tuple[int, int]], crop: int, n: int, bs: list | None = None) -> list[float]:
    """Seconds one refinement pass over `n` images takes for each block (`bs`, by default all of them) once pruned
    to `counts`, from one timed Adam step on random inputs of its shape (after one untimed)."""
    torch = require("torch")
    shapes: dict = {}
    bs = blocks(teacher) if bs is None else bs
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, i[0].shape[1:])) for b in bs]
    with torch.no_grad():
        teacher.eval()(torch.zeros(1, 3, crop, crop))
    for h in hooks:
        h.remove()
    batch, costs = REFINE_BATCH, []
    for b, (k1, k2) in zip(bs, counts):
        block = copy.deepcopy(b).eval()  # as `_refine` trains it: BatchNorm folded, its statistics fixed
        block.conv1, block.conv2, block.conv3 = _convs(b, k1, k2)
        block.bn1, block.bn2 = _identity_bn(torch.zeros(k1)), _identity_bn(torch.zeros(k2))
        opt = torch.optim.Adam(block.parameters())
        x = torch.randn(batch, *shapes[b])
        with torch.enable_grad():
            for _ in range(2):
                t = time.perf_counter()
                block(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
        costs.append((time.perf_counter() - t) * (n // batch))
    return costs


SELECTION_IMAGES = 512  # obs: the consumer statistics of this many images choose the channels; more only refine the fit


def _choose(fp, fp_in, n, w2, w3, k1, k2, conv2, damp, positions, chunk, gen, selection):
    """Which inner channels stay, judged on the FP32 network. "obs": those whose loss the consumer (conv2 for
    conv1's outputs, conv3 for conv2's), re-fitted, feels least (`_obs_keep`), from the first `SELECTION_IMAGES`
    of the n images; "energy": activation energy through the consumer's weights, E[a_c^2] * ||W_next[:, c]||^2."""
    torch = require("torch")
    if selection == "obs":
        c2, c3 = _Ridge(w2.shape[1] * 9, w2.shape[0]), _Ridge(w3.shape[1], w3.shape[0])
        for i in range(0, min(n, SELECTION_IMAGES), chunk):
            a1, a2, a3, _ = fp(fp_in(i))
            for ridge, xs, ys in ((c2, _patches(a1.relu(), conv2), _rows(a2)), (c3, _rows(a2.relu()), _rows(a3))):
                idx = torch.randperm(len(xs), generator=gen)[:positions * chunk]
                ridge.add(xs[idx], ys[idx])
        return _obs_keep(c2, 9, k1, damp), _obs_keep(c3, 1, k2, damp)
    e1 = torch.zeros(w2.shape[1], dtype=torch.float64)
    e2 = torch.zeros(w2.shape[0], dtype=torch.float64)
    for i in range(0, n, chunk):
        a1, a2 = fp(fp_in(i), 2)
        e1 += a1.relu().pow(2).mean((0, 2, 3)).double()
        e2 += a2.relu().pow(2).mean((0, 2, 3)).double()
    keep1 = torch.argsort(e1 * w2.pow(2).sum((0, 2, 3)).double(), descending=True)[:k1].sort().values
    keep2 = torch.argsort(e2 * w3.pow(2).sum((0, 2, 3)).double(), descending=True)[:k2].sort().values
    return keep1, keep2


def droppable(model) -> list[int]:
    """Indices (in `blocks`) of the blocks whose shortcut is the identity: the network still fits without them."""
    return [i for i, b in enumerate(blocks(model)) if b.downsample is None]


def drop_sensitivities(teacher, images, preprocess, gone=(), chunk: int = 16) -> dict[int, float]:
    """Per droppable block not in `gone`, how much the network's output moves when it is dropped too (nothing
    re-fitted): KL(FP32 || dropped) of the softmax outputs, mean over `images`."""
    torch = require("torch")
    F = torch.nn.functional
    t = teacher.eval()
    bs = blocks(t)
    out = {}
    with torch.no_grad():
        x = _stem(t, torch.from_numpy(preprocess.normalize(images.pixels)), chunk)
        h = x
        for b in bs:
            h = _chunked(b, h, chunk)
        reference = F.log_softmax(_head(t, h), 1)
        h, inputs = x, []
        for i, b in enumerate(bs):  # the inputs of each block with `gone` already dropped
            inputs.append(h)
            h = h if i in gone else _chunked(b, h, chunk)
        for i in droppable(t):
            if i in gone:
                continue
            h = inputs[i]
            for j in range(i + 1, len(bs)):
                h = h if j in gone else _chunked(bs[j], h, chunk)
            dropped = F.log_softmax(_head(t, h), 1)
            out[i] = float(F.kl_div(dropped, reference, log_target=True, reduction="batchmean"))
    return out


def drop(teacher, images, preprocess, n: int, damp: float = 1e-3, positions: int = 512, chunk: int = 16,
         progress: bool = True, sensitivity_images: int = 64, greedy: bool = True, refine_epochs: int = 0,
         seconds: float | None = None) -> tuple[object, dict]:
    """A copy of `teacher` without `n` identity-shortcut blocks, chosen greedily: each time the one whose drop moves
    the output least with those already chosen gone (`drop_sensitivities` on `sensitivity_images` of `images`;
    `greedy=False`: the n least sensitive alone, measured once).
    Then every block after the first one dropped is re-fitted on `images` as `reconstruct` does, at full width:
    from the dropped network's own inputs to the FP32 activations, so each block's conv3 makes up what the blocks
    before it no longer add; each then refined as `reconstruct` refines (`refine_epochs`, `seconds`). Returns the
    model and what was done."""
    torch = require("torch")
    F = torch.nn.functional
    from torchvision.models.resnet import Bottleneck
    from tqdm import tqdm

    from compress import prune

    started = time.perf_counter()
    teacher = teacher.eval()
    candidates = droppable(teacher)
    if not 0 < n <= len(candidates):
        raise UserError(f"d{n}: this model has {len(candidates)} blocks that can be dropped",
                        f"ask for d1..d{len(candidates)}")
    probe, gone, chosen = images.sample(sensitivity_images), [], []
    for _ in range(n if greedy else 1):  # each block's cost measured with those already chosen gone
        sens = drop_sensitivities(teacher, probe, preprocess, gone, chunk)
        gone += sorted(sens, key=sens.__getitem__)[: 1 if greedy else n]
        chosen.append(sens)
    gone.sort()
    student = copy.deepcopy(teacher)
    names = [name for name, m in student.named_modules() if isinstance(m, Bottleneck)]
    gen = torch.Generator().manual_seed(0)
    tbs = blocks(teacher)
    refit = [i for i in range(len(tbs)) if i > gone[0] and i not in gone]  # before the first drop: nothing to make up
    refitted = [tbs[i] for i in refit]
    whole = [(b.conv1.out_channels, b.conv2.out_channels) for b in refitted]
    schedule = _Schedule(refine_epochs, None if seconds is None or not refine_epochs else
                         _pass_seconds(teacher, whole, preprocess.crop, len(images), refitted), seconds, started)
    with torch.no_grad():
        x_fp = _stem(teacher, torch.from_numpy(preprocess.normalize(images.pixels)), chunk)
        x_pr = x_fp
        pairs = list(enumerate(zip(tbs, blocks(student))))
        bar = tqdm(pairs, desc="reconstruct", unit="block", file=sys.stderr, leave=False, disable=not progress)
        for i, (tb, sb) in bar:
            if i not in refit:  # dropped, or before the first drop
                x_fp = _chunked(tb, x_fp, chunk)
                x_pr = x_pr if i in gone else x_fp
                continue
            schedule.begin()
            x_fp, x_pr = _block(tb, sb, tb.conv1.out_channels, tb.conv2.out_channels, x_fp, x_pr, damp, positions,
                                chunk, gen, F, refine=schedule.passes)
            schedule.end()
            bar.set_postfix(passes=schedule.given[-1])
    prune.drop_blocks(student, [names[i] for i in gone])
    facts = {"method": "drop", "selection": "greedy" if greedy else "independent",
             "blocks_dropped": [names[i] for i in gone], "images": len(images),
             "refine_epochs": refine_epochs, "refine_passes": schedule.given,
             "sensitivity": {"images": min(sensitivity_images, len(images)),
                             "kl": [{names[i]: round(k, 5) for i, k in step.items()} for step in chosen]}}
    return student.eval(), facts


def _identity_bn(bias):
    """A BatchNorm that adds `bias` and nothing else: the model keeps its layer structure (and the safe reload of
    `prune.load`), the folded scale lives in the conv's weights."""
    torch = require("torch")
    bn = torch.nn.BatchNorm2d(len(bias)).eval()
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(bias)
    return bn
