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
(`relu_fit`). Statistics are accumulated over image chunks at sampled positions, and the activations of every
image at the current block are spilled to disk (`stream.Spill`): memory is bounded by the chunk and the block,
not the image count. Then, optionally, a few passes of Adam on the whole block toward the FP32 block's
output (`refine`), which the closed-form fits cannot do: move conv1 and conv2 off FP32's kept channels.
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
from compress.prune.lstsq import Ridge, fold, identity_bn, obs_keep, patches, position_rows, relu_fit
from compress.prune.refine import convs, refine
from compress.prune.stream import Pixels, chunked, folder_of, head, keep_freed_memory, spill_folder, stem

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


def teacher_outputs(tb, x_fp, chunk: int):
    """The FP32 block's outputs on its inputs `x_fp`, BatchNorm folded, kept as the reconstruction keeps them:
    what the next block is fitted to (the same arithmetic whether a run goes on or resumes)."""
    torch = require("torch")
    F = torch.nn.functional
    (w1, b1), (w2, b2), (w3, b3) = fold(tb.conv1, tb.bn1), fold(tb.conv2, tb.bn2), fold(tb.conv3, tb.bn3)
    ds = tb.downsample

    def f(xs):
        a1 = F.conv2d(xs, w1, b1, tb.conv1.stride, tb.conv1.padding).relu()
        a2 = F.conv2d(a1, w2, b2, tb.conv2.stride, tb.conv2.padding).relu()
        return (F.conv2d(a2, w3, b3) + (ds(xs) if ds is not None else xs)).relu()

    return chunked(f, x_fp, chunk)


def fit_block(tb, sb, counts: tuple[int, int], x_fp, x_pr, gen, config: ReconstructConfig,
              passes: Callable[[], int] = lambda: 0):
    """Block `sb` of the student pruned to `counts` (k1, k2) inner channels and re-fitted to `tb`'s output, then
    refined by `passes()` passes (asked once the fit is done); returns the FP32 and the pruned network's next
    inputs. Public for the studies in benchmarks/, which fit blocks one at a time."""
    torch = require("torch")
    F = torch.nn.functional
    (k1, k2), chunk, positions, damp = counts, config.chunk, config.positions, config.damp
    (w1, b1), (w2, b2), (w3, b3) = fold(tb.conv1, tb.bn1), fold(tb.conv2, tb.bn2), fold(tb.conv3, tb.bn3)
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
        keep1, keep2 = choose_channels(fp, fp_in, len(x_fp), (w2, w3, tb.conv2), counts, gen, config)

    conv1, conv2, conv3 = convs(tb, k1, k2)

    def fit(conv, inputs, target, offset=None) -> tuple:
        """conv re-fitted so that ReLU(conv(inputs) + offset) matches ReLU(target) (`relu_fit`): the branch is
        fitted to target - offset, so it makes up the offset's error too."""
        seed = int(torch.randint(2**31, (1,), generator=gen))

        def rows():  # positions sampled by the fit's own seed
            g = torch.Generator().manual_seed(seed)
            for i in range(0, len(x_fp), chunk):
                xs, ys = patches(inputs(i), conv), position_rows(target(i))
                idx = torch.randperm(len(xs), generator=g)[:positions * chunk]
                if offset is None:
                    yield xs[idx], ys[idx], torch.zeros(())
                else:
                    off = position_rows(offset(i))[idx]
                    yield xs[idx], ys[idx] - off, off

        w, b = relu_fit(rows, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels,
                        damp, config.relu_rounds, folder_of(x_fp))
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
    nxt_fp = teacher_outputs(tb, x_fp, chunk)
    for name, conv, bias in (("1", conv1, bias1), ("2", conv2, bias2), ("3", conv3, bias3)):
        setattr(sb, f"conv{name}", conv)
        setattr(sb, f"bn{name}", identity_bn(bias))
    n = passes()
    if n:
        lr = config.refine_lr / 10 if whole else config.refine_lr
        return nxt_fp, refine(sb, x_pr, nxt_fp, n, lr, gen, config)
    return nxt_fp, chunked(sb, x_pr, chunk)  # the block's own forward, as a resumed run computes it


def choose_channels(fp, fp_in, n: int, consumers: tuple, counts: tuple[int, int], gen, config: ReconstructConfig):
    """Which inner channels stay, judged on the FP32 network. "obs": those whose loss the consumer (conv2 for
    conv1's outputs, conv3 for conv2's), re-fitted, feels least (`obs_keep`), from the first
    `config.selection_images` of the n images; "energy": activation energy through the consumer's weights,
    E[a_c^2] * ||W_next[:, c]||^2. `consumers`: (folded conv2 weight, folded conv3 weight, conv2)."""
    torch = require("torch")
    (w2, w3, conv2), (k1, k2) = consumers, counts
    chunk, positions, damp = config.chunk, config.positions, config.damp
    if config.selection == "obs":
        c2, c3 = Ridge(w2.shape[1] * 9, w2.shape[0]), Ridge(w3.shape[1], w3.shape[0])
        for i in range(0, min(n, config.selection_images), chunk):
            a1, a2, a3, _ = fp(fp_in(i))
            for ridge, xs, ys in ((c2, patches(a1.relu(), conv2), position_rows(a2)),
                                  (c3, position_rows(a2.relu()), position_rows(a3))):
                idx = torch.randperm(len(xs), generator=gen)[:positions * chunk]
                ridge.add(xs[idx], ys[idx])
        return obs_keep(c2, 9, k1, damp), obs_keep(c3, 1, k2, damp)
    e1 = torch.zeros(w2.shape[1], dtype=torch.float64)
    e2 = torch.zeros(w2.shape[0], dtype=torch.float64)
    for i in range(0, n, chunk):
        a1, a2 = fp(fp_in(i), 2)
        e1 += a1.relu().pow(2).mean((0, 2, 3)).double()
        e2 += a2.relu().pow(2).mean((0, 2, 3)).double()
    keep1 = torch.argsort(e1 * w2.pow(2).sum((0, 2, 3)).double(), descending=True)[:k1].sort().values
    keep2 = torch.argsort(e2 * w3.pow(2).sum((0, 2, 3)).double(), descending=True)[:k2].sort().values
    return keep1, keep2


