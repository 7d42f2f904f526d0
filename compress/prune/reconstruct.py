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
(`relu_fit`). Statistics are accumulated over image chunks at sampled positions, the FP32 block's targets come
from one pass of it (`teacher_outputs`, `target_rows`), and the activations of every image at the current block
are spilled to disk (`stream.Spill`): memory is bounded by the chunk and the block, not the image count. Then,
optionally, a few passes of Adam on the whole block toward the FP32 block's output (`refine`), which the
closed-form fits cannot do: move conv1 and conv2 off FP32's kept channels.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

from compress.core.errors import UserError, log, require
from compress.prune import channels as prune
from compress.prune.allocate import (
    allocate,
    blocks,
    fraction_for,
    give_back,
    inner_counts,
    inner_counts_of,
    output_sizes,
    stage_shares,
)
from compress.prune.config import DEFAULT, ReconstructConfig
from compress.prune.lstsq import Ridge, fold, identity_bn, obs_keep, output_size, patches, position_rows, relu_fit
from compress.prune.refine import convs, refine
from compress.prune.stream import Pixels, Tape, chunked, folder_of, gather, head, keep_freed_memory, spill_folder, stem

REVISION = 5  # of what a recovery does with the same options: a saved pruned model from another one is redone
# (2: dN's blocks are refined too; 3: pNN gives back what rounding removed beyond NN%, `give_back`;
# 4: the cut moves from layer3 to layer1 and layer2, `ReconstructConfig.stage_shares`; 5: a plan fixed by the
# options, not the clock, a random stream per block, the next inputs through the blocks' own forward)


def sensitivities(teacher, images, preprocess, config: ReconstructConfig, fraction: float = 0.5) -> list[float]:
    """Per block, how much the network's output moves when only that block loses `fraction` of its inner channels
    and is re-fitted: KL(FP32 || pruned) of the softmax outputs, mean over `images`."""
    torch = require("torch")
    F = torch.nn.functional
    t, chunk = teacher.eval(), config.chunk
    out = []
    with torch.no_grad():
        h = stem(t, Pixels(images, preprocess), chunk)
        inputs = []
        for b in blocks(t):
            inputs.append(h)
            h = chunked(b, h, chunk)
        reference = F.log_softmax(head(t, h), 1)
        for i, tb in enumerate(blocks(t)):
            counts = inner_counts_of(tb, fraction, config.round_to)
            _, h = fit_block(tb, copy.deepcopy(tb), counts, inputs[i], inputs[i], generator(config, i), config)
            for b in blocks(t)[i + 1:]:
                h = chunked(b, h, chunk)
            pruned = F.log_softmax(head(t, h), 1)
            out.append(float(F.kl_div(pruned, reference, log_target=True, reduction="batchmean")))
    return out


def cut(teacher, crop: int, mac_reduction: float, config: ReconstructConfig = DEFAULT, probe=None) -> tuple:
    """Where pNN cuts: the inner channels each block keeps (conv1, conv2) so that the model has `mac_reduction`
    fewer MACs, and the facts of the choice. `config.allocation`: "stages", a share of every block's channels by
    stage (`stage_shares`); "uniform", the same in every block; "sensitivity", per-block shares from each block's
    measured sensitivity on `probe` images (`sensitivities`, `allocate`; `probe` is (images, preprocess))."""
    c = config
    facts: dict = {"allocation": c.allocation}
    shares = stage_shares(teacher, c.stage_shares) if c.allocation == "stages" else None
    sizes = output_sizes(teacher, crop)  # one forward pass for the search and the give-back
    if c.allocation != "sensitivity":
        fraction = fraction_for(teacher, crop, mac_reduction, c.round_to, shares, sizes, c.most_cut)
        counts = give_back(teacher, crop, mac_reduction, inner_counts(teacher, fraction, c.round_to, shares,
                                                                      c.most_cut), c.round_to, sizes)
        facts["inner_fraction"] = round(fraction, 4)
        if shares is not None:
            facts["stage_shares"] = list(c.stage_shares)
    else:
        images, preprocess = probe
        sens = sensitivities(teacher, images.sample(c.sensitivity_images), preprocess, c, 0.5)
        counts = allocate(teacher, crop, mac_reduction, sens, 0.5, c.round_to)
        facts["sensitivity"] = {"images": c.sensitivity_images, "fraction": 0.5, "kl": [round(k, 5) for k in sens]}
    return counts, facts


def generator(config: ReconstructConfig, block: int):
    """Block `block`'s own random stream, seeded from the run's seed and the block: what one block draws never
    moves another's draws."""
    torch = require("torch")
    return torch.Generator().manual_seed(config.seed * 1_000_003 + block)


def reconstruct(teacher, images, preprocess, mac_reduction: float, config: ReconstructConfig = DEFAULT,
                plan: Callable | None = None, keep: Path | None = None, progress: bool = True) -> tuple[object, dict]:
    """A copy of `teacher` with `mac_reduction` of its MACs removed from inner bottleneck channels (`cut`) and
    every block re-fitted on `images` (unlabelled), then refined by Adam (`refine`): `config.refine_epochs` passes
    a block, or `plan(counts, blocks)` passes for each (a time limit turned into passes once, before the work).
    With `keep`, a folder, every finished block is saved there and a killed run resumes at the first block not
    finished, ending with the weights an uninterrupted run gives; the activations are spilled there too (else to
    the system's temporary folder). Returns the model and what was done."""
    torch = require("torch")
    from tqdm import tqdm

    teacher, c = teacher.eval(), config
    counts, cut_facts = cut(teacher, preprocess.crop, mac_reduction, c, (images, preprocess))
    tbs = blocks(teacher)
    passes = plan(counts, tbs) if plan is not None else [c.refine_epochs] * len(tbs)
    student, done = resumed(teacher, keep, counts, passes)
    if done:
        log(f"reconstruct: resuming at block {done + 1} of {len(tbs)} (the blocks before it were kept)")
    with torch.no_grad():
        x_fp = stem(teacher, Pixels(images, preprocess), c.chunk, spill_folder(keep))
        x_pr = x_fp  # nothing pruned yet (blocks write new tensors, never into their inputs)
        for tb, sb in zip(tbs[:done], blocks(student)[:done]):  # what the finished blocks give, recomputed
            x_fp, x_pr = teacher_outputs(tb, x_fp, c.chunk), chunked(sb, x_pr, c.chunk)
        bar = tqdm(total=len(tbs), initial=done, desc="reconstruct", unit="block", file=sys.stderr, leave=False,
                   disable=not progress)
        for i, (tb, sb, kept) in enumerate(zip(tbs, blocks(student), counts)):
            if i < done:
                continue
            keep_freed_memory()  # chunk-sized tensors freed and allocated again, without the kernel's help
            x_fp, x_pr = fit_block(tb, sb, kept, x_fp, x_pr, generator(c, i), c, lambda i=i: passes[i])
            save_progress(student, keep, i + 1, counts, passes)
            bar.update(1)
        bar.close()
    facts = {"method": "reconstruct", "mac_reduction": mac_reduction, "round_to": c.round_to,
             "images": len(images), "inner_channels": counts, **cut_facts, "selection": c.selection,
             "refine_epochs": c.refine_epochs, "refine_passes": passes, "seed": c.seed}
    return student.eval(), facts


PROGRESS = "progress.pt"


def save_progress(student, keep: Path | None, done: int, cut: list, passes: list) -> None:
    """The student with its first `done` blocks finished, written atomically to `keep` (if given) with the cut and
    the plan it was made with."""
    if keep is None:
        return
    # reloaded into a copy of the teacher: no architecture name
    prune.save(student, keep / PROGRESS, "", {"done": done, "cut": cut, "passes": passes})
    log(f"reconstruct: block {done} of {len(blocks(student))} kept")


def resumed(teacher, keep: Path | None, cut: list, passes: list) -> tuple:
    """The student to continue and how many blocks it has finished: from `keep` when a killed run left one made
    with the same cut (pNN: each block's counts; dN: the blocks dropped) and plan, else a fresh copy of the
    teacher."""
    path = None if keep is None else keep / PROGRESS
    if path is not None and path.exists():
        try:
            record = prune.load_record(path)
            facts = record["facts"]
            if _json(facts["cut"]) == _json(cut) and _json(facts["passes"]) == _json(passes):
                return prune.resized(copy.deepcopy(teacher), record["state_dict"], path), int(facts["done"])
        except (UserError, KeyError, TypeError, ValueError, RuntimeError, AttributeError):
            pass  # damaged or from other options: start again
    return copy.deepcopy(teacher), 0


def _json(x):
    """x as JSON gives it back (tuples become lists): a recorded cut compares equal to the one asked."""
    import json

    return json.loads(json.dumps(x))


def teacher_outputs(tb, x_fp, chunk: int, record: Callable | None = None):
    """The FP32 block's outputs on its inputs `x_fp` (BatchNorm folded), kept as the reconstruction keeps them:
    what the next block is fitted to (the same arithmetic whether a run goes on or resumes). `record(i, (a1, a2,
    a3, a3 + shortcut))`, if given, sees the pre-activations of the chunk at image i on the way: one pass of the
    FP32 block gives the fits their targets and the channel choice its statistics."""
    torch = require("torch")
    F = torch.nn.functional
    (w1, b1), (w2, b2), (w3, b3) = fold(tb.conv1, tb.bn1), fold(tb.conv2, tb.bn2), fold(tb.conv3, tb.bn3)
    ds = tb.downsample

    def out(i):
        xs = x_fp[i:i + chunk].float()
        a1 = F.conv2d(xs, w1, b1, tb.conv1.stride, tb.conv1.padding)
        a2 = F.conv2d(a1.relu(), w2, b2, tb.conv2.stride, tb.conv2.padding)
        a3 = F.conv2d(a2.relu(), w3, b3)
        block = a3 + (ds(xs) if ds is not None else xs)  # the block's output before its ReLU
        if record is not None:
            record(i, (a1, a2, a3, block))
        return block.relu()

    return gather(out, len(x_fp), chunk, folder_of(x_fp))


def fit_block(tb, sb, counts: tuple[int, int], x_fp, x_pr, gen, config: ReconstructConfig,
              passes: Callable[[], int] = lambda: 0):
    """Block `sb` of the student pruned to `counts` (k1, k2) inner channels and re-fitted to `tb`'s output, then
    refined by `passes()` passes (asked once the fit is done); returns the FP32 and the pruned network's next
    inputs. Public for the studies in benchmarks/, which fit blocks one at a time."""
    torch = require("torch")
    F = torch.nn.functional
    (k1, k2), chunk, n = counts, config.chunk, len(x_fp)
    whole = (k1, k2) == (tb.conv1.out_channels, tb.conv2.out_channels)
    choose, chosen = (None, None) if whole else channel_choice(tb, counts, x_fp, gen, config)  # draws first
    seeds = [int(torch.randint(2**31, (1,), generator=gen)) for _ in range(3)]  # then each fit's positions
    sample, targets = target_rows(seeds, config.positions * chunk, folder_of(x_fp))

    def record(i, a):
        if choose is not None:
            choose(i, a)
        sample(a)

    nxt_fp = teacher_outputs(tb, x_fp, chunk, record)
    keep1, keep2 = (None, None) if chosen is None else chosen()
    conv1, conv2, conv3 = convs(tb, k1, k2)

    def fit(conv, inputs, tape, keep=None, offset=None):
        """conv re-fitted so that ReLU(conv(inputs) + offset) matches ReLU(target) at the positions recorded
        on `tape` (`relu_fit`; `keep`: the target's channels that stay): the branch is fitted to
        target - offset, so it makes up the offset's error too."""
        def rows():
            for i, (idx, ys) in zip(range(0, n, chunk), tape):
                xs, ys = patches(inputs(i), conv, idx), ys if keep is None else ys[:, keep]
                if offset is None:
                    yield xs, ys, torch.zeros(())
                else:
                    off = position_rows(offset(i), idx)
                    yield xs, ys - off, off

        w, b = relu_fit(rows, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels,
                        config.damp, config.relu_rounds, folder_of(x_fp))
        conv.weight.copy_(w.reshape(conv.weight.shape))
        return b

    def pr(i):  # one chunk of the pruned network's input to this block, in float32
        return x_pr[i:i + chunk].float()

    def r1(i):
        return F.conv2d(pr(i), conv1.weight, bias1, conv1.stride).relu()

    def r2(i):
        return F.conv2d(r1(i), conv2.weight, bias2, conv2.stride, conv2.padding).relu()

    def shortcut(i):  # the shortcut's error is the branch's to make up
        return tb.downsample(pr(i)) if tb.downsample is not None else pr(i)

    bias1 = fit(conv1, pr, targets[0], keep1)
    bias2 = fit(conv2, r1, targets[1], keep2)
    bias3 = fit(conv3, r2, targets[2], None, shortcut)
    for name, conv, bias in (("1", conv1, bias1), ("2", conv2, bias2), ("3", conv3, bias3)):
        setattr(sb, f"conv{name}", conv)
        setattr(sb, f"bn{name}", identity_bn(bias))
    n_passes = passes()
    if n_passes:
        lr = config.refine_lr / 10 if whole else config.refine_lr
        return nxt_fp, refine(sb, x_pr, nxt_fp, n_passes, lr, gen, config)
    return nxt_fp, chunked(sb, x_pr, chunk)  # the block's own forward, as a resumed run computes it


def target_rows(seeds: list[int], positions: int, folder: Path | None) -> tuple:
    """What the three fits are fitted to, taken in the FP32 block's one pass: per fit, at `positions` positions
    of every chunk drawn by the fit's own generator (seeded from `seeds`), the rows of its target (conv1's and
    conv2's pre-activations, the block's output before its ReLU), every channel; recorded with the positions
    (`Tape`, spilled to `folder`). Returns (record, the three tapes); record takes (a1, a2, a3, a3 + shortcut)."""
    torch = require("torch")
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    tapes = [Tape(folder=folder) for _ in seeds]

    def record(a):
        for g, tape, y in zip(gens, tapes, (a[0], a[1], a[3])):
            idx = torch.randperm(len(y) * y.shape[2] * y.shape[3], generator=g)[:positions]
            tape.append((idx, position_rows(y, idx)))

    return record, tapes


def channel_choice(tb, counts: tuple[int, int], x_fp, gen, config: ReconstructConfig) -> tuple:
    """Which inner channels stay, judged on the FP32 network: (record, keep), where record(i, (a1, a2, a3,
    a3 + shortcut)) takes the pre-activations of the chunk at image i in the FP32 block's pass and keep() then gives
    (conv1's, conv2's) kept channels. "obs": those whose loss the consumer (conv2 for conv1's outputs, conv3 for
    conv2's), re-fitted, feels least (`obs_keep`), from the first `config.selection_images` images, at positions
    drawn from `gen` now; "energy": activation energy through the consumer's weights, E[a_c^2] * ||W_next[:,
    c]||^2."""
    torch = require("torch")
    (k1, k2), chunk, positions, damp, n = counts, config.chunk, config.positions, config.damp, len(x_fp)
    w2, w3, conv2 = fold(tb.conv2, tb.bn2)[0], fold(tb.conv3, tb.bn3)[0], tb.conv2
    if config.selection == "obs":
        c2, c3 = Ridge(w2.shape[1] * 9, w2.shape[0]), Ridge(w3.shape[1], w3.shape[0])
        rows, cols = output_size(output_size(x_fp.shape[-2:], tb.conv1), conv2)
        draws = [[torch.randperm(min(chunk, n - i) * rows * cols, generator=gen)[:positions * chunk]
                  for _ in (c2, c3)] for i in range(0, min(n, config.selection_images), chunk)]

        def record(i, a):
            if i // chunk < len(draws):
                (i2, i3), (a1, a2, a3, _) = draws[i // chunk], a
                c2.add(patches(a1.relu(), conv2, i2), position_rows(a2, i2))
                c3.add(position_rows(a2.relu(), i3), position_rows(a3, i3))

        return record, lambda: (obs_keep(c2, 9, k1, damp), obs_keep(c3, 1, k2, damp))
    e1 = torch.zeros(w2.shape[1], dtype=torch.float64)
    e2 = torch.zeros(w2.shape[0], dtype=torch.float64)

    def energy(i, a):
        e1.add_(a[0].relu().pow(2).mean((0, 2, 3)).double())
        e2.add_(a[1].relu().pow(2).mean((0, 2, 3)).double())

    def keep():
        return (torch.argsort(e1 * w2.pow(2).sum((0, 2, 3)).double(), descending=True)[:k1].sort().values,
                torch.argsort(e2 * w3.pow(2).sum((0, 2, 3)).double(), descending=True)[:k2].sort().values)

    return energy, keep
