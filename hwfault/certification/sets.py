"""Perturbation sets: how each chosen parameter tensor may change, and such a set resolved on a model.

A :class:`PerturbationSet` maps parameter names to a :class:`ParamBound`: a per-element box (absolute,
relative to each element's |w|, or relative to the tensor's max |w|), per-tensor (weighted) L2 balls,
or a sum of both; parameters not named are exact. :class:`_Weights` is the set resolved on a model's
current parameters in float64, the form every bound reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import validate
from ..constraints import Box, ConstraintSet, DiscreteSet, Ellipsoid, LpBall, SumSet
from ..errors import ConstraintError, did_you_mean
from ..params import Selection, select

DTYPE = torch.float64
RELATIVE = (None, "tensor", "element")


@dataclass(frozen=True, eq=False)
class ParamBound:
    """Admissible change of one parameter tensor: d = offset + d_box + sum_i d_ball_i with
    |d_box| <= radius element-wise and ||d_ball_i / sigma_i||_2 <= rho_i (``balls``: (rho, sigma)
    pairs, sigma None = 1; elements with sigma 0 do not move). ``offset`` shifts the centre (an
    asymmetric box [lo, hi] is offset (lo + hi) / 2 and radius (hi - lo) / 2)."""

    offset: torch.Tensor | None = None
    radius: torch.Tensor | None = None
    balls: tuple[tuple[float, torch.Tensor | None], ...] = ()

    def check(self, name: str, shape: torch.Size) -> None:
        for what, t in (("offset", self.offset), ("radius", self.radius),
                        *(("sigma", s) for _, s in self.balls)):
            if t is None:
                continue
            if tuple(t.shape) != tuple(shape):
                raise ConstraintError(f"certify: {what} of '{name}' has shape {tuple(t.shape)}, "
                                      f"expected {tuple(shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ConstraintError(f"certify: {what} of '{name}' is not finite")
        if self.radius is not None and bool((self.radius < 0).any()):
            raise ConstraintError(f"certify: expected a box radius >= 0 for '{name}', got a negative entry")
        for rho, s in self.balls:
            if not (math.isfinite(rho) and rho >= 0):
                raise ConstraintError(f"certify: expected an L2 radius >= 0 and finite for '{name}', got {rho}")
            if s is not None and bool((s < 0).any()):
                raise ConstraintError(f"certify: expected L2 weights sigma >= 0 for '{name}'")

    def __add__(self, other: ParamBound) -> ParamBound:
        """Minkowski sum of two sets of the same tensor."""
        def plus(a, b):
            return b if a is None else a if b is None else a + b
        return ParamBound(plus(self.offset, other.offset), plus(self.radius, other.radius), self.balls + other.balls)


def _parse_norm(norm: str | float) -> str:
    text = str(norm).strip().lower()
    if text in ("inf", "linf", "l-inf", "infinity") or (isinstance(norm, float) and math.isinf(norm) and norm > 0):
        return "inf"
    if text in ("2", "2.0", "l2"):
        return "2"
    raise ConstraintError(f"certify: expected norm 'inf' or '2', got '{norm}'")


def _selection(model: nn.Module, params) -> Selection:
    if isinstance(params, Selection):
        return params
    return select(model, None if params in (None, "*") else params)


@dataclass(frozen=True, eq=False)
class PerturbationSet:
    """Per-parameter admissible changes (name -> :class:`ParamBound`); parameters not named are exact."""

    bounds: Mapping[str, ParamBound]
    description: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.bounds)

    def k(self, model: nn.Module) -> int:
        named = dict(model.named_parameters())
        return sum(named[n].numel() for n in self.bounds if n in named)

    def to_dict(self) -> dict:
        return {**self.description, "params": list(self.names)}

    @classmethod
    def ball(cls, model: nn.Module, eps: float, *, norm: str | float = "inf", relative: str | None = None,
             params: str | Sequence[str] | Selection | None = "*") -> PerturbationSet:
        """An eps-ball on each selected tensor: L-inf (per-element box) or L2 (per tensor).

        ``relative``: None = absolute eps; "element" = eps |w| per element (L2: ||d / |w| ||_2 <= eps);
        "tensor" = eps max|w| (L-inf) or eps ||w||_2 (L2) of each tensor.
        """
        e, p = validate.epsilons([eps])[0], _parse_norm(norm)
        if relative not in RELATIVE:
            raise ConstraintError(f"certify: expected relative None, 'tensor' or 'element', got '{relative}'")
        sel = _selection(model, params)
        out: dict[str, ParamBound] = {}
        for name, w in zip(sel.names, sel.params):
            a = w.detach().to(DTYPE).abs()
            if p == "inf":
                r = {None: torch.full_like(a, e), "element": e * a,
                     "tensor": torch.full_like(a, e * float(a.max()) if a.numel() else 0.0)}[relative]
                out[name] = ParamBound(radius=r)
            elif relative == "element":
                out[name] = ParamBound(balls=((e, a),))
            else:
                rho = e * float(torch.linalg.vector_norm(a)) if relative == "tensor" else e
                out[name] = ParamBound(balls=((rho, None),))
        return cls(out, {"kind": "ball", "norm": p, "eps": e, "relative": relative})

    @classmethod
    def from_constraint(cls, selection: Selection, cset: ConstraintSet) -> PerturbationSet:
        """The set of an hwfault constraint set over ``selection`` (flat, parameter after parameter).

        Box: exact (asymmetric boxes via the offset). Ellipsoid and L2 ball over several tensors: each
        tensor gets the whole ball (a sound relaxation; exact for one tensor). LpBall: p <= 2 -> its
        L2 ball, p > 2 -> its L-inf box (both contain it; a sparsity limit n is dropped, a superset).
        A SumSet is the sum of its parts. Discrete sets (bit flips, stuck-at cells) are refused.
        """
        k = selection.numel
        parts = cset.parts if isinstance(cset, SumSet) else (cset,)
        total: dict[str, ParamBound] = {n: ParamBound() for n in selection.names}
        kinds = []
        for part in parts:
            if isinstance(part, DiscreteSet):
                raise ConstraintError("certify: discrete fault sets (bit flips, stuck-at cells) have no certified "
                                      "bound here; certify the quantisation and analog parts only")
            if isinstance(part, Box):
                lo, hi = part.lo.detach().to(DTYPE).reshape(-1), part.hi.detach().to(DTYPE).reshape(-1)
                if lo.numel() != k:
                    raise ConstraintError(f"certify: box has {lo.numel()} elements, the selection {k}")
                if bool((lo > hi).any()):
                    raise ConstraintError("certify: box with lo > hi")
                off, rad = selection.split((lo + hi) / 2), selection.split((hi - lo) / 2)
                pieces = {n: ParamBound(offset=o.clone(), radius=r.clone())
                          for n, o, r in zip(selection.names, off, rad)}
                kinds.append("box")
            elif isinstance(part, Ellipsoid):
                sig = selection.split(part.sigma.detach().to(DTYPE).reshape(-1))
                pieces = {n: ParamBound(balls=((float(part.radius), s.clone()),)) for n, s in zip(selection.names, sig)}
                kinds.append("ellipsoid")
            elif isinstance(part, LpBall):
                if part.p <= 2:
                    pieces = {n: ParamBound(balls=((float(part.eps), None),)) for n in selection.names}
                else:
                    pieces = {n: ParamBound(radius=torch.full(tuple(p.shape), float(part.eps), dtype=DTYPE))
                              for n, p in zip(selection.names, selection.params)}
                kinds.append(f"lp_ball(p={part.p:g})")
            else:
                raise ConstraintError(f"certify: unsupported constraint set {type(part).__name__}")
            total = {n: total[n] + pieces[n] for n in total}
        return cls(total, {"kind": "+".join(kinds) or "empty", "norm": None, "eps": None, "relative": None})


def quantisation_set(model: nn.Module, bits: int | None = None, *, per_channel: bool = False,
                     params: str | Sequence[str] | Selection | None = None, format=None) -> PerturbationSet:
    """The box of every rounding of the selected weights to a stored format: half a step per element.
    ``bits``: an intN grid with the scale rule of :mod:`hwfault.formats` (symmetric, max|w| / (2**(N-1)
    - 1) per tensor or per output channel); ``format``: any stored format instead (a name or a format
    object: FP8, MX, NVFP4, per-group intN, ...), block-wise: each element's step is its element
    type's spacing at its magnitude read with its block's scale, widened to twice the actual rounding
    error where a value saturates, so the stored weights lie in the box. Default parameters: the
    weight tensors of conv and linear layers (a chip's default)."""
    from ..blockformats import number_format
    from ..formats import NumberFormat

    if format is None:
        fmt = NumberFormat.parse(f"int{int(bits)}", per_channel=per_channel)
    else:
        fmt = number_format(format, per_channel=per_channel) if isinstance(format, str) else format
    sel = select(model, types=["conv", "linear"]).weights_only() if params is None else _selection(model, params)
    out = {}
    for name, w in zip(sel.names, sel.params):
        half = torch.broadcast_to(fmt.step(w.detach().float()), w.shape).to(DTYPE) / 2
        out[name] = ParamBound(radius=half.clone())
    return PerturbationSet(out, {"kind": "quantisation", "norm": "inf", "eps": None, "relative": None,
                                 "format": fmt.name, "per_channel": bool(per_channel)})


class _Weights:
    """The centre values (float64, offset applied) of every parameter the graph uses, and the
    box radii / L2 balls of the perturbed ones."""

    def __init__(self, model: nn.Module, pset: PerturbationSet | None, used: Iterable[str],
                 buffers: Iterable[str] = ()):
        named = dict(model.named_parameters())
        named_buffers = dict(model.named_buffers())
        self.buffer = {n: named_buffers[n].detach().to(DTYPE) for n in buffers}
        self.centre: dict[str, torch.Tensor] = {}
        self.radius: dict[str, torch.Tensor] = {}
        self.row_radius: dict[str, torch.Tensor] = {}   # radii constant within each output row: (O,)
        self.balls: dict[str, list[tuple[float, torch.Tensor]]] = {}
        bounds = dict(pset.bounds) if pset is not None else {}
        used = set(used)
        unknown = [n for n in bounds if n not in named]
        if unknown:
            raise ConstraintError(f"certify: no parameter '{unknown[0]}' in the model{did_you_mean(unknown[0], named)}")
        # a parameter the traced forward never reads cannot move the output: its perturbation is moot
        for n in used:
            w = (named[n] if n in named else named_buffers[n]).detach().to(DTYPE)
            b = bounds.get(n)
            if b is not None:
                b.check(n, w.shape)
                if b.offset is not None:
                    w = w + b.offset.to(DTYPE)
                if b.radius is not None and bool((b.radius > 0).any()):
                    r = b.radius.to(DTYPE)
                    self.radius[n] = r
                    if r.ndim >= 2:
                        row = r.reshape(r.shape[0], -1)
                        if bool((row == row[:, :1]).all()):
                            self.row_radius[n] = row[:, 0].clone()
                balls = [(float(rho), (torch.ones_like(w) if s is None else s.to(DTYPE) ** 2))
                         for rho, s in b.balls if rho > 0]
                if balls:
                    self.balls[n] = balls
            self.centre[n] = w

    def elementwise(self, name: str) -> torch.Tensor | None:
        """A per-element bound on |d| (the box radius plus rho sigma of every ball), or None if exact."""
        r = self.radius.get(name)
        for rho, s2 in self.balls.get(name, ()):
            r = rho * s2.sqrt() if r is None else r + rho * s2.sqrt()
        return r
