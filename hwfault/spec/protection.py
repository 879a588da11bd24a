"""The ``[[protection]]`` entries of a chip spec (no torch): what a chip does against its faults.

- ``ecc``: SECDED (72, 64) on a budget of stored weight bits: the protected bits are packed 64 to a
  word with 8 check bits; one flip per word is corrected, two are detected (a DUE: the word's
  values read NaN), three or more pass silently.
- ``tmr``: triple modular redundancy on a budget of bits: two extra copies, read by majority vote
  (a bit is wrong when two of its three copies flip).
- ``ranger``: range restriction of layer outputs (Chen et al., DSN 2021): per-layer bounds profiled
  on the training split, values outside clipped to them (``mode = "clip"``) or zeroed (``"zero"``).
- ``clip-weights``: the values read from the weight memory restricted to each tensor's fault-free
  range (clipped or zeroed).
- ``checksum``: ABFT-style column checksums on Linear/Conv outputs; a mismatch beyond ``rtol`` of the
  sums' magnitude flags the input (its outputs read NaN: a DUE instead of an SDC).

``budget`` (ecc, tmr): a share of the stored weight bits in (0, 1] (a float, e.g. 0.005), or a
number of bits (an integer >= 1). ``strategy``: which bits, ``ranked`` (the worst-case ranking:
gradient x bit damage, the first-order loss change of each flip), ``random`` or ``magnitude``
(the largest weights' most significant bits). The chip model is in
:mod:`hwfault.faults.protection`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from ..faults.config import LayerSelection, Pos, StrictModel, Text, fail, num, show

__all__ = ["PROTECTION_KINDS", "STRATEGIES", "Protection", "BitProtection", "EccProtection", "TmrProtection",
           "RangerProtection", "ClipWeightsProtection", "ChecksumProtection", "check_budget", "protection_line"]

PROTECTION_KINDS = ("ecc", "tmr", "ranger", "clip-weights", "checksum")
STRATEGIES = ("ranked", "random", "magnitude")


def check_budget(v, what: str = "budget"):
    """A budget: a share of the stored weight bits in (0, 1] (float) or a number of bits >= 1 (int)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"expected a share of the stored weight bits in (0, 1] or a number of bits (an integer >= 1), got {show(v)}")
    if isinstance(v, int):
        if v < 1:
            fail(f"expected a number of bits >= 1 (or a share in (0, 1] as a float), got {v}")
        return v
    if not (0 < v <= 1):
        fail(f"expected a share of the stored weight bits in (0, 1] (or a number of bits as an integer), got {show(v)}")
    return v


class _Entry(StrictModel):
    source: Text = ""


class BitProtection(_Entry):
    """Redundancy on a budget of stored weight bits (ECC or TMR), chosen by ``strategy``."""

    budget: Union[Annotated[int, Field(strict=True)], Annotated[float, Field(strict=True)]]
    strategy: Literal["ranked", "random", "magnitude"] = "ranked"
    seed: Annotated[int, Field(strict=True, ge=0)] = 0  # the random strategy's draw

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v):
        return check_budget(v)


class EccProtection(BitProtection):
    kind: Literal["ecc"]


class TmrProtection(BitProtection):
    kind: Literal["tmr"]


class _Layers(LayerSelection, _Entry):
    """A guard's layers (:class:`~hwfault.faults.config.LayerSelection`)."""


class RangerProtection(_Layers):
    """Bounds of the selected layers' outputs, profiled on ``inputs`` inputs of the training split."""

    kind: Literal["ranger"]
    mode: Literal["clip", "zero"] = "clip"
    inputs: Annotated[int, Field(strict=True, ge=1)] = 1000


class ClipWeightsProtection(_Entry):
    kind: Literal["clip-weights"]
    mode: Literal["clip", "zero"] = "clip"


class ChecksumProtection(_Layers):
    """Column checksums of Linear/Conv outputs (``types`` conv, linear only)."""

    kind: Literal["checksum"]
    rtol: Pos = 1e-2

    @field_validator("types")
    @classmethod
    def _mm(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            if t not in ("conv", "linear"):
                fail(f"expected conv or linear (a checksum guards a matrix product), got '{t}'", index=i)
        return v


Protection = Annotated[Union[EccProtection, TmrProtection, RangerProtection, ClipWeightsProtection,
                             ChecksumProtection], Field(discriminator="kind")]

BY_KIND = {"ecc": EccProtection, "tmr": TmrProtection, "ranger": RangerProtection,
           "clip-weights": ClipWeightsProtection, "checksum": ChecksumProtection}


def check_entries(v: list) -> list:
    """At most one entry of each kind, and ECC or TMR on the bits, not both."""
    kinds = [p.kind for p in v]
    for i, k in enumerate(kinds):
        if k in kinds[:i]:
            fail(f"expected at most one '{k}' protection, got a second one", i, "kind")
    if "ecc" in kinds and "tmr" in kinds:
        fail("expected ecc or tmr on the weight bits, not both (a bit has one scheme)", kinds.index("tmr"), "kind")
    return v


def _budget_words(b) -> str:
    return f"{num(100 * b)}% of the stored weight bits" if isinstance(b, float) else f"{b:,} stored weight bits"


def protection_line(p) -> str:
    """``kind: settings (what it does)`` for ``hwfault chips show``."""
    if p.kind in ("ecc", "tmr"):
        how = ("SECDED (72, 64): corrects 1 flip per 64-bit word, detects 2" if p.kind == "ecc"
               else "three copies, majority vote")
        return f"{p.kind}: {_budget_words(p.budget)}, chosen {p.strategy} ({how})"
    if p.kind == "ranger":
        return (f"ranger: outputs of {', '.join(p.types)} layers {'clipped' if p.mode == 'clip' else 'zeroed'} "
                f"outside the bounds profiled on {p.inputs:,} training inputs")
    if p.kind == "clip-weights":
        return ("clip-weights: weights read outside each tensor's fault-free range "
                + ("clipped to it" if p.mode == "clip" else "zeroed"))
    return f"checksum: column checksums on {', '.join(p.types)} outputs, rtol {num(p.rtol)} (a mismatch reads NaN: DUE)"
