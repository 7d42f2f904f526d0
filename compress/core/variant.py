"""The variant grammar: one deployable model, an optional pruning step, then a precision."""

from __future__ import annotations

import re
from dataclasses import dataclass

from compress.core.errors import UserError
from compress.core.formats import TARGETS

_VARIANT = re.compile(r"^(?:(?P<prune>[pd]\d{1,2}|s24)(?:-|$))?(?P<precision>fp32|int8-cpu|int8)?(?P<mixed>-mixed)?$")


@dataclass(frozen=True)
class Variant:
    """One deployable model: an optional pruning step, then a precision. `p30-int8` = 30% pruned, then INT8;
    `int8-mixed` = int8 with its most sensitive layers kept in float (the fallback search)."""

    name: str
    prune: str | None
    precision: str
    mixed: bool = False

    @property
    def parent(self) -> str | None:
        """The variant this one is made from (its lineage): int8 <- fp32, p30-int8 <- p30 <- fp32."""
        if self.mixed:
            return self.name.removesuffix("-mixed")
        if self.precision != "fp32":
            return self.prune or "fp32"
        return "fp32" if self.prune else None

    @property
    def prune_ratio(self) -> float | None:
        return int(self.prune[1:]) / 100 if self.prune and self.prune.startswith("p") else None

    @property
    def dropped_blocks(self) -> int | None:
        return int(self.prune[1:]) if self.prune and self.prune.startswith("d") else None

    @property
    def target(self) -> str:
        return TARGETS[self.precision]


def parse_variant(name: str) -> Variant:
    text = name.strip() if isinstance(name, str) else ""
    m = _VARIANT.match(text)
    if not text or not m or (m["mixed"] and m["precision"] not in ("int8",)):
        raise UserError(f"unknown variant {str(name)[:40]!r}",
                        "variants are fp32, int8, int8-cpu, pNN (NN% fewer MACs), dN (N blocks dropped), "
                        "s24 (2:4 sparse), and pruned+quantized such as p30-int8")
    prune, precision = m["prune"], m["precision"] or "fp32"
    if prune and prune.startswith("p") and not 0 < int(prune[1:]) < 100:
        raise UserError(f"variant {text!r}: the pruning ratio must be 1..99 percent")
    if prune and prune.startswith("d") and not int(prune[1:]) > 0:
        raise UserError(f"variant {text!r}: drop at least one block (d1, d2, ...)")
    return Variant(text, prune, precision, bool(m["mixed"]))


def parse_variants(text: str, prune_ratios: str | None = None) -> tuple[Variant, ...]:
    """Parse a comma list, adding each variant's parents (a report always has its FP32 baseline). A sweep of
    pruning ratios adds pNN for each ratio, and pNN-int8 (pNN-int8-cpu) when int8 (int8-cpu) is asked for."""
    import math

    wanted = [parse_variant(v) for v in text.split(",") if v.strip()]
    if any(v.mixed for v in wanted):
        raise UserError("VARIANT-mixed is made by the fallback search", "ask for int8 with --fallback")
    for ratio in (prune_ratios or "").split(","):
        if not ratio.strip():
            continue
        try:
            value = float(ratio)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 < value < 1:
            raise UserError(f"--prune-ratios: {ratio.strip()[:20]!r} is not a fraction in (0, 1)",
                            "e.g. --prune-ratios 0.2,0.3,0.5")
        base = parse_variant(f"p{max(1, min(99, round(value * 100)))}")
        wanted.append(base)
        wanted += [parse_variant(f"{base.name}-{v.precision}") for v in wanted
                   if v.prune is None and v.precision != "fp32"]
    out: dict[str, Variant] = {"fp32": parse_variant("fp32")}
    for v in wanted:
        if v.parent and v.parent not in out:
            out[v.parent] = parse_variant(v.parent)
        out[v.name] = v
    return tuple(out.values())
