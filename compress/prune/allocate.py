"""Where pNN cuts: how many inner channels each residual block keeps, and the MACs that leaves."""

from __future__ import annotations

import itertools

from compress.core.errors import UserError, require


def blocks(model) -> list:
    from torchvision.models.resnet import Bottleneck

    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def inner_counts_of(block, fraction: float, round_to: int) -> tuple[int, int]:
    """Channels kept in conv1 and conv2 of a block when `fraction` of them go, rounded to `round_to`; none go at
    fraction 0, even from a width that is not a multiple of `round_to`."""
    def keep(c: int) -> int:
        if fraction <= 0:
            return c
        return int(min(c, max(round_to, round_to * round((1 - fraction) * c / round_to))))

    return keep(block.conv1.out_channels), keep(block.conv2.out_channels)


def stage_shares(model, shares: tuple[float, ...]) -> list[float]:
    """Each block's share of the pruned fraction, by stage (a stage starts at a block whose shortcut is not the
    identity; counted back from the last, so a model with fewer stages takes the last `shares`, and one with
    more gives the extra first stages the first share). By default the last stage loses nothing: its fit has the
    fewest rows (7x7 positions per image at 224 pixels, for the widest convs) and its errors reach the classifier
    directly (on ResNet-50 at p30 this removes more than a quarter of the flips that reconstruction leaves); the
    third loses less than the first two, because the refinement's gains carry over to unseen images in layer1 and
    layer2 and stop doing so in layer3 (p30: 62 flips with shares 1:1:1:0, 57 with these)."""
    starts = list(itertools.accumulate(b.downsample is not None for b in blocks(model)))
    stage = [max(0, s - 1) for s in starts]
    n = stage[-1] + 1 if stage else 0
    return [float(shares[max(0, len(shares) - n + s)]) for s in stage]


def inner_counts(model, fraction: float, round_to: int, shares: list[float] | None = None,
                 most_cut: float = 0.5) -> list[tuple[int, int]]:
    """Channels kept in conv1 and conv2 of each block when `fraction` (times the block's share) of them go,
    rounded to `round_to`. A share above 1 takes a block to at most `most_cut` of its channels, or to `fraction`
    when that is more: the default shares were measured at p30, where layer1 loses half, and nothing measured says
    a stage should lose more than that while the others lose less (at p50, layer1 would keep 8 of 64)."""
    bs = blocks(model)
    return [inner_counts_of(b, min(fraction * s, max(fraction, most_cut)), round_to)
            for b, s in zip(bs, shares or [1.0] * len(bs))]


def shapes(model, crop: int, modules: list) -> dict:
    """Each of `modules`' (input, output) shapes, (C, H, W), at this crop: one forward pass."""
    torch = require("torch")
    out: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o: out.__setitem__(m, (i[0].shape[1:], o.shape[1:])))
             for m in modules]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, crop, crop))
    for h in hooks:
        h.remove()
    return out


def output_sizes(model, crop: int) -> dict:
    """Each conv's output positions (H x W) at this crop: one forward pass."""
    torch = require("torch")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return {m: o[1] * o[2] for m, (_, o) in shapes(model, crop, convs).items()}


def macs(model, crop: int, counts: list[tuple[int, int]] | None = None, sizes: dict | None = None) -> int:
    """Conv and linear MACs at batch 1 of `model`, or of it with each block's inner channels cut to `counts`
    (what pNN counts; the report's MACs are Torch-Pruning's count of every op). `sizes`: `output_sizes`, when
    the caller counts many cuts of one model."""
    torch = require("torch")
    sizes = sizes if sizes is not None else output_sizes(model, crop)
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
                 sizes: dict | None = None, most_cut: float = 0.5) -> float:
    """The inner-channel fraction (times each block's share) whose pruned model has `mac_reduction` fewer MACs
    (0.3: 30% fewer). `sizes`: `output_sizes`, as for `macs`."""
    sizes = sizes if sizes is not None else output_sizes(model, crop)  # shapes do not change with the cut
    full = macs(model, crop, sizes=sizes)
    target = (1 - mac_reduction) * full
    low, high = 0.0, 0.95
    most = 1 - macs(model, crop, inner_counts(model, high, round_to, shares, most_cut), sizes) / full
    if most < mac_reduction:
        other = "--allocation uniform" if shares else "--method l1"
        can = f"ask for at most p{int(100 * most)}, or use {other}" if int(100 * most) >= 1 else f"use {other}"
        raise UserError(f"pruning inner channels cannot remove {100 * mac_reduction:.0f}% of this model's MACs", can)
    for _ in range(30):
        mid = (low + high) / 2
        if macs(model, crop, inner_counts(model, mid, round_to, shares, most_cut), sizes) > target:
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
    sizes = sizes if sizes is not None else output_sizes(model, crop)
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


def allocate(model, crop: int, mac_reduction: float, sens: list[float], measured_at: float, round_to: int,
             most: float = 0.75) -> list[tuple[int, int]]:
    """Per-block inner channel counts with `mac_reduction` fewer MACs, where they cost least: greedily, `round_to`
    channels of conv1 and conv2 at a time from the block whose modelled loss grows least per MAC saved. A block's
    loss at fraction f is modelled as sens * (f / measured_at)^2 (the least useful channels go first); no block
    loses more than `most` of its channels."""
    sizes = output_sizes(model, crop)
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
