"""Stuck-at cells: a cell that no longer follows programming and reads a fixed value.

``granularity = "weight"`` (one multi-level cell or differential pair per weight): an SA0 cell
reads 0, an SA1 cell reads +-max|w| of its tensor (the sign of the stuck device of the pair, equally
likely). ``granularity = "bit"`` (one cell per stored bit): the bit reads 0 (SA0) or 1 (SA1).
Each cell is stuck with probability sa0 + sa1, independently; the count is drawn first.

Here: the ``[[faults]]`` schema and summary (no torch); the fault model and its covering set are
in :mod:`hwfault.faults.models.stuck`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_serializer, model_validator

from .config import FaultConfig, Prob, fail, show
from .registry import lazy_attribute, register


class StuckFault(FaultConfig):
    """Stuck-at cells at rates ``sa0`` and ``sa1`` (sa0 + sa1 <= 1). ``granularity = "weight"``: a stuck
    weight reads 0 (SA0) or, for SA1, +-max|w| of its tensor (``sa1_value = "max"``, the sign of the
    stuck device of the differential pair) or 0 (``"zero"``). ``"bit"``: the stored bit reads 0 / 1;
    ``target`` (bit granularity): the bits of the stored elements (default), of the block formats'
    shared scales (a stuck scale bit rescales its whole block), or both, at the same rates."""

    kind: Literal["stuck"]
    sa0: Prob = 0.0
    sa1: Prob = 0.0
    granularity: Literal["weight", "bit"] = "weight"
    sa0_value: Literal["zero"] = "zero"
    sa1_value: Literal["max", "zero"] = "max"
    target: Literal["elements", "scales", "both"] = "elements"

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)  # target only where set: other chips' dicts (and campaign identities) stay as they were
        if out.get("target") == "elements":
            out.pop("target")
        return out

    @model_validator(mode="after")
    def _total(self) -> StuckFault:
        if self.sa0 + self.sa1 > 1 + 1e-12:
            total = show(self.sa0 + self.sa1)
            fail(f"expected sa0 + sa1 <= 1, got {show(self.sa0)} + {show(self.sa1)} = {total}")
        if self.target != "elements" and self.granularity != "bit":
            fail(f"target \"{self.target}\": expected granularity = \"bit\" (a scale is stored in bits), "
                 f"got \"{self.granularity}\"")
        return self


def _summary(f: StuckFault) -> str:
    if f.granularity == "weight":
        return "SA0 weight reads 0, SA1 weight reads " + ("+-max|w|" if f.sa1_value == "max" else "0")
    where = {"elements": "", "scales": " (in the shared scales)", "both": " (in elements and shared scales)"}
    return "a stuck stored bit reads 0 (SA0) or 1 (SA1)" + where[f.target]


register(kind="stuck", config=StuckFault, model=".models.stuck:StuckAt", order=7, summary=_summary)


def __getattr__(name: str):
    """The fault models (torch) are imported on first use: ``hwfault.faults.stuck.StuckAt``."""
    return lazy_attribute(__name__, ".models.stuck", name)
