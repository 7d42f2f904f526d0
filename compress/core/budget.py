"""The accuracy budget: how far a variant may fall from FP32 (top-1 points, agreement)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-9  # accuracies are image counts over N: a drop equal to the budget must not fail by rounding


@dataclass(frozen=True)
class Budget:
    """How much accuracy a variant may give up against FP32 on the same images: top-1 points and/or agreement
    (the share of images whose top-1 equals FP32's). Empty: no budget."""

    max_top1_drop: float | None = None
    min_agreement: float | None = None

    def __bool__(self) -> bool:
        return self.max_top1_drop is not None or self.min_agreement is not None

    @classmethod
    def from_dict(cls, d: dict | None) -> Budget:
        """A budget as recorded in a report or a search (keys may be missing)."""
        d = d if isinstance(d, dict) else {}
        return cls(d.get("max_top1_drop"), d.get("min_agreement"))

    def excess(self, top1_drop: float, agreement: float) -> float:
        """How far over budget, in points of top-1 or of agreement (<= 0: within; exactly on it is within)."""
        over = max(top1_drop - self.max_top1_drop if self.max_top1_drop is not None else -np.inf,
                   100 * (self.min_agreement - agreement) if self.min_agreement is not None else -np.inf)
        return 0.0 if abs(over) < TOLERANCE * 100 else float(over)

    def over(self, r: dict) -> bool:
        """Whether a result row (with its `top1_delta` against FP32) breaks the budget."""
        if r.get("top1_delta") is None or not self:
            return False
        return self.excess(-r["top1_delta"], r["agreement"]) > 0

    def broken(self, top1_drop: float, agreement: float) -> str:
        """What a variant breaks, in words ("" when within): its top-1 against FP32 with the sign it has, and/or
        its agreement, each named only when it is over its limit."""
        parts = []
        if self.max_top1_drop is not None and top1_drop - self.max_top1_drop > TOLERANCE * 100:
            parts.append(f"top-1 {-top1_drop:+.2f} points against FP32 (limit -{self.max_top1_drop:g})")
        if self.min_agreement is not None and 100 * (self.min_agreement - agreement) > TOLERANCE * 100:
            parts.append(f"agreement {100 * agreement:.1f}% (limit {100 * self.min_agreement:g}%)")
        return ", ".join(parts)

    def text(self) -> str:
        parts = []
        if self.max_top1_drop is not None:
            parts.append(f"top-1 at most {self.max_top1_drop} points below FP32")
        if self.min_agreement is not None:
            parts.append(f"agreement at least {100 * self.min_agreement:.1f}%")
        return ", ".join(parts)


# What a recommendation may give up when the run set no budget. Top-1 alone moves by noise (one point is ten of
# 1,000 images) and says nothing of which images changed; agreement says how often the variant's answer differs
# from FP32's. 97%: INT8 post-training quantization of ResNet-50 keeps 97-98% on the reference images,
# while a variant that changes one answer in twenty (94%) is a different model, to be chosen knowingly
# (--min-agreement 0.94).
DEFAULT_BUDGET = Budget(max_top1_drop=1.0, min_agreement=0.97)
