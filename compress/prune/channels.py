"""Pruning that pays: structured channel pruning (Torch-Pruning's DepGraph), 2:4 semi-structured sparsity, and
recovery without labelled training data.

- Channels are removed group by group (a residual Add couples the channels of every block it joins), with L1,
  L2 or Taylor importance, counts rounded to a multiple of 8 (tensor cores and vector units want them; fewer
  FLOPs in odd counts often run no faster), the stem and the classifier protected.
- 2:4 sparsity keeps the 2 largest of every 4 consecutive input-channel weights of each conv, the layout
  TensorRT's sparse tensor cores use; the zeros survive export and per-channel INT8 quantization.
- Recovery: BatchNorm statistics re-estimated on unlabelled images (pruning shifts every activation's
  statistics); distillation (`compress.prune.distill`) and reconstruction (`compress.prune.reconstruct`) go further.
- A pruned model is saved as channel shapes + state_dict and reloaded with `weights_only=True`: no Torch-Pruning
  objects are pickled.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compress.core import model as models
from compress.core.errors import UserError, require
from compress.core.model import num_classes_of
from compress.core.store import atomic_path

IMPORTANCES = ("l1", "l2", "taylor")


def _example(crop: int):
    torch = require("torch")
    return torch.randn(1, 3, crop, crop)


def count(model, crop: int) -> dict:
    """Parameters and MACs of a torch model at batch 1."""
    tp = require("torch_pruning")
    macs, params = tp.utils.count_ops_and_params(model, _example(crop))
    return {"params": int(params), "macs": int(macs)}


def protected_layers(model) -> list:
    """The stem conv and the classifier keep their channels: input and output width are the model's contract."""
    torch = require("torch")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return convs[:1] + heads[-1:]


def channels(model, ratio: float, crop: int, importance: str = "l1", round_to: int = 8, global_pruning: bool = False,
             labelled_batch=None, target_macs: int | None = None) -> dict:
    """Prune output channels of `model` in place. By `ratio` (share of channels per group), or iteratively until
    MACs fall to `target_macs`. Returns params and MACs before and after."""
    torch = require("torch")
    tp = require("torch_pruning")
    if importance not in IMPORTANCES:
        raise UserError(f"unknown importance {importance!r}", f"choose from {', '.join(IMPORTANCES)}")
    if importance == "taylor" and labelled_batch is None:
        raise UserError("Taylor importance needs labelled images", "use --importance l1 or l2")
    before = count(model, crop)
    imp = {"l1": tp.importance.MagnitudeImportance(p=1), "l2": tp.importance.MagnitudeImportance(p=2),
           "taylor": tp.importance.TaylorImportance()}[importance]
    steps = 20 if target_macs else 1
    pruner = tp.pruner.MetaPruner(model.eval(), _example(crop), importance=imp, global_pruning=global_pruning,
                                  pruning_ratio=0.9 if target_macs else ratio, iterative_steps=steps,
                                  ignored_layers=protected_layers(model), round_to=round_to)
    for _ in range(steps):
        if importance == "taylor":
            x, y = labelled_batch
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        if target_macs and count(model, crop)["macs"] <= target_macs:
            break
    model.zero_grad(set_to_none=True)
    after = count(model, crop)
    return {"importance": importance, "ratio": ratio, "round_to": round_to, "global": global_pruning,
            "target_macs": target_macs, "params_before": before["params"], "macs_before": before["macs"],
            "params": after["params"], "macs": after["macs"]}


def sparsify_24(model, images=None, preprocess=None, positions: int = 256, damp: float = 0.01) -> dict:
    """2:4 sparsity (in place) on every conv whose input channels come in fours: two of every four consecutive
    input-channel weights set to zero. Without images, the two smallest. With unlabelled `images`, chosen and
    compensated with second-order information from the conv's inputs (optimal brain surgeon, column by column, as
    SparseGPT): the zeros are those whose removal the other weights of the row can best make up for, and those
    weights are updated to make it up (the layer's outputs on the images move least)."""
    torch = require("torch")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    eligible = [(n, m) for n, m in convs if m.weight.shape[1] % 4 == 0 and m.groups == 1]
    skipped = [n for n, m in convs if (n, m) not in eligible]  # e.g. the RGB stem: 3 input channels
    hessians = _input_gram(model, [m for _, m in eligible], images, preprocess, positions) if images else {}
    with torch.no_grad():
        for _, m in eligible:
            w = m.weight  # (O, I, kh, kw) -> columns in (kh, kw, I) order: a group of four is four adjacent columns
            rows = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
            if m in hessians:
                h = hessians[m]  # over unfold's (I, kh, kw) features: reorder to (kh, kw, I)
                order = torch.arange(h.shape[0]).reshape(w.shape[1], -1).T.reshape(-1)
                rows = _obs_24(rows.double(), h[order][:, order], damp).float()
            else:
                groups = rows.reshape(-1, 4)
                keep = groups.abs().argsort(dim=1, descending=True)[:, :2]
                rows = (groups * torch.zeros_like(groups).scatter_(1, keep, 1.0)).reshape(rows.shape)
            m.weight.copy_(rows.reshape(w.shape[0], w.shape[2], w.shape[3], w.shape[1]).permute(0, 3, 1, 2))
    return {"sparsity": "2:4", "convs": len(eligible), "skipped": skipped,
            "selection": "second-order (OBS) with update" if hessians else "magnitude",
            **({"images": len(images)} if hessians else {})}


def _input_gram(model, convs: list, images, preprocess, positions: int) -> dict:
    """X^T X of each conv's input patches (float64) over `images`, at `positions` sampled output positions per
    image: one pass of the dense model."""
    torch = require("torch")
    F = torch.nn.functional
    grams: dict = {}
    gen = torch.Generator().manual_seed(0)

    def hook(m, args, _out):
        x = F.unfold(args[0], m.kernel_size, m.dilation, m.padding, m.stride)  # (N, features, L)
        x = x.transpose(1, 2)
        idx = torch.randperm(x.shape[1], generator=gen)[:positions]
        x = x[:, idx].reshape(-1, x.shape[2])
        g = (x.T @ x).double()
        grams[m] = grams[m] + g if m in grams else g

    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            model.eval()
            for batch, _ in images.batches(preprocess, 16):
                model(torch.from_numpy(batch))
    finally:
        for h in handles:
            h.remove()
    return grams


def _obs_24(w, h, damp: float, block: int = 128):
    """SparseGPT's 2:4 pruning of rows `w` (out, columns) with input Gram matrix `h` (columns, columns)."""
    torch = require("torch")
    w = w.clone()
    h = h.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    cols = w.shape[1]
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        mask = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if i % 4 == 0:  # choose this group's two zeros: least saliency w^2 / [H^-1]_jj^2
                saliency = w1[:, i:i + 4] ** 2 / torch.diagonal(hinv1)[i:i + 4].reshape(1, -1) ** 2
                mask.scatter_(1, i + torch.topk(saliency, 2, dim=1, largest=False)[1], True)
            q = w1[:, i].clone()
            q[mask[:, i]] = 0
            q1[:, i] = q
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def zeros_kept(model):
    """A step callback that sets the weights that are zero now back to zero (a sparse pattern kept in training)."""
    torch = require("torch")
    masks = [(m.weight, m.weight != 0) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
             and bool((m.weight == 0).any())]

    def keep(*_) -> None:
        with torch.no_grad():
            for w, mask in masks:
                w.mul_(mask)

    return keep


def is_24_sparse(weight: np.ndarray) -> bool:
    """True if every four consecutive input-channel weights (O, I, kh, kw) hold at most two non-zeros."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[1] % 4:
        return False
    groups = np.moveaxis(w, 1, 3).reshape(-1, 4)
    return bool(((groups != 0).sum(axis=1) <= 2).all())


def recalibrate_bn(model, images, preprocess, batch_size: int = 32, desc: str | None = "BN statistics") -> None:
    """Re-estimate every BatchNorm's running mean and variance on unlabelled images (cumulative average)."""
    torch = require("torch")
    from tqdm import tqdm

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over all batches
    model.train()
    with torch.no_grad(), tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr, leave=False,
                               disable=desc is None) as bar:
        for x, _ in images.batches(preprocess, batch_size):
            model(torch.from_numpy(x))
            bar.update(len(x))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def save(model, path: str | Path, arch: str, facts: dict | None = None) -> None:
    """Channel shapes and a state_dict: reloadable with weights_only=True, without Torch-Pruning."""
    torch = require("torch")

    sd = model.state_dict()
    num_classes = num_classes_of(sd)
    record = {"format": "compress.pruned/1", "arch": arch, "num_classes": num_classes,
              "shapes": {k: list(v.shape) for k, v in sd.items()}, "state_dict": sd, "facts": facts or {}}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def load_record(path: str | Path) -> dict:
    """What `save` wrote (read with weights_only=True: nothing in it runs)."""
    torch = require("torch")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding objects that would need unpickling
        raise UserError(f"{path} is not a model saved by compress ({type(exc).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != "compress.pruned/1":
        raise UserError(f"{path} is not a pruned model saved by compress")
    return record


def drop_blocks(model, names) -> None:
    """Replace the named residual blocks (identity shortcut) by Identity, in place."""
    torch = require("torch")
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, torch.nn.Identity())


def load(path: str | Path):
    """Rebuild the architecture, resize every conv, BN and linear layer to the saved shapes, load the weights."""
    return from_record(load_record(path), path)


def from_record(record: dict, path: str | Path):
    """The model a `load_record` record holds (`path`: where it came from, for messages)."""
    return resized(models.create(record["arch"], record["num_classes"]), record["state_dict"], path)


def resized(net, sd: dict, path: str | Path):
    """`net` with its layers resized to the shapes of the state_dict `sd` (blocks it lacks dropped), then loaded
    with it: how a pruned model comes back from its channel shapes."""
    torch = require("torch")
    from torchvision.models.resnet import Bottleneck

    nn = torch.nn
    drop_blocks(net, [name for name, m in net.named_modules()  # a block without weights was dropped (dN)
                      if isinstance(m, Bottleneck) and m.downsample is None and f"{name}.conv1.weight" not in sd])
    for name, m in list(net.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None or tuple(w.shape) == tuple(m.weight.shape):
            continue
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(w.shape[1] * m.groups, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups, m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0], m.eps, m.momentum)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], m.bias is not None)
        else:
            raise UserError(f"{path}: cannot resize layer {name} ({type(m).__name__})")
        parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        setattr(parent, name.rpartition(".")[2], new)
    net.load_state_dict(sd, strict=True)
    return net.eval()
