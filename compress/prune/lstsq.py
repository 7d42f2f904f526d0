"""Least squares for the reconstruction: ridge statistics accumulated over chunks, the fit through a ReLU,
and optimal brain surgeon's channel choice on them."""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import require
from compress.prune.stream import Tape


def fold(conv, bn):
    """(weight, bias) of conv followed by eval-mode BatchNorm."""
    torch = require("torch")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale[:, None, None, None]
    b = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias.detach() * scale
    return w, b


class Ridge:
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

    def factor(self, damp: float) -> tuple:
        """The LU factors of the damped X^T X: what `solve` spends its time on, shared by solves while X^T X
        stays (torch.linalg.solve is these two steps: the same bits)."""
        torch = require("torch")
        return torch.linalg.lu_factor(self.damped(damp))

    def solve(self, damp: float, factors: tuple | None = None):
        torch = require("torch")
        sol = torch.linalg.lu_solve(*(factors or self.factor(damp)), self.xy)
        return sol[:-1].T.float(), sol[-1].float()  # weight (outputs, features), bias (outputs,)


def relu_fit(rows, features: int, outputs: int, damp: float, rounds: int, spill: Path | None = None):
    """Weight (outputs, features) and bias such that ReLU(x W^T + b + off) matches ReLU(y + off) on the rows that
    `rows()` yields as (x, y, off). The next layer only sees what passes the ReLU: where
    y + off <= 0, any prediction at or below -off is exact. So after the ridge fit to y, each round fits those
    rows to min(prediction, -off) instead (majorize-minimize: every round lowers the error where the target is
    active plus the error after the ReLU where it is not); X^T X stays, only X^T Y is gathered again. The rows
    are recorded for the rounds (`Tape`), a round is then two matrix products, not the network's forward passes
    again; with `spill`, a folder, they are recorded there, not in memory, which they would fill as the images
    grow (2.4 GB for one of ResNet-50's convs on 1,000 images)."""
    torch = require("torch")
    data = Tape(rows(), spill) if rounds else rows()
    ridge = Ridge(features, outputs)
    for x, y, _ in data:
        ridge.add(x, y)
    factors = ridge.factor(damp)  # the rounds change X^T Y only
    w, b = ridge.solve(damp, factors)
    for _ in range(rounds):
        ridge.xy.zero_()
        for x, y, off in data:
            ridge.add(x, torch.where(y + off > 0, y, torch.minimum(x @ w.T + b, -off)), gram=False)
        w, b = ridge.solve(damp, factors)
    return w, b


def obs_keep(ridge: Ridge, group: int, keep: int, damp: float):
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


def patches(x, conv, idx=None):
    """(samples, features) rows of the conv's input patches, one per output position (image by image, row by
    row), or only rows `idx` of them: the same values, without unfolding every position first (a fit samples a
    sixth of layer1's)."""
    torch = require("torch")
    rows, cols = output_size(x.shape[-2:], conv)
    if idx is None or 4 * len(idx) > len(x) * rows * cols:  # most positions: unfolding them all is quicker
        every = torch.nn.functional.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)
        every = every.transpose(1, 2).reshape(-1, every.shape[1])
        return every if idx is None else every[idx]
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    # (images, channels, out rows, out columns, kh, kw): views of the padded input, the sampled ones copied
    views = torch.nn.functional.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
    image, at = idx // (rows * cols), idx % (rows * cols)
    return views.permute(0, 2, 3, 1, 4, 5)[image, at // cols, at % cols].reshape(len(idx), -1)


def output_size(size, conv) -> tuple[int, int]:
    """(rows, columns) of the conv's output from an input of `size` (rows, columns)."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, conv.kernel_size, conv.stride, conv.padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def position_rows(y, idx=None):
    """(samples, channels) rows of an NCHW tensor, one per position (image by image, row by row), or only rows
    `idx` of them."""
    if idx is None:
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    at, cols = idx % (y.shape[2] * y.shape[3]), y.shape[3]
    return y[idx // (y.shape[2] * y.shape[3]), :, at // cols, at % cols]


def identity_bn(bias):
    """A BatchNorm that adds `bias` and nothing else: the model keeps its layer structure (and the safe reload of
    `prune.load`), the folded scale lives in the conv's weights."""
    torch = require("torch")
    bn = torch.nn.BatchNorm2d(len(bias)).eval()
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(bias)
    return bn
