"""Constraint sets: the admissible parameter perturbations, with one verb set for every geometry.

A perturbation is a flat vector ``a`` over a :class:`~hwfault.params.Selection` (k elements).
Every set answers four verbs:

- ``maximize(g)``: the linear oracle, argmax over the set of ``a . g``;
- ``project(a)``: a point of the set close to ``a`` (exact Euclidean projection where noted);
- ``contains(a)``: membership, with a relative tolerance for float round-off;
- ``random(generator)``: a random member drawn as the paper's random corruption (Eq. 5).

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
    ks = torch.arange(1, u.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u * ks > (css - eps)).max())
    theta = (css[rho] - eps) / (rho + 1)
    return torch.sign(v) * (v.abs() - theta).clamp(min=0)
