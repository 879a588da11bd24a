"""Bit flips in the stored weights at a bit error rate (BER).

Each of the M = k * bits stored bits flips independently with probability ``ber`` (bit 0 = LSB;
two's complement codes for intN, IEEE / bfloat16 patterns for floats). Sampling draws the count
~ Binomial(M, ber), then the positions. Persistent flips hit the stored weights once per chip;
transient flips are redrawn for every inference.

Covering set: at most n = Binomial(M, ber) quantile at the coverage flipped bits
(a :class:`~hwfault.constraints.BitSet`). The ``[[faults]]`` schema is in :mod:`hwfault.faults.bitflip`.

Element bits under ECC or TMR (``view.protected``, :mod:`hwfault.faults.protection.bits`): the flips
are drawn as without protection, then the redundancy corrects, detects (the word's weights read NaN)
or passes them; the covering set holds the unprotected bits, the protected ones' residual is a part of
its own. Scale bits are not protected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...constraints import BitSet, BlockScaleSet
from ...errors import HwfaultError
from ...formats import flip_bits
from ..base import FaultModel, binomial_budget, sample_positions

__all__ = ["BitFlip"]


@dataclass(frozen=True)
class BitFlip(FaultModel):
    ber: float = 0.0
    mode: str = "persistent"
    count: int | None = None  # exactly this many flips per chip, uniform over all bits (statistical fault injection)
    target: str = "elements"  # "elements", "scales" (the shared scales of a block format) or "both"
    scale_ber: float | None = None  # the scale bits' rate with target "both" (default: ber)
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
        their new values (float64), flipped from ``values`` (default: the stored ``w_q``). Scale bits
        (``target``) follow the element bits in the population: a flip there rescales its block."""
        n_el = view.k * view.bits if self.target != "scales" else 0
        sites = _sites(view) if self.target != "elements" else None
        n_sc = sites.count * sites.bits if sites is not None else 0
        if self.count is not None:
            pos = _distinct(n_el + n_sc, self.count, gen)
        elif self.target == "both":
            pos = torch.cat([sample_positions(n_el, self.ber, gen),
                             n_el + sample_positions(n_sc, self.ber if self.scale_ber is None else self.scale_ber, gen)])
        else:
            pos = sample_positions(n_el + n_sc, self.ber, gen)
        el, sc = pos[pos < n_el], pos[pos >= n_el] - n_el
        poison = None
        if getattr(view, "protected", None) is not None and n_el:  # ECC / TMR on some element bits
            counted = self.count is not None
            el, poison = view.protected.survivors(el, gen, self.count / (n_el + n_sc) if counted else self.ber,
                                                  counted=counted)
        idx, new = el.new_zeros(0), torch.zeros(0, dtype=torch.float64)
        if el.numel():
            idx, local = torch.unique(el // view.bits, return_inverse=True)  # only the touched weights
            base = view.w_q[idx].double() if values is None else values[idx]
            flipped = flip_bits(view.encode_at(idx, base), local, el % view.bits)
            new = view.decode_at(idx, flipped).double()
        if sc.numel():
            idx, new = _rescaled(view, sites, sc, idx, new, values)
        if poison is not None and poison.numel():  # a detected, uncorrected ECC word: its weights read NaN
            from ..protection.bits import poisoned

            idx, new = poisoned(idx, new, poison)
        return idx, new

    def parts(self):
        """Element bits and scale bits are two parts of the covering set, each with its own budget."""
        if self.target != "both":
            return ((self.kind if self.target == "elements" else "bitflip-scales", self),)
        scales = replace(self, target="scales", ber=self.ber if self.scale_ber is None else self.scale_ber,
                         scale_ber=None)
        return ((self.kind, replace(self, target="elements", scale_ber=None)), ("bitflip-scales", scales))

    def budget(self, view, coverage) -> int:
        """Flips that the covering set allows: the count, or the Binomial quantile at the coverage of
        the target's bits (with target "both": of the element bits; see :meth:`parts`)."""
        total = _sites(view).count * _sites(view).bits if self.target == "scales" else view.k * view.bits
        if self.target != "scales" and getattr(view, "protected", None) is not None:
            total -= view.protected.n  # the protected bits' residual is a part of its own (ProtectedResidual)
        if self.count is not None:
            return min(self.count, total)
        return binomial_budget(coverage, total, self.ber)

    def constraint(self, view, coverage):
        if self.target == "both":
            raise HwfaultError("a bitflip on elements and scales is two parts of the covering set: use parts()")
        if self.target == "scales":
            sites = _sites(view)
            return BlockScaleSet(view.w_q.double(), sites.element_sites(view.k), sites.factors(),
                                 self.budget(view, coverage), tuple(f"scale bit{b}" for b in range(sites.bits)))
        deltas = view.bit_deltas() if getattr(view, "protected", None) is None else \
            view.protected.unprotected(view.bit_deltas())
        return BitSet(deltas, self.budget(view, coverage), tuple(f"bit{b}" for b in range(view.bits)),
                      base=view.w_q.double(), encode=lambda v: view.encode(v.float()), bits=view.bits)

    def scaled(self, factor):
        if self.count is not None:
            return replace(self, count=max(1, round(self.count * factor)))
        return replace(self, ber=min(1.0, self.ber * factor),
                       scale_ber=None if self.scale_ber is None else min(1.0, self.scale_ber * factor))

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
        if self.target != "elements":
            out["target"] = self.target
        if self.scale_ber is not None:
            out["scale_ber"] = self.scale_ber
        return out


def _sites(view):
    """The view's shared scales, or a one-line error for a format that has none."""
    if view.scale_sites is None:
        raise HwfaultError(f"bitflip target scales/both: the format {view.fmt.name} stores no shared scales "
                           "(block formats and per-group intN do)")
    return view.scale_sites


def _distinct(total: int, count: int, gen) -> torch.Tensor:
    """``count`` distinct positions in [0, total), sorted (all of them when count >= total)."""
    pos = torch.randperm(total, generator=gen)[:count] if count > total // 64 else \
        torch.unique(torch.randint(total, (count,), generator=gen))
    while pos.numel() < min(count, total):
        pos = torch.unique(torch.cat([pos, torch.randint(total, (count - pos.numel(),), generator=gen)]))
    return pos.sort().values


def _rescaled(view, sites, pos: torch.Tensor, idx: torch.Tensor, new: torch.Tensor, values):
    """Flip scale bits ``pos`` (site * bits + bit) on top of element changes (idx, new): every element
    of a hit block keeps its code and is read with the block's new scale."""
    site, local = torch.unique(pos // sites.bits, return_inverse=True)
    return rescale(view, sites, site, flip_bits(sites.codes[site], local, pos % sites.bits), idx, new, values)


def rescale(view, sites, site: torch.Tensor, codes: torch.Tensor, idx: torch.Tensor, new: torch.Tensor, values):
    """Sites ``site`` (sorted, distinct) read with scale ``codes``, on top of element changes (idx,
    new): ``(idx, new)`` of every touched element, sorted; each element of a hit block keeps its code."""
    el, owner = sites.elements(site)
    cur = view.w_q[el].double() if values is None else values[el]
    if idx.numel():  # the element flips drawn before (their new codes are read with the new scale)
        hit = torch.isin(el, idx)
        cur[hit] = new[torch.searchsorted(idx, el[hit])]
    elem_codes = view.encode_at(el, cur)
    scaled = view.fmt.decode(elem_codes, sites.element_scale(site, codes)[torch.searchsorted(site, owner)]).double()
    keep = ~torch.isin(idx, el)
    all_idx = torch.cat([idx[keep], el])
    order = torch.argsort(all_idx)
    return all_idx[order], torch.cat([new[keep], scaled])[order]
