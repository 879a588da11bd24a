"""Bit flips in the stored weights at a bit error rate (BER).

Each of the M = k * bits stored bits flips independently with probability ``ber`` (bit 0 = LSB;
two's complement codes for intN, IEEE / bfloat16 patterns for floats). Sampling draws the count
~ Binomial(M, ber), then the positions. Persistent flips hit the stored weights once per chip;
transient flips are redrawn for every inference.

Covering set: at most n = Binomial(M, ber) quantile at the coverage flipped bits
(a :class:`~hwfault.constraints.BitSet`). The ``[[faults]]`` schema is in :mod:`hwfault.faults.bitflip`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...constraints import BitSet
from ...formats import flip_bits
from ..base import FaultModel, binomial_budget, sample_positions

__all__ = ["BitFlip"]


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
        idx, new = self.sample_at(view, gen, values)
        if idx.numel() == 0:
            return values
        out = values.clone()
        out[idx] = new
        return out

    def sample_at(self, view, gen, values=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same draw as :meth:`sample`, sparse: the flat indices of the touched weights (sorted) and
        their new values (float64), flipped from ``values`` (default: the stored ``w_q``)."""
        total = view.k * view.bits
        if self.count is not None:
            pos = torch.randperm(total, generator=gen)[: self.count] if self.count > total // 64 else \
                torch.unique(torch.randint(total, (self.count,), generator=gen))
            while pos.numel() < min(self.count, total):  # distinct sites
                pos = torch.unique(torch.cat([pos, torch.randint(total, (self.count - pos.numel(),), generator=gen)]))
        else:
            pos = sample_positions(total, self.ber, gen)
        if pos.numel() == 0:
            return pos.new_zeros(0), torch.zeros(0, dtype=torch.float64)
        idx, local = torch.unique(pos // view.bits, return_inverse=True)  # only the touched weights
        base = view.w_q[idx].double() if values is None else values[idx]
        flipped = flip_bits(view.encode_at(idx, base), local, pos % view.bits)
        return idx, view.decode_at(idx, flipped).double()

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
