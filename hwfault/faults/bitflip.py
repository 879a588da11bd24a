"""Bit flips in the stored weights at a bit error rate (BER).

Each of the M = k * bits stored bits flips independently with probability ``ber`` (bit 0 = LSB;
two's complement codes for intN, IEEE / bfloat16 patterns for floats). Sampling draws the count
~ Binomial(M, ber), then the positions. Persistent flips hit the stored weights once per chip;
transient flips are redrawn for every inference.

Here: the ``[[faults]]`` schema and summary (no torch); the fault model and its covering set
are in :mod:`hwfault.faults.models.bitflip`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_serializer, model_validator

from .config import FaultConfig, Prob
from .registry import lazy_attribute, register


class BitFlipFault(FaultConfig):
    """Independent flips of the stored bits at bit error rate ``ber``: ``persistent`` (a faulty cell,
    drawn once per chip) or ``transient`` (redrawn for every inference). With ``count`` instead of
    ``ber``: exactly that many flips per chip at distinct sites drawn uniformly over all stored bits
    (classic statistical fault injection; the fault population is sites x bits). ``target``: the
    bits of the stored elements (default), of the block formats' shared scales (a flip there changes a
    whole block), or both (``scale_ber``: the scale bits' own rate; default ``ber``)."""

    kind: Literal["bitflip"]
    ber: Prob | None = None
    count: Annotated[int, Field(strict=True, ge=1)] | None = None
    mode: Literal["persistent", "transient"] = "persistent"
    target: Literal["elements", "scales", "both"] = "elements"
    scale_ber: Prob | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # target and scale_ber only where set: other chips' dicts (and campaign identities) stay as they were
        out = handler(self)
        if out.get("target") == "elements":
            out.pop("target")
        if out.get("scale_ber") is None:
            out.pop("scale_ber", None)
        return out

    @model_validator(mode="after")
    def _ber_or_count(self):
        if (self.ber is None) == (self.count is None):
            raise ValueError("expected exactly one of ber (a bit error rate) or count (flips per chip), got "
                             + ("both" if self.ber is not None else "neither"))
        if self.scale_ber is not None and (self.target != "both" or self.ber is None):
            raise ValueError("scale_ber: expected it (the rate of the scale bits) only with target = \"both\" and a ber, "
                             f"got it with target = \"{self.target}\"" + ("" if self.ber is not None else " and a count"))
        return self


register(kind="bitflip", config=BitFlipFault, model=".models.bitflip:BitFlip", order=6,
         args=lambda f: {"ber": 0.0 if f.ber is None else f.ber, "mode": f.mode, "count": f.count, "target": f.target,
                         "scale_ber": f.scale_ber},
         summary=lambda f: "stored bits flip; " + ("faulty cells fixed per chip" if f.mode == "persistent"
                                                   else "redrawn every inference"))


def __getattr__(name: str):
    """The fault models (torch) are imported on first use: ``hwfault.faults.bitflip.BitFlip``."""
    return lazy_attribute(__name__, ".models.bitflip", name)
