"""Constraint sets: the admissible parameter perturbations, with one verb set for every geometry.

A perturbation is a flat vector ``a`` over a :class:`~hwfault.params.Selection` (k elements).
Every set answers four verbs:

- ``maximize(g)``: the linear oracle, argmax over the set of ``a . g``;
- ``project(a)``: a point of the set close to ``a`` (exact Euclidean projection where noted);
- ``contains(a)``: membership, with a relative tolerance for float round-off;
- ``random(generator)``: a random member drawn as the paper's random corruption (Eq. 5);
- ``at(eps)``: the set at size eps, which is how the corruption methods sweep a set: an L_p ball of
  radius eps; any other continuous set scaled by eps (eps = 1 is the set itself); a discrete set
  (bit flips, stuck cells) has one size only.

The norm is data (``p``, ``eps``, ``n``), not a class per norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .errors import ConstraintError


def parse_norm(p: float | str) -> float:
    """``"inf"``/``"2"``/``1.5`` -> float p in [1, inf]; a clear error otherwise."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ConstraintError(f"expected a norm p >= 1 or 'inf', got '{p}'") from None
    if math.isnan(v) or v < 1:
        raise ConstraintError(f"expected a norm p >= 1 or 'inf', got {p}")
    return v


def dual(p: float) -> float:
    """The dual exponent q with 1/p + 1/q = 1."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)


def top_n_mask(v: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask of the ``n`` entries of largest magnitude (exactly n, ties by index order)."""
    if n >= v.numel():
        return torch.ones_like(v, dtype=torch.bool)
    mask = torch.zeros_like(v, dtype=torch.bool)
    mask[torch.topk(v.abs(), n, sorted=False).indices] = True
    return mask


class ConstraintSet:
    """Interface shared by all perturbation sets."""

    def maximize(self, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def project(self, a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def random(self, k: int, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to_dict(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def at(self, eps: float) -> ConstraintSet:
        """The set at size ``eps`` (see the module docstring)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LpBall(ConstraintSet):
    """S = {a : ||a||_p <= eps, ||a||_0 <= n} (Sun et al. 2021, Definition 3; ``n=None`` means n = k).

    ``maximize`` returns the closed form of Eq. (10), which lies on the sphere ||a||_p = eps:
    h = top_n(g), a = eps * sgn(h) * (|h| / ||h||_q)^(1/(p-1)), attaining a.g = eps ||h||_q (Eq. 11).
    ``project`` keeps the n largest entries, then projects onto the ball: exact Euclidean projection
    for p = 1 (Duchi et al. 2008), 2 and inf; radial rescaling for other p.
    """

    p: float = 2.0
    eps: float = 1.0
    n: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "p", parse_norm(self.p))
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ConstraintError(f"expected eps >= 0 and finite, got {self.eps}")
        if self.n is not None and (int(self.n) != self.n or self.n <= 0):
            raise ConstraintError(f"expected n > 0 (number of corrupted parameters), got {self.n}")

    def with_eps(self, eps: float) -> LpBall:
        return replace(self, eps=float(eps))

    def at(self, eps: float) -> LpBall:
        return self.with_eps(eps)

    def _n(self, k: int) -> int:
        return k if self.n is None else min(int(self.n), k)

    def norm(self, a: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(a.double(), ord=self.p))

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        g64 = g.detach().reshape(-1).double()
        k = g64.numel()
        mask = top_n_mask(g64, self._n(k))
        h = torch.where(mask, g64, torch.zeros_like(g64))
        a = torch.zeros_like(g64)
        amax = h.abs().max() if k else torch.tensor(0.0)
        if self.eps == 0 or amax == 0:
            return a.to(g.dtype)
        if math.isinf(self.p):
            a = self.eps * torch.sign(h)
        elif self.p == 1:
            i = int(h.abs().argmax())
            a[i] = self.eps * torch.sign(h[i])
        else:
            # (|h| / ||h||_q)^(1/(p-1)), computed scale-free: normalise by max|h| and renormalise in p
            a = torch.sign(h) * (h.abs() / amax).pow(1.0 / (self.p - 1))
            a = a * (self.eps / torch.linalg.vector_norm(a, ord=self.p))
        return a.to(g.dtype)

    def first_order(self, g: torch.Tensor) -> float:
        """eps * ||top_n(g)||_q: the first-order estimate of the worst-case loss change (Eq. 11)."""
        g64 = g.detach().reshape(-1).double()
        h = g64[top_n_mask(g64, self._n(g64.numel()))]
        return self.eps * float(torch.linalg.vector_norm(h, ord=dual(self.p)))

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Random corruption (Eq. 5): the closed form applied to r ~ N(0, I)."""
        r = torch.randn(k, generator=generator, dtype=torch.float64)
        return self.maximize(r).to(dtype)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        a64 = a.detach().reshape(-1).double()
        n = self._n(a64.numel())
        if n < a64.numel():
            a64 = torch.where(top_n_mask(a64, n), a64, torch.zeros_like(a64))
        if math.isinf(self.p):
            out = a64.clamp(-self.eps, self.eps)
        elif self.p == 1:
            out = _project_l1(a64, self.eps)
        else:
            nrm = torch.linalg.vector_norm(a64, ord=self.p)
            out = a64 * (self.eps / nrm) if nrm > self.eps else a64
        return out.to(a.dtype)

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a = a.detach().reshape(-1)
        if not bool(torch.isfinite(a).all()):
            return False
        if int(torch.count_nonzero(a)) > self._n(a.numel()):
            return False
        return self.norm(a) <= self.eps * (1 + rtol) + 1e-12

    def to_dict(self) -> dict:
        return {"kind": "lp_ball", "p": "inf" if math.isinf(self.p) else self.p, "eps": self.eps, "n": self.n}


def _project_l1(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection onto the L1 ball of radius eps (Duchi et al., ICML 2008)."""
    if float(v.abs().sum()) <= eps:
        return v
    if eps == 0:
        return torch.zeros_like(v)
    u = v.abs().sort(descending=True).values
    css = u.cumsum(0)
    ks = torch.arange(1, u.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u * ks > (css - eps)).max())
    theta = (css[rho] - eps) / (rho + 1)
    return torch.sign(v) * (v.abs() - theta).clamp(min=0)


# ----------------------------------------------------------------------------- device-fault geometries


def _flat64(v: torch.Tensor) -> torch.Tensor:
    return v.detach().reshape(-1).double()


@dataclass(frozen=True, eq=False)
class Box(ConstraintSet):
    """Per-element interval {a : lo <= a <= hi} (lo <= 0 <= hi). Quantisation (half a step), drift
    (a multiplicative range) and union-bound Gaussian sets are boxes. ``maximize`` is the vertex
    sgn(g); ``project`` is the exact Euclidean projection (clamping)."""

    lo: torch.Tensor
    hi: torch.Tensor

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        g64 = _flat64(g)
        out = torch.where(g64 > 0, self.hi.double(), torch.where(g64 < 0, self.lo.double(), torch.zeros_like(g64)))
        return out.to(g.dtype)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(_flat64(a), self.hi.double()), self.lo.double()).to(a.dtype)

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a64 = _flat64(a)
        slack = rtol * torch.maximum(self.hi.double().abs(), self.lo.double().abs()) + 1e-12
        return bool(torch.isfinite(a64).all() and (a64 <= self.hi.double() + slack).all()
                    and (a64 >= self.lo.double() - slack).all())

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        u = torch.rand(self.lo.numel(), generator=generator, dtype=torch.float64)
        return (self.lo.double() + u * (self.hi.double() - self.lo.double())).to(dtype)

    def to_dict(self) -> dict:
        return {"kind": "box", "k": self.lo.numel(), "mean_width": float((self.hi - self.lo).double().mean())}

    def at(self, eps: float) -> Box:
        return self if eps == 1 else Box(self.lo * eps, self.hi * eps)


@dataclass(frozen=True, eq=False)
class Ellipsoid(ConstraintSet):
    """Weighted L2 ball {a : ||a / sigma||_2 <= radius} (elements with sigma = 0 are fixed at 0).

    The covering set of independent Gaussian noise a_i ~ N(0, sigma_i^2): with radius^2 the
    chi-square quantile of k degrees of freedom it contains a realisation with that probability.
    ``maximize``: a = radius * sigma^2 g / ||sigma g||_2. ``project``: exact projection in the
    whitened coordinates a / sigma.
    """

    sigma: torch.Tensor
    radius: float

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        s, g64 = self.sigma.double(), _flat64(g)
        v = s * g64
        nrm = torch.linalg.vector_norm(v)
        if nrm == 0 or self.radius == 0:
            return torch.zeros_like(g)
        return (self.radius * s * v / nrm).to(g.dtype)

    def _whiten(self, a64: torch.Tensor) -> torch.Tensor:
        s = self.sigma.double()
        return torch.where(s > 0, a64 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(a64))

    def project(self, a: torch.Tensor) -> torch.Tensor:
        u = self._whiten(_flat64(a))
        nrm = torch.linalg.vector_norm(u)
        if nrm > self.radius:
            u = u * (self.radius / nrm)
        return (u * self.sigma.double()).to(a.dtype)

    def norm(self, a: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(self._whiten(_flat64(a))))

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a64 = _flat64(a)
        if not bool(torch.isfinite(a64).all()) or bool((a64[self.sigma == 0] != 0).any()):
            return False
        return self.norm(a64) <= self.radius * (1 + rtol) + 1e-12

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        z = torch.randn(self.sigma.numel(), generator=generator, dtype=torch.float64)
        return (self.sigma.double() * z * (self.radius / torch.linalg.vector_norm(z))).to(dtype)

    def to_dict(self) -> dict:
        return {"kind": "ellipsoid", "k": self.sigma.numel(), "radius": self.radius,
                "mean_sigma": float(self.sigma.double().mean())}

    def at(self, eps: float) -> Ellipsoid:
        return self if eps == 1 else Ellipsoid(self.sigma, self.radius * eps)


class DiscreteSet(ConstraintSet):
    """A finite set of discrete faults (bit flips, stuck cells, flipped scales): iterative searches
    re-solve it greedily at each gradient instead of projecting, and certification refuses it."""

    def at(self, eps: float) -> DiscreteSet:
        if eps != 1:
            raise ConstraintError(f"a discrete set ({type(self).__name__}) has one size only: expected eps 1, got {eps}")
        return self

    def nonfinite_point(self, g: torch.Tensor) -> torch.Tensor | None:
        """A point of the set that makes a stored value non-finite (NaN or Inf: an FP8 element one flip
        from its NaN code, an fp32 exponent flip, a scale read as NaN), at the element (or site) of
        largest ``|g|``; None when the set has none. The linear oracle cannot rank such a point (its
        loss change is not a number), so the worst case weighs it apart (:func:`worst_cases`)."""
        return None

    # The units a search changes one at a time (an element's stored bits, a shared scale): the bit
    # search ranks them by linear gain, tensor by tensor, and builds its points from them.
    def unit_gains(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit, the best finite candidate's linear gain ``g . delta`` and its index."""
        raise NotImplementedError

    def unit_anchor(self) -> torch.Tensor:
        """Per unit, the flat index of an element it changes (to tell which tensor it is in)."""
        raise NotImplementedError

    def point(self, units: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        """The point (float64, flat) with each of ``units`` changed to its candidate ``choices``."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class CandidateSet(DiscreteSet):
    """A discrete set: at most ``n`` elements change, element i to one of its candidate values
    ``deltas[i, j]`` (e.g. flipping bit j of a stored weight, or a cell stuck at SA0/SA1).

    ``maximize`` is the greedy linear oracle: the best candidate per element by g_i * delta_ij, then
    the n elements of largest positive gain (exact for this set, since gains add over elements).
    Non-finite candidates (float exponent flips to Inf/NaN, an FP8 element's NaN code) are not
    ranked by the oracle (their loss change is not a number): :meth:`nonfinite_point` gives one.
    ``project`` snaps each element to its nearest candidate or 0 and keeps the n largest changes.
    """

    deltas: torch.Tensor  # (k, m)
    n: int
    labels: tuple[str, ...] = ()

    def _finite(self) -> torch.Tensor:
        d = self.deltas.double()
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))

    def choose(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(elements, candidate index, gain) of the greedy linear optimum, best first."""
        gain = _flat64(g)[:, None] * self._finite()
        best, j = gain.max(dim=1)
        k = min(self.n, int((best > 0).sum()))
        top = torch.topk(best, k).indices if k else torch.zeros(0, dtype=torch.long)
        return top, j[top], best[top]

    def nonfinite_point(self, g: torch.Tensor) -> torch.Tensor | None:
        bad = ~torch.isfinite(self.deltas)
        rows = bad.any(dim=1)
        if self.n < 1 or not bool(rows.any()):
            return None
        score = torch.where(rows, _flat64(g).abs(), torch.full_like(_flat64(g), -1.0))
        i = int(score.argmax())
        return self.apply(torch.tensor([i]), bad[i].to(torch.int8).argmax().reshape(1))

    def unit_gains(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (_flat64(g)[:, None] * self._finite()).max(dim=1)

    def unit_anchor(self) -> torch.Tensor:
        return torch.arange(self.deltas.shape[0])

    def point(self, units: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        return self.apply(units, choices)

    def apply(self, elements: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        a = torch.zeros(self.deltas.shape[0], dtype=torch.float64)
        a[elements] = self.deltas.double()[elements, choice]
        return a

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        el, j, _ = self.choose(g)
        return self.apply(el, j).to(g.dtype)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        a64 = _flat64(a)
        d = self._finite()
        dist = (d - a64[:, None]).abs()
        j = dist.argmin(dim=1)
        snapped = d.gather(1, j[:, None]).squeeze(1)
        snapped = torch.where(a64.abs() < dist.gather(1, j[:, None]).squeeze(1), torch.zeros_like(a64), snapped)
        if int(torch.count_nonzero(snapped)) > self.n:
            snapped = torch.where(top_n_mask(snapped, self.n), snapped, torch.zeros_like(snapped))
        return snapped.to(a.dtype)

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a64 = _flat64(a)
        nz = torch.nonzero(a64).reshape(-1)
        if nz.numel() > self.n:
            return False
        d = self.deltas.double()[nz]
        same_bad = ((d == a64[nz, None]) & ~torch.isfinite(d)) | (torch.isnan(d) & torch.isnan(a64[nz, None]))
        ok = ((d - a64[nz, None]).abs() <= rtol * d.abs() + 1e-12) | same_bad
        return bool(ok.any(dim=1).all())

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows = self.deltas.shape[0]
        el = torch.randperm(rows, generator=generator)[: min(self.n, rows)]
        j = torch.randint(self.deltas.shape[1], (el.numel(),), generator=generator)
        return self.apply(el, j).to(dtype)

    def to_dict(self) -> dict:
        return {"kind": "candidates", "k": self.deltas.shape[0], "options": self.deltas.shape[1], "n": self.n}


@dataclass(frozen=True, eq=False)
class SumSet(ConstraintSet):
    """Minkowski sum of parts: a = sum_i a_i with a_i in part i. A point is kept as its list of parts;
    ``maximize`` (the sum of the parts' maximisers) is exact for a linear objective."""

    parts: tuple[ConstraintSet, ...]
    names: tuple[str, ...] = ()

    def maximize_parts(self, g: torch.Tensor) -> list[torch.Tensor]:
        return [p.maximize(g) for p in self.parts]

    def project_parts(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [s.project(a) for s, a in zip(self.parts, parts)]

    def contains_parts(self, parts: list[torch.Tensor], rtol: float = 1e-4) -> bool:
        return all(s.contains(a, rtol) for s, a in zip(self.parts, parts))

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.maximize_parts(g)).sum(0)

    def project(self, a: torch.Tensor) -> torch.Tensor:  # a sum has no unique split: project as a single part
        raise NotImplementedError("project a SumSet part by part (project_parts)")

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        raise NotImplementedError("check a SumSet part by part (contains_parts)")

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([p.random(k, generator, dtype) for p in self.parts]).sum(0)

    def at(self, eps: float) -> SumSet:
        return self if eps == 1 else SumSet(tuple(p.at(eps) for p in self.parts), self.names)

    def to_dict(self) -> dict:
        return {"kind": "sum", "parts": [dict(p.to_dict(), name=n) for p, n in zip(self.parts, self.names or
                                                                               [""] * len(self.parts))]}


@dataclass(frozen=True, eq=False)
class BitSet(CandidateSet):
    """Flips of stored bits: at most ``n`` bits in total, any number of them in one weight.

    ``deltas[i, b]`` is the change of weight i when its bit b flips alone. Membership is exact: the
    stored codes of ``base + a`` differ from ``base``'s in at most n bits (a non-finite value, from an
    exponent flip, counts as one), and only in allowed directions (stuck-at-0 cells can only clear
    bits, stuck-at-1 cells only set them). The linear oracle considers one flip per weight.
    """

    base: torch.Tensor = None           # stored values (k,)
    encode: object = None               # all k values -> their stored codes (int64)
    bits: int = 8
    clear_ok: bool = True
    set_ok: bool = True

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a64 = _flat64(a)
        nz = torch.nonzero(a64).reshape(-1)
        if nz.numel() == 0:
            return True
        finite = torch.isfinite(a64[nz])
        used = int((~finite).sum())
        idx = nz[finite]
        # one flip: a matches a single-bit change (float64 round-off allowed); the rest by stored codes
        d = self.deltas.double()[idx]
        single = ((d - a64[idx, None]).abs() <= 1e-6 * d.abs() + 1e-30).any(dim=1)
        used += int(single.sum())
        idx = idx[~single]
        if idx.numel():
            after = self.base.double() + torch.where(torch.isfinite(a64), a64, torch.zeros_like(a64))
            old, new = self.encode(self.base.double())[idx], self.encode(after)[idx]
            cleared, setb = old & ~new, new & ~old
            if (not self.clear_ok and bool(cleared.any())) or (not self.set_ok and bool(setb.any())):
                return False
            x = old ^ new
            used += sum(int(((x >> b) & 1).sum()) for b in range(self.bits))
        return used <= self.n


@dataclass(frozen=True, eq=False)
class BlockScaleSet(DiscreteSet):
    """Flips of the bits of shared scales: at most ``n`` sites change, site s to one of its candidates
    j, which multiplies every stored value of its block by ``1 + factors[s, j]`` (the element codes
    stay; the scale is read as another value). ``site[i]`` is element i's site (-1: none).

    ``maximize`` is exact for a linear objective: the gain of (s, j) is ``factors[s, j]`` times the
    block's ``sum g_i base_i``, the best candidate per site, then the n sites of largest positive gain.
    Non-finite candidates (a scale read as NaN or Inf) are not ranked by the oracle, as bit flips'
    are not; :meth:`nonfinite_point` gives one.
    """

    base: torch.Tensor      # (k,) stored values
    site: torch.Tensor      # (k,) int64
    factors: torch.Tensor   # (S, m)
    n: int
    labels: tuple[str, ...] = ()

    def _finite(self) -> torch.Tensor:
        f = self.factors.double()
        return torch.where(torch.isfinite(f), f, torch.zeros_like(f))

    def _sums(self, v: torch.Tensor) -> torch.Tensor:
        """Per site, the sum over its elements of ``v``."""
        on = self.site >= 0
        return torch.zeros(self.factors.shape[0], dtype=torch.float64).index_add_(0, self.site[on], v[on])

    def _point(self, sites: torch.Tensor, choice: torch.Tensor, raw: bool = False) -> torch.Tensor:
        f = torch.zeros(self.factors.shape[0], dtype=torch.float64)
        f[sites] = (self.factors.double() if raw else self._finite())[sites, choice]
        on = self.site >= 0
        out = torch.zeros(self.base.numel(), dtype=torch.float64)
        out[on] = self.base.double()[on] * f[self.site[on]]
        return out

    def nonfinite_point(self, g: torch.Tensor) -> torch.Tensor | None:
        bad = ~torch.isfinite(self.factors)
        rows = bad.any(dim=1)
        if self.n < 1 or not bool(rows.any()):
            return None
        score = torch.where(rows, self._sums(_flat64(g).abs()), torch.full((rows.numel(),), -1.0, dtype=torch.float64))
        s = int(score.argmax())
        return self._point(torch.tensor([s]), bad[s].to(torch.int8).argmax().reshape(1), raw=True)

    def unit_gains(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per site, its best finite factor's gain: the factor times the block's ``sum g_i base_i``
        (the damage of the whole block it scales, to first order)."""
        gs = self._sums(_flat64(g) * self.base.double())
        return (self._finite() * gs[:, None]).max(dim=1)

    def unit_anchor(self) -> torch.Tensor:
        on = torch.nonzero(self.site >= 0).reshape(-1)
        first = torch.full((self.factors.shape[0],), self.base.numel(), dtype=torch.long)
        return first.scatter_reduce(0, self.site[on], on, reduce="amin")

    def point(self, units: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        return self._point(units, choices)

    def maximize(self, g: torch.Tensor) -> torch.Tensor:
        best, j = self.unit_gains(g)
        k = min(self.n, int((best > 0).sum()))
        top = torch.topk(best, k).indices if k else torch.zeros(0, dtype=torch.long)
        return self._point(top, j[top]).to(g.dtype)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """The nearest point (Euclidean) with at most n sites changed: per site the best candidate
        ``c`` minimises ``||a_s - c b_s||^2``, then the n sites whose error it lowers most."""
        a64, b = _flat64(a), self.base.double()
        ab, bb, aa = self._sums(a64 * b), self._sums(b * b), self._sums(a64 * a64)
        c = self._finite()
        err = aa[:, None] - 2 * c * ab[:, None] + c * c * bb[:, None]
        best, j = err.min(dim=1)
        gain = aa - best
        k = min(self.n, int((gain > 0).sum()))
        top = torch.topk(gain, k).indices if k else torch.zeros(0, dtype=torch.long)
        return self._point(top, j[top]).to(a.dtype)

    def contains(self, a: torch.Tensor, rtol: float = 1e-4) -> bool:
        a64, b = _flat64(a), self.base.double()
        if bool((a64[self.site < 0] != 0).any()):
            return False
        hit = torch.unique(self.site[(a64 != 0) & (self.site >= 0)])
        if hit.numel() > self.n:
            return False
        for s in hit.tolist():
            el = self.site == s
            ok = [bool(((a64[el] - b[el] * c).abs() <= rtol * (b[el] * c).abs() + 1e-12).all())
                  for c in self._finite()[s].tolist() if c != 0]
            v, raw = a64[el], self.factors.double()[s]
            if not bool(torch.isfinite(v).all()):  # a scale read as NaN or Inf: every value of the block with it
                ok = [bool(((v == b[el] * c) | (torch.isnan(v) & torch.isnan(b[el] * c))).all())
                      for c in raw[~torch.isfinite(raw)].tolist()]
            if not any(ok):
                return False
        return True

    def random(self, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        sites = torch.randperm(self.factors.shape[0], generator=generator)[: min(self.n, self.factors.shape[0])]
        j = torch.randint(self.factors.shape[1], (sites.numel(),), generator=generator)
        return self._point(sites, j).to(dtype)

    def to_dict(self) -> dict:
        return {"kind": "block-scales", "sites": self.factors.shape[0], "options": self.factors.shape[1], "n": self.n}
