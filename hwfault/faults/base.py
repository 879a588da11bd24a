"""The device view of a model's weights, and the interface every fault model implements."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..constraints import ConstraintSet
from ..formats import NumberFormat
from ..params import Selection


@dataclass(frozen=True, eq=False)
class DeviceView:
    """The selected weights as the chip stores them, flat (parameter after parameter, as in
    :class:`~hwfault.params.Selection`).

    ``w`` are the float32 weights of the model, ``w_q`` the values stored in the chip's number
    format, ``scale`` the per-element quantisation scale (1 for float formats) and ``tmax`` the
    max |w| of each element's tensor (the reference of relative noise and of conductance mapping).
    ``offsets`` and ``stored`` are computed once per view (treat them as read-only). ``protected``:
    the stored bits under ECC or TMR, which the bit-flip model honours (:meth:`with_protected`).
    """

    selection: Selection
    fmt: NumberFormat
    w: torch.Tensor
    w_q: torch.Tensor
    scale: torch.Tensor
    tmax: torch.Tensor
    protected: object = None  # the protected stored bits (ECC/TMR: hwfault.faults.protection.bits), or None

    @classmethod
    def build(cls, selection: Selection, fmt: NumberFormat) -> DeviceView:
        ws, qs, scales, tmaxes = [], [], [], []
        for p in selection.params:
            t = p.detach().float().cpu()  # the chip's arithmetic runs on the CPU, whatever the model's device
            s = fmt.scale(t)
            ws.append(t.reshape(-1))
            if fmt.name != "fp32":
                qs.append(fmt.quantize(t).reshape(-1))
            if fmt.scaled:
                scales.append(torch.broadcast_to(s, t.shape).reshape(-1))
            tmaxes.append(torch.full((t.numel(),), float(t.abs().max())))
        w = torch.cat(ws)
        # fp32 stores the weights as they are: w_q is w; float formats have no scale (1 everywhere, stored once)
        return cls(selection, fmt, w, torch.cat(qs) if qs else w,
                   torch.cat(scales) if scales else torch.ones(1).expand(w.numel()), torch.cat(tmaxes))

    @property
    def k(self) -> int:
        return self.w.numel()

    def with_protected(self, protected) -> DeviceView:
        """The same view with ``protected`` bits (its cached tables shared, not recomputed)."""
        out = dataclasses.replace(self, protected=protected)
        out.__dict__.update({k: v for k, v in self.__dict__.items()
                             if k in ("_bit_deltas", "offsets", "stored", "scale_sites")})
        return out

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """Where each parameter tensor starts in the flat layout, and the total length last (int64)."""
        return np.asarray(self.selection.offsets, dtype=np.int64)

    @functools.cached_property
    def stored(self) -> torch.Tensor:
        """The fault-free stored values ``w_q`` as float64 (flat)."""
        return self.w_q.double()

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def _segments(self):
        i = 0
        for p in self.selection.params:
            yield i, i + p.numel(), p.shape
            i += p.numel()

    def _seg_scale(self, a: int, b: int, shape) -> torch.Tensor | None:
        if not self.fmt.scaled:
            return None
        return self.fmt.scale(self.w[a:b].view(shape))

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Stored bit patterns (int64, flat) of ``values`` with this view's scales."""
        return torch.cat([self.fmt.encode(values[a:b].float().view(sh), self._seg_scale(a, b, sh)).reshape(-1)
                          for a, b, sh in self._segments()])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fmt.decode(codes[a:b].view(sh), self._seg_scale(a, b, sh)).reshape(-1)
                          for a, b, sh in self._segments()])

    def encode_at(self, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Stored codes of some elements (flat indices ``idx``): O(len(idx)), for sparse faults."""
        return self.fmt.encode(values.float(), self.scale[idx] if self.fmt.scaled else None)

    def decode_at(self, idx: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.fmt.decode(codes, self.scale[idx] if self.fmt.scaled else None)

    def bit_deltas(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """(k, bits): the change of each element when one stored bit flips (bit 0 = LSB)."""
        from ..formats import bit_deltas

        if values is None:  # the stored values' table, built once per view (every scaled chip shares it)
            cached = self.__dict__.get("_bit_deltas")
            if cached is None:
                cached = self.__dict__["_bit_deltas"] = self.bit_deltas(self.w_q)
            return cached
        v = values
        return torch.cat([bit_deltas(self.fmt, v[a:b].view(sh), self._seg_scale(a, b, sh)).reshape(b - a, -1)
                          for a, b, sh in self._segments()])

    @functools.cached_property
    def scale_sites(self):
        """The shared scales of a block format (:class:`~hwfault.blockformats.ScaleSites`), else None."""
        block = getattr(self.fmt, "block", None)
        if block is None:
            return None
        from ..blockformats import scale_sites

        return scale_sites(block, [self.w[a:b].view(sh) for a, b, sh in self._segments()])

    def step(self) -> torch.Tensor:
        """One quantisation step per element (flat, float32), each tensor in its own format (block
        formats cut a tensor's rows into blocks)."""
        return torch.cat([self.fmt.step(self.w[a:b].view(sh)).reshape(-1) for a, b, sh in self._segments()])

    def segment_of(self) -> torch.Tensor:
        """The index of each element's parameter tensor (k,)."""
        return torch.cat([torch.full((b - a,), i, dtype=torch.long) for i, (a, b, _) in enumerate(self._segments())])


class FaultModel:
    """One physical fault, seen two ways: ``sample`` (one random realisation, for Monte-Carlo) and
    ``constraint`` (the set that contains realisations with at least a given probability, for the
    worst case). Both act on a :class:`DeviceView`; values are flat float64 tensors of length k.
    """

    kind: str = "fault"
    transient: bool = False   # redrawn for every inference (read noise, transient bit flips)
    overrides: bool = False   # the faulty elements read a fixed value, whatever earlier faults did
    forward: bool = False     # acts on forward passes (hooks on layers), not on the stored weights
    severity_name: str = "severity"

    def sample(self, view: DeviceView, values: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The stored values after this fault, given the values before it."""
        raise NotImplementedError

    def parts(self) -> tuple[tuple[str, FaultModel], ...]:
        """The named parts of the covering set this fault contributes: itself (a fault on two
        populations of bits, each with its own budget, gives two)."""
        return ((self.kind, self),)

    def constraint(self, view: DeviceView, coverage: float) -> ConstraintSet:
        raise NotImplementedError

    def scaled(self, factor: float) -> FaultModel:
        """A copy with the severity parameter multiplied by ``factor`` (for accuracy-vs-severity curves)."""
        raise NotImplementedError

    @property
    def severity(self) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind}


def union_bound_z(coverage: float, k: int) -> float:
    """Two-sided normal quantile so that k independent |z_i| <= z all hold with prob >= coverage."""
    return float(stats.norm.isf((1 - coverage) / (2 * max(k, 1))))


def chi2_radius(coverage: float, k: int) -> float:
    """sqrt of the chi-square quantile: ||z||_2 <= r with probability ``coverage`` for z ~ N(0, I_k)."""
    return math.sqrt(float(stats.chi2.ppf(coverage, max(k, 1))))


def binomial_budget(coverage: float, trials: int, p: float) -> int:
    """The smallest n with P(Binomial(trials, p) <= n) >= coverage."""
    if p <= 0 or trials <= 0:
        return 0
    return int(stats.binom.ppf(coverage, trials, min(p, 1.0)))


def sample_positions(total: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Sparse Bernoulli(p) sampling over ``total`` sites: draw the count ~ Binomial(total, p), then
    that many distinct positions uniformly — O(count), not O(total)."""
    if p <= 0 or total == 0:
        return torch.zeros(0, dtype=torch.long)
    count = int(torch.binomial(torch.tensor([float(total)], dtype=torch.float64),
                               torch.tensor([min(p, 1.0)], dtype=torch.float64), generator=gen).item())
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    if count > total // 4:  # dense: a permutation is cheaper than rejection
        return torch.randperm(total, generator=gen)[:count]
    pos = torch.unique(torch.randint(total, (count,), generator=gen))
    while pos.numel() < count:
        extra = torch.randint(total, (count - pos.numel(),), generator=gen)
        pos = torch.unique(torch.cat([pos, extra]))
    return pos[torch.randperm(pos.numel(), generator=gen)]
