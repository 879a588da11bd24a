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

import torch

from ..constraints import BitSet
from ..formats import flip_bits
from .base import FaultModel, binomial_budget, sample_positions


@dataclass(frozen=True)
class BitFlip(FaultModel):
    ber: float
    mode: str = "persistent"
    kind = "bitflip"
    severity_name = "BER"

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.mode == "transient"

    def sample(self, view, values, gen):
        pos = sample_positions(view.k * view.bits, self.ber, gen)
        if pos.numel() == 0:
            return values
        codes = view.encode(values)
        flipped = flip_bits(codes, pos // view.bits, pos % view.bits)
        out = values.clone()
        idx = torch.unique(pos // view.bits)
        out[idx] = view.decode(flipped)[idx].double()
        return out

    def budget(self, view, coverage) -> int:
        return binomial_budget(coverage, view.k * view.bits, self.ber)

    def constraint(self, view, coverage):
        return BitSet(view.bit_deltas(), self.budget(view, coverage), tuple(f"bit{b}" for b in range(view.bits)),
                      base=view.w_q.double(), encode=lambda v: view.encode(v.float()), bits=view.bits)

    def scaled(self, factor):
        return replace(self, ber=min(1.0, self.ber * factor))

    @property
    def severity(self):
        return self.ber

    def describe(self):
        return {"kind": self.kind, "ber": self.ber, "mode": self.mode}
