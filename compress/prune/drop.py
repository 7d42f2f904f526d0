"""Block dropping (dN): remove whole identity-shortcut blocks, then re-fit the blocks after them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from compress.core.errors import UserError, require
from compress.prune import channels as prune
from compress.prune.allocate import blocks
from compress.prune.config import DEFAULT, ReconstructConfig
from compress.prune.reconstruct import fit_block, generator, resumed, save_progress, teacher_outputs
from compress.prune.stream import Pixels, chunked, head, keep_freed_memory, spill_folder, stem


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
        x = stem(t, Pixels(images, preprocess), chunk)
        h = x
        for b in bs:
            h = chunked(b, h, chunk)
        reference = F.log_softmax(head(t, h), 1)
        h, inputs = x, []
        for i, b in enumerate(bs):  # the inputs of each block with `gone` already dropped
            inputs.append(h)
            h = h if i in gone else chunked(b, h, chunk)
        for i in droppable(t):
            if i in gone:
                continue
            h = inputs[i]
            for j in range(i + 1, len(bs)):
                h = h if j in gone else chunked(bs[j], h, chunk)
            dropped = F.log_softmax(head(t, h), 1)
            out[i] = float(F.kl_div(dropped, reference, log_target=True, reduction="batchmean"))
    return out


def drop(teacher, images, preprocess, n: int, config: ReconstructConfig = DEFAULT,
         plan: Callable | None = None, keep: Path | None = None, progress: bool = True) -> tuple[object, dict]:
    """A copy of `teacher` without `n` identity-shortcut blocks, chosen greedily: each time the one whose drop moves
    the output least with those already chosen gone (`drop_sensitivities` on `config.sensitivity_images` of `images`;
    `config.drop_selection` "independent": the n least sensitive alone, measured once).
    Then every block after the first one dropped is re-fitted on `images` as `reconstruct` does, at full width:
    from the dropped network's own inputs to the FP32 activations, so each block's conv3 makes up what the blocks
    before it no longer add; each then refined as `reconstruct` refines (`config.refine_epochs` passes, or
    `plan(counts, blocks)` for the blocks re-fitted). With `keep`, a folder, every finished block is saved there
    and a killed run resumes after the last one, as `reconstruct` does; the activations are spilled there (else to
    the system's temporary folder). Returns the model and what was done."""
    torch = require("torch")
    from torchvision.models.resnet import Bottleneck
    from tqdm import tqdm

    chunk, sensitivity_images, refine_epochs = config.chunk, config.sensitivity_images, config.refine_epochs
    greedy = config.drop_selection == "greedy"
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
    names = [name for name, m in teacher.named_modules() if isinstance(m, Bottleneck)]
    tbs = blocks(teacher)
    refit = [i for i in range(len(tbs)) if i > gone[0] and i not in gone]  # before the first drop: nothing to make up
    refitted = [tbs[i] for i in refit]
    whole = [(b.conv1.out_channels, b.conv2.out_channels) for b in refitted]
    planned = plan(whole, refitted) if plan is not None else [refine_epochs] * len(refit)
    passes = dict(zip(refit, planned))
    student, done = resumed(teacher, keep, gone, planned)
    with torch.no_grad():
        x_fp = stem(teacher, Pixels(images, preprocess), chunk, spill_folder(keep))
        x_pr = x_fp
        pairs = list(enumerate(zip(tbs, blocks(student))))
        bar = tqdm(pairs, desc="reconstruct", unit="block", file=sys.stderr, leave=False, disable=not progress)
        for i, (tb, sb) in bar:
            if i not in refit:  # dropped, or before the first drop
                x_fp = chunked(tb, x_fp, chunk)
                x_pr = x_pr if i in gone else x_fp
            elif i < done:  # finished by a killed run: what it gives, recomputed as `reconstruct` recomputes it
                x_fp, x_pr = teacher_outputs(tb, x_fp, chunk), chunked(sb, x_pr, chunk)
            else:
                keep_freed_memory()  # chunk-sized tensors freed and allocated again, without the kernel's help
                kept = (tb.conv1.out_channels, tb.conv2.out_channels)
                x_fp, x_pr = fit_block(tb, sb, kept, x_fp, x_pr, generator(config, i), config, lambda i=i: passes[i])
                save_progress(student, keep, i + 1, gone, planned)
    prune.drop_blocks(student, [names[i] for i in gone])
    facts = {"method": "drop", "selection": config.drop_selection,
             "blocks_dropped": [names[i] for i in gone], "images": len(images),
             "refine_epochs": refine_epochs, "refine_passes": [passes[i] for i in refit], "seed": config.seed,
             "sensitivity": {"images": min(sensitivity_images, len(images)),
                             "kl": [{names[i]: round(k, 5) for i, k in step.items()} for step in chosen]}}
    return student.eval(), facts
