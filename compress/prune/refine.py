"""The refinement: Adam on a whole block toward the FP32 block's output after its closed-form fit, and how many
passes each block gets."""

from __future__ import annotations

import copy
import math
import time

from compress.core.errors import UserError, require
from compress.prune.allocate import blocks, shapes
from compress.prune.config import ReconstructConfig
from compress.prune.lstsq import identity_bn
from compress.prune.stream import chunked, folder_of, gather


def convs(tb, k1: int, k2: int) -> tuple:
    """conv1, conv2 and conv3 of block `tb` with (k1, k2) inner channels, without bias (BatchNorm adds it)."""
    torch = require("torch")
    return (torch.nn.Conv2d(tb.conv1.in_channels, k1, 1, tb.conv1.stride, bias=False),
            torch.nn.Conv2d(k1, k2, 3, tb.conv2.stride, tb.conv2.padding, bias=False),
            torch.nn.Conv2d(k2, tb.conv3.out_channels, 1, bias=False))


def refine(block, x, target, epochs: int, lr: float, gen, config: ReconstructConfig, mix: tuple | None = None):
    """Adam on all of `block`'s weights toward `target` (the FP32 block's output) from `x` (the pruned network's
    input to it), `epochs` passes over the images under a cosine decay (batches of `config.refine_batch`). The
    closed-form fits hold conv1 and conv2 to FP32's kept channels; here they may move to whatever serves the
    block's output. Kept only if the error on these images went down (a step size too large for a block makes it
    worse, never the model). Returns the block's outputs on `x`, as `chunked` keeps them. `mix` (x_fp, p): each
    input element taken from the FP32 network's input `x_fp` with probability p (QDrop's regulariser; a study)."""
    torch = require("torch")
    chunk, batch = config.chunk, config.refine_batch

    def outputs(keep: bool = True):  # the block's outputs (kept where x is) and their squared error to `target`
        error = 0.0

        def f(i):
            nonlocal error
            with torch.no_grad():  # measured, not trained: whether or not the caller holds gradients
                y = block(x[i:i + chunk].float())
                error += float((y - target[i:i + chunk].float()).pow(2).sum())
            return y

        if not keep:
            for i in range(0, len(x), chunk):
                f(i)
            return None, error
        return gather(f, len(x), chunk, folder_of(x)), error

    before, saved = outputs(keep=False)[1], copy.deepcopy(block.state_dict())
    side = window_side(target.shape[-1], config.refine_window)
    batch = min(batch, len(x))
    steps = epochs * (len(x) // batch)
    with torch.enable_grad():
        opt = torch.optim.Adam(block.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - batch + 1, batch):
                idx = order[i:i + batch]
                xi, ti = x[idx].float(), target[idx].float()
                if mix is not None:
                    xi = torch.where(torch.rand(xi.shape, generator=gen) < mix[1], mix[0][idx].float(), xi)
                if side < ti.shape[-1]:
                    xi, ti, inner = windows(xi, ti, side, gen)
                    loss = (block(xi)[..., inner, inner] - ti).pow(2).mean()
                else:
                    loss = (block(xi) - ti).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
    try:
        out, after = outputs()
    except UserError:  # outputs beyond float16's range (`half`): the step diverged
        out, after = None, math.inf
    if after < before:
        return out
    block.load_state_dict(saved)
    return chunked(block, x, chunk)


def window_side(side: int, fraction: float) -> int:
    """The output side a refinement step trains on when it sees `fraction` of a block's `side`: that much, plus
    the one-pixel rim a 3x3 conv sees beyond it (computed, not scored), and never below 3."""
    return side if fraction >= 1 else min(side, max(1, round(fraction * side)) + 2)


def windows(x, target, side: int, gen) -> tuple:
    """One random window of the batch: the block's input `x` cropped to what gives `side` x `side` outputs, the
    target cropped to their inner (side - 2) x (side - 2), and the slice of the outputs that is scored. At the
    window's rim conv2 sees zero padding where the whole image has pixels, so the rim is computed but not scored;
    inside it, every output is what the whole image gives (conv2 is the only conv wider than 1x1, and a stride-2
    block samples its window from an even offset, as it does the image)."""
    torch = require("torch")
    stride = x.shape[-1] // target.shape[-1]
    top, left = (int(v) for v in torch.randint(target.shape[-1] - side + 1, (2,), generator=gen))
    xs = x[..., top * stride:(top + side) * stride, left * stride:(left + side) * stride]
    ts = target[..., top + 1:top + side - 1, left + 1:left + side - 1]
    return xs, ts, slice(1, side - 1)


FIT_PASSES = 3.2  # the closed-form fits cost about this many passes, as `pass_seconds` probes a pass: ResNet-50 p30
# on 2 CPU cores at 1,000 images, 19.9 minutes of recovery with 4 passes a block (memory.md) against a probed pass
# of 146 s (refine-cost.md). Fewer images weigh the fits more (the choice of channels sees at most 512 of them)


def plan_passes(costs: list[float], seconds: float, most: int, reserve: float = 0.02) -> list[int]:
    """Refinement passes for each block so that the whole recovery is estimated to end within `seconds`: the same
    number for every block, at most `most`, from `costs` (one pass's seconds per block, `pass_seconds`), the
    fits estimated at FIT_PASSES passes, each block's passes plus one (its error is measured before and after),
    and `reserve` of the time left unplanned. Made once, before any work, from the options and one probe: the
    run records it and a rerun reuses it, so the model does not depend on the machine's load while it works."""
    total = sum(costs)
    if total <= 0:
        return [most] * len(costs)
    n = math.floor((1 - reserve) * seconds / total - FIT_PASSES + 1e-9) - 1  # a limit just enough is enough
    return [max(0, min(most, n))] * len(costs)


def planned_seconds(costs: list[float], passes: int) -> float:
    """What `plan_passes` expects `passes` passes a block to take, the fits included."""
    return (FIT_PASSES + passes + 1) * sum(costs)


def pass_seconds(teacher, counts: list[tuple[int, int]], crop: int, n: int, batch: int = 16,
                 bs: list | None = None, window: float = 1.0) -> list[float]:
    """Seconds one refinement pass over `n` images takes for each block (`bs`, by default all of them) once pruned
    to `counts`, from one timed Adam step on random inputs of its shape, or of its `window` (after one untimed)."""
    torch = require("torch")
    bs = blocks(teacher) if bs is None else bs
    inputs = {}
    for b, (i, o) in shapes(teacher, crop, bs).items():  # each block's input, cropped to what its window needs
        side, stride = window_side(o[-1], window), i[-1] // o[-1]
        inputs[b] = (i[0], side * stride, side * stride)
    costs = []
    for b, (k1, k2) in zip(bs, counts):
        block = copy.deepcopy(b).eval()  # as `refine` trains it: BatchNorm folded, its statistics fixed
        block.conv1, block.conv2, block.conv3 = convs(b, k1, k2)
        block.bn1, block.bn2 = identity_bn(torch.zeros(k1)), identity_bn(torch.zeros(k2))
        opt = torch.optim.Adam(block.parameters())
        x = torch.randn(batch, *inputs[b])
        with torch.enable_grad():
            for _ in range(2):
                t = time.perf_counter()
                block(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
        costs.append((time.perf_counter() - t) * (n // batch))
    return costs
