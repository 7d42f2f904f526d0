"""The reconstruction's tunables, in one frozen object passed in: studies change a copy, never a module global."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ALLOCATIONS = ("stages", "uniform", "sensitivity")  # where the channels go (`allocate`)
SELECTIONS = ("obs", "energy")  # which channels stay (`reconstruct.choose_channels`)
DROP_SELECTIONS = ("greedy", "independent")  # which blocks dN drops (`drop.drop`)


@dataclass(frozen=True)
class ReconstructConfig:
    """How pNN and dN are re-fitted. The defaults are what `compress run` uses; every figure behind them is in
    benchmarks/results/ (prune-distill.md; re-examined on the calibration folder, not the evaluation images, in
    defaults.md)."""

    round_to: int = 8  # kept channel counts are multiples of this
    # where the cut goes: "stages", a share per stage (`stage_shares`); "uniform"; "sensitivity", from each
    # block's measured sensitivity on `sensitivity_images`
    allocation: str = "stages"
    # each stage's share of the pruned fraction, layer1..layer4 (prune-distill.md, "the cut moved")
    stage_shares: tuple[float, ...] = (1.5, 1.2, 0.7, 0.0)
    most_cut: float = 0.5  # what a share above 1 may take from a block (`allocate.inner_counts`)
    sensitivity_images: int = 64
    selection: str = "obs"  # obs: optimal brain surgeon on the consumer; energy: activation energy
    selection_images: int = 512  # obs: the consumer statistics of this many images choose the channels
    # dN: "greedy", one block at a time, each measured with those already chosen gone; "independent", the n least
    # sensitive, each measured alone (benchmarks/results/drop-blocks.md)
    drop_selection: str = "greedy"
    damp: float = 1e-3  # ridge damping, relative to the mean diagonal of X^T X
    positions: int = 512  # sampled output positions per image in the fits
    chunk: int = 16  # images a forward pass holds at once
    relu_rounds: int = 2  # rounds of `lstsq.relu_fit` after the plain fit: p30 on 256 images, 84.7% -> 86.0%
    refine_epochs: int = 0  # at most this many Adam passes a block after its fit (`refine.refine`)
    refine_lr: float = 1e-3  # a block left whole moves at a tenth (its fit is already close)
    refine_batch: int = 16
    # of each block's output side, what one refinement step trains on: a random window (`refine.windows`), the
    # whole map at 1.0. A step costs about the window's area
    refine_window: float = 1.0
    reserve: float = 0.02  # of a time limit, left unplanned (`refine.plan_passes`)
    seed: int = 0  # each block draws from its own stream, seeded from this and the block (`reconstruct.generator`)

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}")
        if self.drop_selection not in DROP_SELECTIONS:
            raise ValueError(f"unknown drop selection {self.drop_selection!r}")
        if not 0 < self.refine_window <= 1:
            raise ValueError(f"refine_window is a fraction in (0, 1], got {self.refine_window}")

    def replace(self, **changes) -> ReconstructConfig:
        return dataclasses.replace(self, **changes)


DEFAULT = ReconstructConfig()
