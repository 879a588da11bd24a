"""Bit flips in the stored weights at a bit error rate (BER).

Each of the M = k * bits stored bits flips independently with probability ``ber`` (bit 0 = LSB;
two's complement codes for intN, IEEE / bfloat16 patterns for floats). Sampling draws the count
~ Binomial(M, ber), then the positions. Persistent flips hit the stored weights once per chip;
transient flips are redrawn for every inference.

Covering set: at most n = Binomial(M, ber) quantile at the coverage flipped bits
(a :class:`~hwfault.constraints.BitSet`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from ..constraints import BitSet
from ..formats import flip_bits
from .base import FaultModel, binomial_budget, sample_positions
from .config import FaultConfig, Prob
from .registry import register


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


@dataclass(frozen=True)
class BitFlip(FaultModel):
    ber: float = 0.0
    mode: str = "persistent"
    count: int | None = None  # exactly this many flips per chip, uniform over all bits (statistical fault injection)
    kind = "bitflip"

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.mode == "transient"

    def sample(self, view, values, gen):
        total = view.k * view.bits
        if self.count is not None:
            pos = torch.randperm(total, generator=gen)[: self.count] if self.count > total // 64 else \
                torch.unique(torch.randint(total, (self.count,), generator=gen))
            while pos.numel() < min(self.count, total):  # distinct sites
                pos = torch.unique(torch.cat([pos, torch.randint(total, (self.count - pos.numel(),), generator=gen)]))
        else:
            pos = sample_positions(total, self.ber, gen)
        if pos.numel() == 0:
            return values
        idx, local = torch.unique(pos // view.bits, return_inverse=True)  # only the touched weights
        flipped = flip_bits(view.encode_at(idx, values[idx]), local, pos % view.bits)
        out = values.clone()
        out[idx] = view.decode_at(idx, flipped).double()
        return out

    def budget(self, view, coverage) -> int:
        if self.count is not None:
            return min(self.count, view.k * view.bits)
        return binomial_budget(coverage, view.k * view.bits, self.ber)

    def constraint(self, view, coverage):
        return BitSet(view.bit_deltas(), self.budget(view, coverage), tuple(f"bit{b}" for b in range(view.bits)),
                      base=view.w_q.double(), encode=lambda v: view.encode(v.float()), bits=view.bits)

    def scaled(self, factor):
        if self.count is not None:
            return replace(self, count=max(1, round(self.count * factor)))
        return replace(self, ber=min(1.0, self.ber * factor))

    @property
    def severity(self):
        return self.count if self.count is not None else self.ber

    @property
    def severity_name(self) -> str:  # type: ignore[override]
        return "flips" if self.count is not None else "BER"

    def describe(self):
        out = {"kind": self.kind, "ber": self.ber, "mode": self.mode}
        if self.count is not None:
            out["count"] = self.count
        return out


register(kind="bitflip", config=BitFlipFault, model=BitFlip, order=6,
         args=lambda f: {"ber": 0.0 if f.ber is None else f.ber, "mode": f.mode, "count": f.count},
         summary=lambda f: "stored bits flip; " + ("faulty cells fixed per chip" if f.mode == "persistent"
                                                   else "redrawn every inference"))
