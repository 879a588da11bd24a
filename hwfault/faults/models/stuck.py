"""Stuck-at cells: a cell that no longer follows programming and reads a fixed value.

``granularity = "weight"`` (one multi-level cell or differential pair per weight): an SA0 cell
reads 0, an SA1 cell reads +-max|w| of its tensor (the sign of the stuck device of the pair, equally
likely). ``granularity = "bit"`` (one cell per stored bit): the bit reads 0 (SA0) or 1 (SA1).
Each cell is stuck with probability sa0 + sa1, independently; the count is drawn first.

Covering set: at most n = Binomial quantile stuck cells, each taking one of its stuck values
(a :class:`~hwfault.constraints.CandidateSet`). The ``[[faults]]`` schema is in :mod:`hwfault.faults.stuck`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...constraints import BitSet, BlockScaleSet, CandidateSet
from ...formats import stick_bits
from ..base import FaultModel, binomial_budget, sample_positions
from .bitflip import _sites, rescale

__all__ = ["StuckAt"]


@dataclass(frozen=True)
class StuckAt(FaultModel):
    sa0: float = 0.0
    sa1: float = 0.0
    granularity: str = "weight"
    sa1_value: str = "max"
    target: str = "elements"  # bit granularity: "elements", "scales" (a block format's shared scales) or "both"
    kind = "stuck"
    severity_name = "stuck rate"

    @property
    def overrides(self) -> bool:  # type: ignore[override]
        """A stuck weight reads its stuck value whatever earlier faults did to it."""
        return self.granularity == "weight"

    @property
    def rate(self) -> float:
        return self.sa0 + self.sa1

    def _cells(self, view) -> int:
        if self.target == "scales":
            return _sites(view).count * _sites(view).bits
        return view.k * (view.bits if self.granularity == "bit" else 1)

    def sample(self, view, values, gen):
        n_el = 0 if self.target == "scales" else self._cells(view)
        sites = _sites(view) if self.target != "elements" else None
        n_sc = sites.count * sites.bits if sites is not None else 0
        pos = sample_positions(n_el + n_sc, self.rate, gen)  # scale cells follow the element cells
        if pos.numel() == 0:
            return values
        one = torch.rand(pos.numel(), generator=gen, dtype=torch.float64) < (self.sa1 / self.rate)
        out = values.clone()
        if self.granularity == "bit":
            el, sc, one_el, one_sc = pos[pos < n_el], pos[pos >= n_el] - n_el, one[pos < n_el], one[pos >= n_el]
            idx, new = el.new_zeros(0), torch.zeros(0, dtype=torch.float64)
            if el.numel():
                idx, local = torch.unique(el // view.bits, return_inverse=True)
                codes = stick_bits(view.encode_at(idx, values[idx]), local, el % view.bits, one_el.long())
                new = view.decode_at(idx, codes).double()
            if sc.numel():  # a stuck scale bit: every element of its block read with the block's new scale
                site, local = torch.unique(sc // sites.bits, return_inverse=True)
                codes = stick_bits(sites.codes[site], local, sc % sites.bits, one_sc.long())
                idx, new = rescale(view, sites, site, codes, idx, new, values)
            out[idx] = new
            return out
        sign = torch.where(torch.rand(pos.numel(), generator=gen) < 0.5, -1.0, 1.0).double()
        high = view.tmax.double()[pos] * sign if self.sa1_value == "max" else torch.zeros(pos.numel(), dtype=torch.float64)
        out[pos] = torch.where(one, high, torch.zeros_like(high))
        return out

    def budget(self, view, coverage) -> int:
        return binomial_budget(coverage, self._cells(view), self.rate)

    def parts(self):
        """Element cells and scale cells are two parts of the covering set, each with its own budget."""
        if self.target == "elements":
            return ((self.kind, self),)
        if self.target == "scales":
            return (("stuck-scales", self),)
        return ((self.kind, replace(self, target="elements")), ("stuck-scales", replace(self, target="scales")))

    def constraint(self, view, coverage):
        w = view.w_q.double()
        n = self.budget(view, coverage)
        if self.target == "both":
            raise ValueError("a stuck fault on elements and scales is two parts of the covering set: use parts()")
        if self.target == "scales":  # a stuck scale bit changes its block only if it sticks at the other value
            sites = _sites(view)
            bits = (sites.codes[:, None] >> torch.arange(sites.bits)) & 1
            allowed = ((bits == 1) & (self.sa0 > 0)) | ((bits == 0) & (self.sa1 > 0))
            f = sites.factors()
            return BlockScaleSet(w, sites.element_sites(view.k), torch.where(allowed, f, torch.zeros_like(f)), n,
                                 tuple(f"scale bit{b}" for b in range(sites.bits)))
        if self.granularity == "bit":
            deltas = view.bit_deltas()
            codes = view.encode(view.w_q)
            bits = (codes[:, None] >> torch.arange(view.bits)) & 1
            # a stuck bit changes the value only if it sticks at the other value, and only if that
            # kind of fault occurs (SA0 clears set bits, SA1 sets clear bits)
            allowed = ((bits == 1) & (self.sa0 > 0)) | ((bits == 0) & (self.sa1 > 0))
            return BitSet(torch.where(allowed, deltas, torch.zeros_like(deltas)), n,
                          tuple(f"bit{b}" for b in range(view.bits)), base=view.w_q.double(),
                          encode=lambda v: view.encode(v.float()), bits=view.bits,
                          clear_ok=self.sa0 > 0, set_ok=self.sa1 > 0)
        opts, labels = [], []
        if self.sa0 > 0:
            opts.append(-w)
            labels.append("sa0")
        if self.sa1 > 0:
            tm = view.tmax.double()
            if self.sa1_value == "max":
                opts += [tm - w, -tm - w]
                labels += ["sa1+", "sa1-"]
            else:
                opts.append(-w)
                labels.append("sa1")
        return CandidateSet(torch.stack(opts, dim=1), n, tuple(labels))

    def scaled(self, factor):
        f = min(factor, 1.0 / self.rate) if self.rate > 0 else factor
        return replace(self, sa0=self.sa0 * f, sa1=self.sa1 * f)

    @property
    def severity(self):
        return self.rate

    def describe(self):
        out = {"kind": self.kind, "sa0": self.sa0, "sa1": self.sa1, "granularity": self.granularity,
               "sa1_value": self.sa1_value}
        return out if self.target == "elements" else {**out, "target": self.target}
