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

from pydantic import Field, model_validator

from .config import FaultConfig, Prob
from .registry import lazy_attribute, register


class BitFlipFault(FaultConfig):
    """Independent flips of the stored bits at bit error rate ``ber``: ``persistent`` (a faulty cell,
    drawn once per chip) or ``transient`` (redrawn for every inference). With ``count`` instead of
    ``ber``: exactly that many flips per chip at distinct sites drawn uniformly over all stored bits
    (classic statistical fault injection; the fault population is sites x bits)."""

    kind: Literal["bitflip"]
    ber: Prob | None = None
    count: Annotated[int, Field(strict=True, ge=1)] | None = None
    mode: Literal["persistent", "transient"] = "persistent"

    @model_validator(mode="after")
    def _ber_or_count(self):
        if (self.ber is None) == (self.count is None):
            raise ValueError("expected exactly one of ber (a bit error rate) or count (flips per chip), got "
                             + ("both" if self.ber is not None else "neither"))
        return self


register(kind="bitflip", config=BitFlipFault, model=".models.bitflip:BitFlip", order=6,
         args=lambda f: {"ber": 0.0 if f.ber is None else f.ber, "mode": f.mode, "count": f.count},
         summary=lambda f: "stored bits flip; " + ("faulty cells fixed per chip" if f.mode == "persistent"
                                                   else "redrawn every inference"))


def __getattr__(name: str):
    """The fault models (torch) are imported on first use: ``hwfault.faults.bitflip.BitFlip``."""
    return lazy_attribute(__name__, ".models.bitflip", name)
