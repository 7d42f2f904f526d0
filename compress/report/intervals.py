"""95% intervals for every comparison with FP32, from what a run already measured.

- top-1 difference: paired, from the images whose top-1 changed (→wrong, →right) on the same images:
  Newcombe's hybrid score interval for a difference of paired proportions (his method 10, built on Wilson
  intervals). An interval that holds zero is "no measurable change".
- agreement: Wilson's score interval for a binomial proportion.
- speedup: every round times every variant of a runtime, so each round gives a paired ratio (FP32's round median
  over the variant's); the speedup is their geometric mean, with Student's t interval on the log ratios.
"""

from __future__ import annotations

import math

Z = 1.959964  # the normal quantile of a two-sided 95% interval
# Student's t at 0.975 for 1..30 degrees of freedom; beyond, the normal quantile
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for k successes in n trials."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(n: int, base_right: int, to_wrong: int, to_right: int) -> tuple[float, float]:
    """95% interval of (variant's accuracy - baseline's) on the same n images (Newcombe, method 10). The baseline
    gets `base_right` right; `to_wrong` of those the variant gets wrong, and it gets `to_right` right that the
    baseline got wrong."""
    b, c = to_wrong, to_right
    a = base_right - b
    d = n - a - b - c
    if min(a, b, c, d) < 0:
        raise ValueError("inconsistent counts for a paired comparison")
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b, n), wilson(a + c, n)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    delta = p2 - p1
    low = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    high = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return delta - low, delta + high


def ratio(numerators: list[float], denominators: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The geometric mean of paired ratios numerator_i / denominator_i and its 95% t interval (None with one
    pair: one round says nothing of the spread)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("paired ratios need the same number of rounds on both sides")
    logs = [math.log(x / y) for x, y in zip(numerators, denominators)]
    mean = sum(logs) / len(logs)
    if len(logs) < 2:
        return math.exp(mean), None
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1))
    t = T975[len(logs) - 2] if len(logs) - 1 <= len(T975) else Z
    half = t * sd / math.sqrt(len(logs))
    return math.exp(mean), (math.exp(mean - half), math.exp(mean + half))


def includes(interval, value: float) -> bool:
    """Whether an interval (None: not measured) holds `value`: a difference whose interval holds 0 is noise."""
    return interval is not None and interval[0] <= value <= interval[1]
