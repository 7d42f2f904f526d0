"""Activations streamed a chunk of images at a time, kept in float16."""

from __future__ import annotations

from compress.core.errors import UserError, require


def chunked(f, x, chunk: int):
    """f over x, `chunk` images at a time (memory of one chunk's intermediates), in float32; the results are kept
    in float16 (`gather`)."""
    return gather(lambda i: f(x[i:i + chunk].float()), len(x), chunk)


def gather(f, n: int, chunk: int):
    """The results of f(i) for the chunks i = 0, chunk, 2 * chunk, ... of n images, kept in float16: half the
    memory of float32 (the activations of every image at one block are what bounds the reconstruction's memory;
    float16's relative error, 5e-4, is far below what pruning moves)."""
    torch = require("torch")
    out = None
    for i in range(0, n, chunk):
        y = f(i)
        if out is None:
            out = torch.empty((n, *y.shape[1:]), dtype=torch.float16)
        out[i:i + len(y)] = half(y)
    return out


def half(y):
    """y in float16, refusing what float16 cannot hold (an activation beyond 65504 would turn into inf)."""
    torch = require("torch")
    h = y.half()
    if not bool(torch.isfinite(h).all()):
        raise UserError("this model's activations exceed float16's range (65504), which the reconstruction keeps "
                        "them in", "check the checkpoint: a trained network's activations stay far below it")
    return h


def stem(model, x, chunk: int):
    """The input of the first block: conv1, BN, ReLU, max-pool."""
    return chunked(lambda xs: model.maxpool(model.relu(model.bn1(model.conv1(xs)))), x, chunk)


def head(model, x):
    torch = require("torch")
    return model.fc(torch.flatten(model.avgpool(x.float()), 1))
