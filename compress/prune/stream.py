"""Activations streamed a chunk of images at a time, kept in float16, in memory or spilled to disk (`Spill`), so
that the reconstruction's memory does not grow with the number of images."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from compress.core.errors import UserError, require


class Pixels:
    """The images' normalised float32 NCHW input, made a chunk at a time: `x[i:j]` (the uint8 pixels stay as
    they are; a float32 copy of every image would take four times their memory)."""

    def __init__(self, images, preprocess):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: slice):
        torch = require("torch")
        return torch.from_numpy(self.preprocess.normalize(self.images.pixels[key]))


class Spill:
    """Float16 activations of n images in a file of `folder`, written and read a chunk (or a batch of images) at a
    time: they take disk and the operating system's page cache, not the process's memory. Plain reads, not a
    memory map, whose touched pages would count as the process's own. The file has no name (it is unlinked once
    open): it goes with the object, and a killed run leaves nothing behind."""

    def __init__(self, folder: Path, n: int, shape: tuple):
        self.folder, self.n, self.shape = Path(folder), n, tuple(shape)
        self.row = 2 * math.prod(self.shape)  # bytes of one image
        self.file = tempfile.TemporaryFile(dir=self.folder, prefix="activations-")  # noqa: SIM115 (lives with self)
        self.file.truncate(n * self.row)

    def __len__(self) -> int:
        return self.n

    def __setitem__(self, key: slice, y) -> None:
        start, _, _ = key.indices(self.n)
        self.file.seek(start * self.row)
        self.file.write(y.contiguous().numpy().reshape(-1).view("uint8"))

    def __getitem__(self, key):
        """Images `key` (a slice, or a sequence of indices as a random batch takes them), as float16."""
        import numpy as np

        torch = require("torch")
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n)
            if step != 1:
                raise ValueError("a spilled set is read in runs of consecutive images")
            runs = [(start, max(0, stop - start))]
        else:
            runs = [(int(i), 1) for i in key]
        out = torch.empty((sum(n for _, n in runs), *self.shape), dtype=torch.float16)  # torch's aligned allocator
        flat, at = out.numpy().reshape(-1).view(np.uint8), 0
        for first, n in runs:
            self.file.seek(first * self.row)
            if self.file.readinto(flat[at:at + n * self.row]) != n * self.row:
                raise OSError(f"{self.folder}: a spilled activation file came back short")
            at += n * self.row
        return out


class Tape:
    """Tuples of tensors recorded once and played back in order as often as asked: written to an unnamed file of
    `folder` as `Spill` writes (exact: the bytes come back), or held in memory without a folder."""

    def __init__(self, items=(), folder: Path | None = None):
        self.file = None if folder is None else tempfile.TemporaryFile(dir=folder, prefix="rows-")  # noqa: SIM115
        self.items: list = []
        for item in items:
            self.append(item)

    def append(self, item: tuple) -> None:
        if self.file is None:
            self.items.append(item)
            return
        for t in item:
            self.file.write(t.contiguous().numpy().reshape(-1).view("uint8"))
        self.items.append([(t.shape, t.dtype) for t in item])

    def __iter__(self):
        import numpy as np

        torch = require("torch")
        if self.file is None:
            yield from self.items
            return
        self.file.seek(0)
        for layout in self.items:
            out = []
            for shape, dtype in layout:
                t = torch.empty(shape, dtype=dtype)  # torch's aligned allocator, as the rows it recorded
                a = t.numpy()
                if self.file.readinto(a.reshape(-1).view(np.uint8)) != a.nbytes:
                    raise OSError("a recorded file of rows came back short")
                out.append(t)
            yield tuple(out)


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks of up to 128 MB for reuse instead of handing each back to the system:
    the reconstruction allocates and frees chunk-sized tensors (tens of MB) millions of times, and by default each
    comes back as fresh pages the kernel must fault in and zero (on ResNet-50's layer1 half the CPU time went to
    the kernel). Nothing is computed differently; freed memory beyond 256 MB at the heap's top still goes back,
    and what is free anywhere in the heap goes back on every call (malloc_trim), so a block starts without the
    last one's leftovers. A process-wide setting, asked by the reconstruction at every block; elsewhere than glibc
    (macOS, musl) nothing changes."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 128 << 20)  # M_MMAP_THRESHOLD: blocks below it come from the heap, reused once freed
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: free space at the heap's top kept before it is given back
    libc.malloc_trim(0)


def spill_folder(keep: Path | None) -> Path:
    """Where a recovery spills its activations: its own folder `keep` (made if need be), else the system's
    temporary folder."""
    folder = keep if keep is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_of(x) -> Path | None:
    """Where x is spilled, or None for a tensor in memory."""
    return x.folder if isinstance(x, Spill) else None


def chunked(f, x, chunk: int):
    """f over x, `chunk` images at a time (memory of one chunk's intermediates), in float32; the results are kept
    in float16 (`gather`), spilled to disk where x is."""
    return gather(lambda i: f(x[i:i + chunk].float()), len(x), chunk, folder_of(x))


def gather(f, n: int, chunk: int, to: Path | None = None):
    """The results of f(i) for the chunks i = 0, chunk, 2 * chunk, ... of n images, kept in float16: in memory,
    or with `to`, a folder, spilled there (`Spill`). float16 is half the memory of float32, and its relative
    error, 5e-4, is far below what pruning moves."""
    torch = require("torch")
    out = None
    for i in range(0, n, chunk):
        y = f(i)
        if out is None:
            out = Spill(to, n, y.shape[1:]) if to is not None else torch.empty((n, *y.shape[1:]), dtype=torch.float16)
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


def stem(model, x, chunk: int, to: Path | None = None):
    """The input of the first block, from the network's input `x` (a tensor, or `Pixels`): conv1, BN, ReLU,
    max-pool; spilled to `to` if given."""
    return gather(lambda i: model.maxpool(model.relu(model.bn1(model.conv1(x[i:i + chunk].float())))), len(x),
                  chunk, to)


def head(model, x):
    torch = require("torch")
    return model.fc(torch.flatten(model.avgpool(x.float()), 1))
