"""Certified bounds on a classifier's margins under weight perturbations (Weng et al., AAAI 2020).

A :class:`PerturbationSet` says how each chosen parameter tensor may change: a per-element box
(absolute, relative to each element's |w|, or relative to the tensor's max |w|), a per-tensor
(weighted) L2 ball, or a sum of both; unperturbed parameters are exact. :func:`margin_bounds` returns,
for every input and class j, a lower bound on ``f_y(x) - f_j(x)`` that holds for every perturbation
in the set; :func:`certify` turns that into certified accuracy over a grid of eps.

Methods (one sound bound each; ``auto`` keeps the best one per input):

- ``ibp``: interval bound propagation with interval weights in centre/radius form,
  y_c = W_c x_c + b_c, y_r = |W_c| x_r + R (|x_c| + x_r) + r_b for a box of radius R; for a
  weighted L2 ball ||D / sigma||_2 <= rho, |D_i . x| <= rho sqrt(sum_j sigma_ij^2 m_j^2) with
  m = max(|l|, |u|) (Cauchy-Schwarz per output). The last layer is merged with the margin
  specification, as interval methods usually do.
- ``crown``: linear relaxation propagated backwards from the margin specification (CROWN, Zhang et
  al. 2018, extended to weights by Weng et al. 2020). For a perturbed layer (W_c + D) x the centre
  part is back-substituted as usual; the product D x is bounded by its dual norm:
  box: lam^T D x >= -sum_j g_j |x_j| with g = R^T |lam|, and |x_j| <= a_j x_j + c_j (the chord of
  |x| over [l_j, u_j], exact where the sign is known, e.g. after a ReLU), which keeps the bound linear
  in x (the McCormick planes of Weng et al. reduce to this); L2: lam^T D x >= -rho ||sigma (.) G||_F
  with |G| bounded from ||lam|| and max ||x||. Intermediate bounds: IBP, then each ReLU's
  pre-activation is tightened by its own backward pass for the neurons it leaves unstable.
  Conv back-substitution uses the transposed convolution; everything is batched over inputs.
- ``bab``: CROWN, then branch and bound on the ReLU phases for the correct inputs CROWN leaves
  uncertified (Wang et al. 2021, without the beta multipliers): a branch clamps one unstable
  pre-activation to >= 0 or <= 0, which makes that ReLU exact and tightens every bound after it;
  an input is certified once every branch is. Branching picks the neuron whose relaxation costs the
  worst margin most (BaBSR); each input gets at most 256 branches, within a time budget. An attack
  runs first (per-input sign-gradient descent inside the set): an input with a counterexample is not
  branched on, and the share left gives an upper bound on robust accuracy (``attack_upper_accuracy``).
  ``auto``: IBP for all inputs, CROWN for the rest, then branch and bound, within one time budget.

Bounds are computed in float64 with a small conservative slack and hold for real-arithmetic
evaluation of the network; the rounding of a float32 forward pass is not part of the set.
Supported layers: Linear, Conv1d/2d/3d (any stride, padding, dilation, groups), eval-mode
BatchNorm1d/2d/3d, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d,
Flatten/view/reshape, Identity/Dropout (eval), residual additions and scalar affine maps; the model
is read with ``torch.fx.symbolic_trace``, and the same operations are read from the ATen graph of a
``torch.export`` archive. Anything else (LayerNorm, attention, recurrent layers, products of two
activations, ...) raises :class:`~hwfault.errors.ModelError` naming the layer and the graph node.
The traced graph is checked against the model's own output before any bound is computed.
"""

from __future__ import annotations

import copy
import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .constraints import Box, CandidateSet, ConstraintSet, Ellipsoid, LpBall, SumSet
from .search.results import ByEps
from .errors import ConstraintError, DataError, ModelError, did_you_mean
from .evaluation import as_tensors, logits, check_labels
from .params import Selection, select

__all__ = ["ParamBound", "PerturbationSet", "CertifyPoint", "CertifyResult", "certify", "certify_set",
           "margin_bounds", "quantisation_set", "quantisation_safety", "check_method", "METHODS"]

METHODS = ("ibp", "crown", "auto", "bab")
INTERMEDIATE = ("crown", "ibp")
RELATIVE = (None, "tensor", "element")
DTYPE = torch.float64
_SLACK = 1e-12           # relative + absolute slack per float64 interval (n u for sums of ~1e4 terms)
_FINAL_SLACK = 1e-9      # the same for a back-substituted bound
_BUDGET = 2 ** 23        # elements of the largest coefficient tensor of one backward pass

Progress = Callable[[int, int], None]


# ============================================================================ perturbation sets


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


def _check_eps(eps: float) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ConstraintError(f"expected eps >= 0 and finite, got '{eps}'") from None
    if not math.isfinite(e) or e < 0:
        raise ConstraintError(f"expected eps >= 0 and finite, got {eps}")
    return e


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
        e, p = _check_eps(eps), _parse_norm(norm)
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
            if isinstance(part, CandidateSet):
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


def quantisation_set(model: nn.Module, bits: int, *, per_channel: bool = False,
                     params: str | Sequence[str] | Selection | None = None) -> PerturbationSet:
    """The box of every rounding of the selected weights to an intN grid: half a step per element,
    with the scale rule of :mod:`hwfault.formats` (symmetric, max|w| / (2**(N-1) - 1) per tensor or per
    output channel). Default parameters: the weight tensors of conv and linear layers (a chip's default)."""
    from .formats import NumberFormat

    fmt = NumberFormat.parse(f"int{int(bits)}", per_channel=per_channel)
    sel = select(model, types=["conv", "linear"]).weights_only() if params is None else _selection(model, params)
    out = {}
    for name, w in zip(sel.names, sel.params):
        half = torch.broadcast_to(fmt.scale(w.detach().float()), w.shape).to(DTYPE) / 2
        out[name] = ParamBound(radius=half.clone())
    return PerturbationSet(out, {"kind": "quantisation", "norm": "inf", "eps": None, "relative": None,
                                 "format": fmt.name, "per_channel": bool(per_channel)})


# ============================================================================ relaxation helpers


def _abs_chord(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with |x| <= a x + c for x in [l, u]: the chord of |x| (exact when l >= 0 or u <= 0)."""
    straddle = (l < 0) & (u > 0)
    d = torch.where(straddle, u - l, torch.ones_like(l))
    a = torch.where(l >= 0, torch.ones_like(l), torch.where(u <= 0, -torch.ones_like(l), (u + l) / d))
    c = torch.where(straddle, -2 * u * l / d, torch.zeros_like(l))
    return a, c


def _relu_planes(l: torch.Tensor, u: torch.Tensor, leak: float = 0.0):
    """Lower/upper linear planes (slope, intercept) of max(x, leak x), 0 <= leak <= 1, on [l, u]
    (CROWN: chord above; below, the slope of whichever piece covers more of the interval)."""
    unstable = (l < 0) & (u > 0)
    d = torch.where(unstable, u - l, torch.ones_like(l))
    one, lk = torch.ones_like(l), torch.full_like(l, leak)
    su = torch.where(unstable, (u - leak * l) / d, torch.where(l >= 0, one, lk))
    iu = torch.where(unstable, l * (leak - su), torch.zeros_like(l))
    sl = torch.where(unstable, torch.where(u > -l, one, lk), torch.where(l >= 0, one, lk))
    return sl, torch.zeros_like(l), su, iu


def _sshape_planes(l: torch.Tensor, u: torch.Tensor, kind: str):
    """Parallel planes around sigmoid/tanh on [l, u]: the chord slope k, with the exact min and max of
    f(x) - k x (endpoints and the stationary points f'(x) = k) as intercepts."""
    f = torch.sigmoid if kind == "sigmoid" else torch.tanh
    width = u - l
    wide = width > 1e-12
    k = torch.where(wide, (f(u) - f(l)) / torch.where(wide, width, torch.ones_like(width)), torch.zeros_like(l))
    if kind == "sigmoid":
        root = torch.sqrt((1 - 4 * k).clamp(min=0))
        s1, s2 = ((1 - root) / 2).clamp(1e-300, 1 - 1e-16), ((1 + root) / 2).clamp(1e-300, 1 - 1e-16)
        xs = [torch.log(s1 / (1 - s1)), torch.log(s2 / (1 - s2))]
    else:
        t = torch.sqrt((1 - k).clamp(min=0)).clamp(max=1 - 1e-16)
        xs = [torch.atanh(-t), torch.atanh(t)]
    cands = [l, u] + [torch.minimum(torch.maximum(x, l), u) for x in xs]
    h = torch.stack([f(x) - k * x for x in cands])
    slack = 1e-12
    return k, h.min(0).values - slack, k, h.max(0).values + slack


def _widen(v: torch.Tensor, sign: float, slack: float = _SLACK) -> torch.Tensor:
    return v + sign * slack * (1 + v.abs())


def _sum_rest(t: torch.Tensor, keep: int) -> torch.Tensor:
    """Sum over all dims after the first ``keep``."""
    return t.reshape(*t.shape[:keep], -1).sum(-1) if t.ndim > keep else t


# ============================================================================ resolved weights


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


# ============================================================================ graph operations

Bounds = tuple[torch.Tensor, torch.Tensor]


class _Op:
    """One node of the certified graph. ``forward`` runs the centre network (for the self-check),
    ``ibp`` propagates intervals, ``backward`` maps the coefficients lam (b, S, *out) of a linear
    lower bound on its output to coefficients on its inputs plus a constant (b, S)."""

    params: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()

    def forward(self, xs: list[torch.Tensor], w: _Weights) -> torch.Tensor:
        raise NotImplementedError

    def ibp(self, ins: list[Bounds], w: _Weights) -> Bounds:
        raise NotImplementedError

    def backward(self, lam: torch.Tensor, ins: list[Bounds], w: _Weights) -> tuple[list, torch.Tensor]:
        raise NotImplementedError


def _zero_const(lam: torch.Tensor) -> torch.Tensor:
    return lam.new_zeros(lam.shape[:2])


def _chord_term(lam_in: torch.Tensor, g: torch.Tensor, l: torch.Tensor, u: torch.Tensor, shift=None, scale=None):
    """Subtract sum g |z| with z = scale * x + shift (per element) via the chord of |z|: returns
    (new lam_in, constant)."""
    if shift is None:
        if bool((l >= 0).all()):       # e.g. after a ReLU: |x| = x
            return lam_in - g, g.new_zeros(g.shape[:2])
        a, c = _abs_chord(l, u)
        return lam_in - g * a.unsqueeze(1), -_sum_rest(g * c.unsqueeze(1), 2)
    zl, zu = scale * l + shift, scale * u + shift
    a, c = _abs_chord(zl, zu)
    return lam_in - g * (a * scale).unsqueeze(1), -_sum_rest(g * (c + a * shift).unsqueeze(1), 2)


def _ball_term(lam2: torch.Tensor, s2oc: torch.Tensor, m2: torch.Tensor, groups: int) -> torch.Tensor:
    """sqrt(sum_{o,c} lam2_o s2_{oc} m2_c) within groups: lam2 (b,S,O), s2oc (O, C/g), m2 (b, C)."""
    b, S, O = lam2.shape
    cg = s2oc.shape[1]
    t = torch.einsum("bsgo,goc,bgc->bs", lam2.reshape(b, S, groups, O // groups),
                     s2oc.reshape(groups, O // groups, cg), m2.reshape(b, groups, cg))
    return t.clamp(min=0).sqrt()


class _Affine(_Op):
    """Shared logic of Linear and Conv: y = W x + b with W, b possibly perturbed."""

    weight: str
    bias: str | None
    groups: int = 1

    def __init__(self, weight: str, bias: str | None):
        self.weight, self.bias = weight, bias
        self.params = (weight,) + ((bias,) if bias else ())

    # the linear map and its transpose, with an arbitrary weight tensor
    def fwd(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transpose(self, lam: torch.Tensor, weight: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def transpose_rows(self, lam_abs: torch.Tensor, r_row: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """transpose(lam_abs, R) for R constant within each output row (R[o, ...] = r_row[o])."""
        raise NotImplementedError

    def kernel_sum(self, s2: torch.Tensor) -> torch.Tensor:
        """s2 summed over everything but (out, in): (O, C/groups)."""
        return s2.reshape(s2.shape[0], s2.shape[1], -1).sum(-1) if s2.ndim > 2 else s2

    def bias_view(self, b: torch.Tensor, ndim_out: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, xs, w):
        y = self.fwd(xs[0], w.centre[self.weight])
        return y + self.bias_view(w.centre[self.bias], y.ndim) if self.bias else y

    def ibp(self, ins, w):
        l, u = ins[0]
        c, r = (u + l) / 2, (u - l) / 2
        W = w.centre[self.weight]
        yc = self.fwd(c, W)
        yr = self.fwd(r, W.abs())
        m = torch.maximum(l.abs(), u.abs())
        R = w.radius.get(self.weight)
        if R is not None:
            yr = yr + self.fwd(m, R)
        for rho, s2 in w.balls.get(self.weight, ()):
            yr = yr + rho * self.fwd(m * m, s2).clamp(min=0).sqrt()
        if self.bias:
            yc = yc + self.bias_view(w.centre[self.bias], yc.ndim)
            rb = w.elementwise(self.bias)
            if rb is not None:
                yr = yr + self.bias_view(rb, yc.ndim)
        return _widen(yc - yr, -1), _widen(yc + yr, 1)

    def backward(self, lam, ins, w):
        l, u = ins[0]
        b, S = lam.shape[:2]
        in_shape = tuple(l.shape[1:])
        W = w.centre[self.weight]
        lam_in = self.transpose(lam, W, in_shape)
        const = _zero_const(lam)
        R = w.radius.get(self.weight)
        if R is not None:
            r_row = w.row_radius.get(self.weight)
            g = (self.transpose(lam.abs(), R, in_shape) if r_row is None
                 else self.transpose_rows(lam.abs(), r_row, in_shape))
            lam_in, c = _chord_term(lam_in, g, l, u)
            const = const + c
        balls = w.balls.get(self.weight, ())
        if balls:
            m2 = self.channel_sum(torch.maximum(l.abs(), u.abs()) ** 2, 1)      # (b, C)
            lam2 = self.channel_sum(lam * lam, 2)                                  # (b, S, O)
            for rho, s2 in balls:
                const = const - rho * _ball_term(lam2, self.kernel_sum(s2), m2, self.groups)
        if self.bias:
            h = self.channel_sum(lam, 2)                                            # (b, S, O)
            const = const + h @ w.centre[self.bias]
            rb = w.radius.get(self.bias)
            if rb is not None:
                const = const - h.abs() @ rb
            for rho, s2 in w.balls.get(self.bias, ()):
                const = const - rho * (h * h * s2).sum(-1).clamp(min=0).sqrt()
        return [lam_in], const

    def channel_sum(self, t: torch.Tensor, lead: int) -> torch.Tensor:
        """Sum over everything but the first ``lead`` dims and the channel (feature) dim."""
        raise NotImplementedError


class _Linear(_Affine):
    def fwd(self, x, weight):
        return F.linear(x, weight)

    def transpose(self, lam, weight, in_shape):
        return lam @ weight

    def transpose_rows(self, lam_abs, r_row, in_shape):
        return (lam_abs @ r_row).unsqueeze(-1).expand(*lam_abs.shape[:-1], in_shape[-1])

    def bias_view(self, b, ndim_out):
        return b

    def channel_sum(self, t, lead):
        # features are the last dim; sum over the extra (token) dims between
        return t.reshape(*t.shape[:lead], -1, t.shape[-1]).sum(-2)


class _Conv(_Affine):
    def __init__(self, weight, bias, dims, kernel, stride, padding, dilation, groups):
        super().__init__(weight, bias)
        self.kernel = kernel
        self.dims, self.stride, self.padding, self.dilation, self.groups = dims, stride, padding, dilation, groups
        self._f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        self._t = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}[dims]

    def fwd(self, x, weight):
        return self._f(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, lam, weight, in_shape):
        b, S = lam.shape[:2]
        flat = lam.reshape(b * S, *lam.shape[2:])
        out = self._t((b * S, *in_shape), weight, flat, self.stride, self.padding, self.dilation, self.groups)
        return out.reshape(b, S, *in_shape)

    def transpose_rows(self, lam_abs, r_row, in_shape):
        # sum the weighted rows within each group, then one box filter per group, broadcast to its channels
        b, S, O = lam_abs.shape[:3]
        sp = lam_abs.shape[3:]
        gsum = (lam_abs * r_row.reshape(O, *([1] * len(sp)))).reshape(b * S, self.groups, O // self.groups, *sp).sum(2)
        ones = torch.ones((self.groups, 1, *self.kernel), dtype=lam_abs.dtype)
        t = self._t((b * S, self.groups, *in_shape[1:]), ones, gsum, self.stride, self.padding, self.dilation,
                    self.groups)
        cg = in_shape[0] // self.groups
        return t.unsqueeze(2).expand(b * S, self.groups, cg, *in_shape[1:]).reshape(b, S, *in_shape)

    def bias_view(self, b, ndim_out):
        return b.reshape(-1, *([1] * (ndim_out - 2)))

    def channel_sum(self, t, lead):
        return t.reshape(*t.shape[:lead + 1], -1).sum(-1)


class _BatchNorm(_Op):
    """Eval-mode batch norm: y = gamma (x - mu) / sqrt(var + eps) + beta, gamma and beta perturbable."""

    def __init__(self, weight: str | None, bias: str | None, mean: str, var: str, eps: float):
        self.weight, self.bias = weight, bias
        self.params = tuple(p for p in (weight, bias) if p)
        self.buffers = (mean, var)
        self.eps = eps

    def stats(self, w: _Weights) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / sqrt(var + eps)) from the model's current running statistics."""
        mean, var = (w.buffer[b] for b in self.buffers)
        return mean, 1.0 / torch.sqrt(var + self.eps)

    @staticmethod
    def _v(t: torch.Tensor, ndim: int, lead: int) -> torch.Tensor:
        return t.reshape(-1, *([1] * (ndim - lead - 1)))

    def _gamma(self, w, n):
        return w.centre[self.weight] if self.weight else torch.ones(n, dtype=DTYPE)

    def forward(self, xs, w):
        x = xs[0]
        mean, alpha = self.stats(w)
        v = lambda t: self._v(t, x.ndim, 1)  # noqa: E731
        y = v(self._gamma(w, x.shape[1]) * alpha) * (x - v(mean))
        return y + v(w.centre[self.bias]) if self.bias else y

    def ibp(self, ins, w):
        l, u = ins[0]
        mean, alpha = self.stats(w)
        v = lambda t: self._v(t, l.ndim, 1)  # noqa: E731
        hl, hu = v(alpha) * (l - v(mean)), v(alpha) * (u - v(mean))
        hc, hr = (hu + hl) / 2, (hu - hl) / 2
        g = self._gamma(w, l.shape[1])
        yc, yr = v(g) * hc, v(g.abs()) * hr
        if self.weight:
            rg = w.elementwise(self.weight)
            if rg is not None:
                yr = yr + v(rg) * torch.maximum(hl.abs(), hu.abs())
        if self.bias:
            yc = yc + v(w.centre[self.bias])
            rb = w.elementwise(self.bias)
            if rb is not None:
                yr = yr + v(rb)
        return _widen(yc - yr, -1), _widen(yc + yr, 1)

    def backward(self, lam, ins, w):
        l, u = ins[0]
        mean, alpha = self.stats(w)
        v = lambda t: self._v(t, lam.ndim, 2)  # noqa: E731
        vx = lambda t: self._v(t, l.ndim, 1)  # noqa: E731
        g = self._gamma(w, l.shape[1])
        lam_in = lam * v(g * alpha)
        hb = lam.reshape(*lam.shape[:3], -1).sum(-1)                     # (b, S, C)
        const = -(hb @ (g * alpha * mean))
        if self.weight:
            rg = w.radius.get(self.weight)
            if rg is not None:   # sum_c dg_c sum_p lam_cp xhat_cp >= -sum rg_c |lam_cp| |xhat_cp|
                lam_in, c = _chord_term(lam_in, lam.abs() * v(rg), l, u,
                                        shift=vx(-alpha * mean), scale=vx(alpha))
                const = const + c
            balls = w.balls.get(self.weight, ())
            if balls:   # |sum_p lam_cp xhat_cp| <= sum_p |lam_cp| max|xhat_cp|
                mh = torch.maximum((vx(alpha) * (l - vx(mean))).abs(),
                                   (vx(alpha) * (u - vx(mean))).abs())
                h = (lam.abs() * mh.unsqueeze(1)).reshape(*lam.shape[:3], -1).sum(-1)
                for rho, s2 in balls:
                    const = const - rho * (h * h * s2).sum(-1).clamp(min=0).sqrt()
        if self.bias:
            const = const + hb @ w.centre[self.bias]
            rb = w.radius.get(self.bias)
            if rb is not None:
                const = const - hb.abs() @ rb
            for rho, s2 in w.balls.get(self.bias, ()):
                const = const - rho * (hb * hb * s2).sum(-1).clamp(min=0).sqrt()
        return [lam_in], const


class _Activation(_Op):
    """Monotone element-wise activation: relu / leaky_relu (0 <= leak <= 1) / sigmoid / tanh."""

    def __init__(self, kind: str, leak: float = 0.0):
        self.kind, self.leak = kind, leak

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.leaky_relu(x, self.leak) if self.leak else F.relu(x)
        return torch.sigmoid(x) if self.kind == "sigmoid" else torch.tanh(x)

    def forward(self, xs, w):
        return self.apply(xs[0])

    def ibp(self, ins, w):
        l, u = ins[0]
        return self.apply(l), self.apply(u)

    def planes(self, l, u):
        return _relu_planes(l, u, self.leak) if self.kind == "relu" else _sshape_planes(l, u, self.kind)

    def backward(self, lam, ins, w):
        if self.kind == "relu":
            return self._backward_relu(lam, *ins[0])
        sl, il, su, iu = (t.unsqueeze(1) for t in self.planes(*ins[0]))
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        const = _sum_rest(pos * il + neg * iu, 2)
        return [pos * sl + neg * su], const


    def _backward_relu(self, lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
        """ReLU/LeakyReLU: stable neurons pass lam times their slope (dense); the few unstable ones are
        gathered and get the lower plane for lam >= 0, the chord for lam < 0."""
        b, S = lam.shape[:2]
        lf, uf = l.reshape(b, -1), u.reshape(b, -1)
        slope = torch.where(lf >= 0, 1.0, self.leak).to(lam.dtype)                  # stable slopes
        flat = lam.reshape(b, S, -1)
        out = flat * slope.unsqueeze(1)
        const = _zero_const(lam)
        unstable = (lf < 0) & (uf > 0)
        if bool(unstable.any()):
            bi, ji = torch.nonzero(unstable, as_tuple=True)
            sl, _, su, iu = _relu_planes(lf[bi, ji], uf[bi, ji], self.leak)             # (n,)
            lam_u = flat[bi, :, ji]                                                    # (n, S)
            neg = lam_u.clamp(max=0)
            out[bi, :, ji] = torch.where(lam_u >= 0, lam_u * sl.unsqueeze(1), lam_u * su.unsqueeze(1))
            const = const.index_add(0, bi, neg * iu.unsqueeze(1))
        return [out.reshape(lam.shape)], const


class _MaxPool(_Op):
    """Max pooling (1-D/2-D). Lower plane y >= x_j (j: the largest lower bound of the window); upper
    plane y <= x_j where x_j dominates its window (l_j >= u_i for all other i), else y <= max u."""

    def __init__(self, dims, kernel, stride, padding, dilation, ceil_mode, in_shape, out_shape):
        self.dims = dims
        self.args = (kernel, stride, padding, dilation, ceil_mode)
        self.in_shape, self.out_shape = in_shape, out_shape
        two = lambda v: (1, v[0]) if dims == 1 else tuple(v)  # noqa: E731
        self.k2, self.s2, self.p2, self.d2 = two(kernel), two(stride), two(padding), two(dilation)
        sp = (1, in_shape[1]) if dims == 1 else tuple(in_shape[1:])
        osp = (1, out_shape[1]) if dims == 1 else tuple(out_shape[1:])
        self.sp, self.osp = sp, osp
        # extra right padding so that floor-mode windows equal the (ceil-mode) output
        self.extra = [max(0, (o - 1) * s - (n + 2 * p - d * (k - 1) - 1))
                      for o, s, n, p, d, k in zip(osp, self.s2, sp, self.p2, self.d2, self.k2)]
        pos = torch.arange(sp[0] * sp[1], dtype=DTYPE).reshape(1, 1, *sp)
        win = self._windows(pos, -1.0)
        if win.shape[-1] != osp[0] * osp[1]:
            raise ModelError(f"certify: unsupported layer MaxPool{dims}d configuration {self.args}")
        self.index = win[0, 0].long()  # (K, P) flat input position of each window element

    def _windows(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(b, C, K, P) windows of x (b, C, *sp), padded with ``fill``."""
        b, C = x.shape[:2]
        x = x.reshape(b, C, *self.sp)
        pad = (self.p2[1], self.p2[1] + self.extra[1], self.p2[0], self.p2[0] + self.extra[0])
        x = F.pad(x, pad, value=fill)
        cols = F.unfold(x, self.k2, dilation=self.d2, stride=self.s2)
        return cols.reshape(b, C, self.k2[0] * self.k2[1], -1)

    def _pool(self, x):
        f = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return f(x, *self.args)

    def forward(self, xs, w):
        return self._pool(xs[0])

    def ibp(self, ins, w):
        l, u = ins[0]
        return self._pool(l), self._pool(u)

    def backward(self, lam, ins, w):
        l, u = ins[0]
        b, S, C = lam.shape[:3]
        Lw, Uw = self._windows(l, -math.inf), self._windows(u, -math.inf)
        j = Lw.argmax(2, keepdim=True)                                       # (b, C, 1, P)
        lmax = Lw.gather(2, j).squeeze(2)
        umax = Uw.max(2).values
        second = Uw.scatter(2, j, -math.inf).max(2).values
        dom = (second <= lmax).to(lam.dtype)                                 # (b, C, P)
        pos = self.index.expand(b, C, *self.index.shape).gather(2, j).squeeze(2)  # (b, C, P)
        lam = lam.reshape(b, S, C, -1)
        lp, ln = lam.clamp(min=0), lam.clamp(max=0)
        coef = lp + ln * dom.unsqueeze(1)
        const = (ln * ((1 - dom) * umax).unsqueeze(1)).reshape(b, S, -1).sum(-1)
        n_in = self.sp[0] * self.sp[1]
        lam_in = lam.new_zeros(b, S, C, n_in).scatter_add_(3, pos.unsqueeze(1).expand(b, S, C, -1), coef)
        return [lam_in.reshape(b, S, *self.in_shape)], const


class _PositiveLinear(_Op):
    """A fixed linear map with non-negative coefficients and no offset (average pooling)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def forward(self, xs, w):
        return self.fn(xs[0])

    def ibp(self, ins, w):
        l, u = ins[0]
        return self.fn(l), self.fn(u)

    def backward(self, lam, ins, w):
        b, S = lam.shape[:2]
        in_shape = tuple(ins[0][0].shape[1:])
        z = torch.zeros((b * S, *in_shape), dtype=lam.dtype, requires_grad=True)
        with torch.enable_grad():
            out = self.fn(z)
            (g,) = torch.autograd.grad(out, z, lam.reshape(b * S, *lam.shape[2:]))
        return [g.reshape(b, S, *in_shape)], _zero_const(lam)


class _Reshape(_Op):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, xs, w):
        return xs[0].reshape(xs[0].shape[0], *self.out_shape)

    def ibp(self, ins, w):
        l, u = ins[0]
        return l.reshape(l.shape[0], *self.out_shape), u.reshape(u.shape[0], *self.out_shape)

    def backward(self, lam, ins, w):
        return [lam.reshape(*lam.shape[:2], *self.in_shape)], _zero_const(lam)


class _Sum(_Op):
    """y = sum_i coef_i x_i + constant (residual additions, subtraction, scalar affine maps)."""

    def __init__(self, coefs: tuple[float, ...], constant: float = 0.0):
        self.coefs, self.constant = coefs, constant

    def forward(self, xs, w):
        return sum(c * x for c, x in zip(self.coefs, xs)) + self.constant

    def ibp(self, ins, w):
        lo = sum(c * (l if c >= 0 else u) for c, (l, u) in zip(self.coefs, ins)) + self.constant
        hi = sum(c * (u if c >= 0 else l) for c, (l, u) in zip(self.coefs, ins)) + self.constant
        return lo, hi

    def backward(self, lam, ins, w):
        const = _sum_rest(lam, 2) * self.constant if self.constant else _zero_const(lam)
        return [lam * c for c in self.coefs], const


# ============================================================================ tracing


@dataclass
class _Node:
    name: str
    op: _Op | None            # None: the input
    inputs: tuple[int, ...]
    shape: tuple[int, ...]    # without the batch dimension


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _conv_padding(mod: nn.modules.conv._ConvNd, node_name: str) -> tuple[int, ...]:
    if mod.padding_mode != "zeros":
        raise ModelError(f"certify: unsupported layer {type(mod).__name__} (padding_mode '{mod.padding_mode}') "
                         f"at {node_name}")
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return (0,) * len(mod.kernel_size)
        total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
        if any(t % 2 for t in total):
            raise ModelError(f"certify: unsupported layer {type(mod).__name__} (asymmetric 'same' padding) "
                             f"at {node_name}")
        return tuple(t // 2 for t in total)
    return tuple(mod.padding)


class _Graph:
    """A model traced with torch.fx into certifiable operations, in topological order."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        from torch.fx import symbolic_trace
        from torch.fx.passes.shape_prop import ShapeProp

        self.model = model
        try:
            gm = symbolic_trace(model)
        except Exception as e:  # fx raises a variety of errors on dynamic control flow
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"certify: cannot trace {type(model).__name__} with torch.fx ({msg})") from None
        try:
            ShapeProp(gm).propagate(example)
        except Exception as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"certify: model cannot run on data of shape {tuple(example.shape[1:])}: {msg}") from None
        modules = dict(gm.named_modules())
        batch = example.shape[0]
        self.nodes: list[_Node] = []
        self.attrs: dict[str, str] = {}     # get_attr node -> parameter / buffer name
        self.shapes = {n: t.shape for n, t in (*model.named_parameters(), *model.named_buffers())}
        index: dict[str, int] = {}
        output = None
        for node in gm.graph.nodes:
            if node.op == "output":
                out = node.args[0]
                out = out[0] if isinstance(out, (tuple, list)) else out
                if not hasattr(out, "name") or out.name not in index:
                    raise ModelError("certify: the model's output is not a tensor computed from its input")
                output = index[out.name]
                continue
            meta = node.meta.get("tensor_meta")
            if node.op == "get_attr":          # parameters and buffers of torch.export graphs
                self.attrs[node.name] = str(node.target)
                continue
            if node.op == "placeholder":
                if meta is None or not hasattr(meta, "shape"):
                    continue
                if any(n.op is None for n in self.nodes):
                    raise ModelError("certify: models with more than one tensor input are not supported")
                index[node.name] = len(self.nodes)
                self.nodes.append(_Node(node.name, None, (), tuple(meta.shape[1:])))
                continue
            if meta is None or not hasattr(meta, "shape"):   # sizes, shapes and other non-tensor values
                if node.op == "call_module":
                    raise ModelError(f"certify: unsupported layer {self._what(node, modules)} at {node.name}")
                continue
            shape = tuple(meta.shape)
            if not shape or shape[0] != batch:
                raise ModelError(f"certify: unsupported layer {self._what(node, modules)} at {node.name} "
                                 "(it does not keep the batch dimension)")
            op, ins = self._convert(node, modules, index)
            index[node.name] = len(self.nodes)
            self.nodes.append(_Node(node.name, op, tuple(index[i.name] for i in ins), shape[1:]))
        if output is None or self.nodes[output].op is None or len(self.nodes[output].shape) != 1:
            raise ModelError("certify: expected the model to return logits of shape (batch, classes)")
        self.nodes = self.nodes[:output + 1]
        self.output = output
        self.used = sorted({p for n in self.nodes if n.op is not None for p in n.op.params})
        self.buffers = sorted({b for n in self.nodes if n.op is not None for b in n.op.buffers})
        consumers: dict[int, list[_Op]] = {}
        for n in self.nodes:
            for i in n.inputs:
                consumers.setdefault(i, []).append(n.op)
        # pre-activations tightened by their own backward pass; "relu" only needs the unstable ones
        self.preact: dict[int, bool] = {}
        for i, ops in consumers.items():
            acts = [o for o in ops if isinstance(o, _Activation)]
            if acts and self.nodes[i].op is not None:
                self.preact[i] = all(o.kind == "relu" for o in acts)
        self._check(example)

    @staticmethod
    def _what(node, modules) -> str:
        if node.op == "call_module":
            return type(modules[node.target]).__name__
        if node.op == "call_function":
            if isinstance(node.target, torch._ops.OpOverload):
                return f"aten.{node.target.overloadpacket.__name__}"
            return getattr(node.target, "__name__", str(node.target))
        return str(node.target)

    def _convert(self, node, modules, index) -> tuple[_Op, list[str]]:
        what = self._what(node, modules)

        def unsupported(extra: str = "") -> ModelError:
            return ModelError(f"certify: unsupported layer {what}{extra} at {node.name}")

        tensor_args = [a for a in node.args if hasattr(a, "name") and a.name in index]
        in_shape = lambda: self.nodes[index[tensor_args[0].name]].shape  # noqa: E731
        out_shape = tuple(node.meta["tensor_meta"].shape[1:])
        if node.op == "call_module":
            mod = modules[node.target]
            pre = f"{node.target}." if node.target else ""
            names = lambda m: (f"{pre}weight" if getattr(m, "weight", None) is not None else None,  # noqa: E731
                               f"{pre}bias" if getattr(m, "bias", None) is not None else None)
            if len(tensor_args) != 1 or node.kwargs:
                raise unsupported(" (call with several inputs)")
            if isinstance(mod, nn.Linear):
                return _Linear(*names(mod)), tensor_args
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                d = len(mod.kernel_size)
                return _Conv(*names(mod), d, tuple(mod.kernel_size), tuple(mod.stride), _conv_padding(mod, node.name),
                             tuple(mod.dilation), mod.groups), tensor_args
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.training or mod.running_mean is None:
                    raise ModelError(f"certify: {what} at {node.name} normalises with batch statistics "
                                     "(training mode or no running stats); call model.eval()")
                return _BatchNorm(*names(mod), f"{pre}running_mean", f"{pre}running_var", mod.eps), tensor_args
            if isinstance(mod, nn.ReLU):
                return _Activation("relu"), tensor_args
            if isinstance(mod, nn.LeakyReLU):
                if not 0 <= mod.negative_slope <= 1:
                    raise unsupported(f" (negative slope {mod.negative_slope})")
                return _Activation("relu", float(mod.negative_slope)), tensor_args
            if isinstance(mod, nn.Sigmoid):
                return _Activation("sigmoid"), tensor_args
            if isinstance(mod, nn.Tanh):
                return _Activation("tanh"), tensor_args
            if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
                d = 1 if isinstance(mod, nn.MaxPool1d) else 2
                if mod.return_indices:
                    raise unsupported(" (return_indices)")
                k = _tuple(mod.kernel_size, d)
                s = _tuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
                return _MaxPool(d, k, s, _tuple(mod.padding, d), _tuple(mod.dilation, d), mod.ceil_mode,
                                in_shape(), out_shape), tensor_args
            if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                return _PositiveLinear(mod), tensor_args
            if isinstance(mod, nn.Flatten):
                return _Reshape(in_shape(), out_shape), tensor_args
            if isinstance(mod, nn.Identity) or (isinstance(mod, nn.modules.dropout._DropoutNd) and not mod.training):
                return _Reshape(in_shape(), out_shape), tensor_args
            raise unsupported()
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            return self._convert_aten(node, index, unsupported)
        fname = target if isinstance(target, str) else getattr(target, "__name__", "")
        if node.op == "call_method" and fname in ("view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze") \
                or node.op == "call_function" and target in (torch.flatten, torch.reshape):
            if len(tensor_args) != 1:
                raise unsupported()
            return _Reshape(in_shape(), out_shape), tensor_args
        functions = (torch.relu, F.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh)
        if fname in ("relu", "sigmoid", "tanh") and (node.op == "call_method" or target in functions):
            if len(tensor_args) != 1:
                raise unsupported()
            return _Activation(fname), tensor_args
        arith = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
                 operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
                 operator.neg: "neg", torch.neg: "neg", operator.iadd: "add", operator.isub: "sub"}
        kind = arith.get(target) if node.op == "call_function" else (
            fname if fname in ("add", "sub", "mul", "div", "neg") else None)
        if kind is not None:
            return self._arith(kind, node, index, unsupported)
        raise unsupported()

    def _convert_aten(self, node, index, unsupported) -> tuple[_Op, list]:
        """The core ATen operations of a torch.export graph (parameters come from get_attr nodes)."""
        name = node.target.overloadpacket.__name__
        args = list(node.args)

        def arg(i: int, default=None):
            return args[i] if len(args) > i else node.kwargs.get(
                node.target._schema.arguments[i].name, default) if i < len(node.target._schema.arguments) else default

        def attr(a) -> str | None:
            if a is None:
                return None
            if not hasattr(a, "name") or a.name not in self.attrs:
                raise unsupported(" (a weight computed in the graph)")
            return self.attrs[a.name]

        x = args[0] if args else None
        if not (hasattr(x, "name") and x.name in index):
            raise unsupported()
        if name in ("conv1d", "conv2d", "conv3d"):
            d = int(name[4])
            w = attr(arg(1))
            kernel = tuple(self.shapes[w][2:])
            padding = arg(4, 0)
            if isinstance(padding, str):
                mod = type("Conv", (), {"padding_mode": "zeros", "padding": padding, "kernel_size": kernel,
                                        "dilation": _tuple(arg(5, 1), d)})
                padding = _conv_padding(mod, node.name)
            return _Conv(w, attr(arg(2)), d, kernel, _tuple(arg(3, 1), d), _tuple(padding, d),
                         _tuple(arg(5, 1), d), int(arg(6, 1))), [x]
        if name == "linear":
            return _Linear(attr(arg(1)), attr(arg(2))), [x]
        if name == "batch_norm":
            if arg(5, False):
                raise ModelError(f"certify: aten.batch_norm at {node.name} normalises with batch statistics "
                                 "(training mode); export the model in eval mode")
            return _BatchNorm(attr(arg(1)), attr(arg(2)), attr(arg(3)), attr(arg(4)), float(arg(7, 1e-5))), [x]
        if name in ("relu", "sigmoid", "tanh"):
            return _Activation(name), [x]
        if name == "leaky_relu":
            slope = float(arg(1, 0.01))
            if not 0 <= slope <= 1:
                raise unsupported(f" (negative slope {slope})")
            return _Activation("relu", slope), [x]
        if name in ("max_pool1d", "max_pool2d"):
            d = int(name[-2])
            k = _tuple(arg(1), d)
            st = arg(2, None)
            st = k if not st else _tuple(st, d)
            return _MaxPool(d, k, st, _tuple(arg(3, 0), d), _tuple(arg(4, 1), d), bool(arg(5, False)),
                            self.nodes[index[x.name]].shape, tuple(node.meta["tensor_meta"].shape[1:])), [x]
        if name in ("avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"):
            fn, rest = getattr(torch.ops.aten, name).default, tuple(args[1:])
            return _PositiveLinear(lambda t: fn(t, *rest)), [x]
        if name in ("flatten", "view", "reshape", "_unsafe_view", "clone", "contiguous", "alias", "squeeze",
                    "unsqueeze", "dropout"):
            if name == "dropout" and arg(2, False):
                raise unsupported(" (training mode)")
            return _Reshape(self.nodes[index[x.name]].shape, tuple(node.meta["tensor_meta"].shape[1:])), [x]
        if name in ("add", "sub", "mul", "div", "neg"):
            return self._arith(name, node, index, unsupported)
        raise unsupported()

    @staticmethod
    def _arith(kind: str, node, index, unsupported) -> tuple[_Op, list]:
        args = list(node.args)
        alpha = node.kwargs.get("alpha", 1)
        if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)):
            raise unsupported()
        is_t = [hasattr(a, "name") and a.name in index for a in args]
        nums = [isinstance(a, (int, float)) and not isinstance(a, bool) for a in args]
        if not all(t or n for t, n in zip(is_t, nums)):
            raise unsupported(" (tensor constant operand)")
        if kind == "neg":
            return _Sum((-1.0,)), [args[0]]
        a, b = args
        if kind in ("add", "sub"):
            sign = float(alpha) * (1.0 if kind == "add" else -1.0)
            if is_t[0] and is_t[1]:
                return _Sum((1.0, sign)), [a, b]
            if is_t[0]:
                return _Sum((1.0,), sign * float(b)), [a]
            return _Sum((sign,), float(a)), [b]
        if is_t[0] and is_t[1]:
            raise unsupported(" (product of two tensors)")
        if kind == "mul":
            t, c = (a, float(b)) if is_t[0] else (b, float(a))
            return _Sum((c,)), [t]
        if not is_t[0]:
            raise unsupported(" (division by a tensor)")
        return _Sum((1.0 / float(b),)), [a]

    def _check(self, example: torch.Tensor) -> None:
        """The traced graph must reproduce the model (centre weights, float64 vs the model's dtype)."""
        w = self.weights(None)
        got = self.forward(example.to(DTYPE), w)
        with torch.no_grad():
            want = self.model(example)
        want = want[0] if isinstance(want, (tuple, list)) else want
        want = want.detach().to(DTYPE)
        tol = 1e-3 * (1 + float(want.abs().max()))
        if got.shape != want.shape or float((got - want).abs().max()) > tol:
            raise ModelError("certify: the traced graph does not reproduce the model's output "
                             "(an operation is used in a way certify does not model)")

    def weights(self, pset: PerturbationSet | None) -> _Weights:
        """The model's current parameters and buffers (float64) with ``pset`` resolved on them."""
        return _Weights(self.model, pset, self.used, self.buffers)

    # ------------------------------------------------------------------ propagation

    def forward(self, x: torch.Tensor, w: _Weights) -> torch.Tensor:
        vals: list[torch.Tensor | None] = []
        for n in self.nodes:
            vals.append(x if n.op is None else n.op.forward([vals[i] for i in n.inputs], w))
        return vals[self.output]

    def ibp(self, x: torch.Tensor, w: _Weights, bounds: list | None = None, start: int = 0) -> list[Bounds]:
        bounds = bounds if bounds is not None else [None] * len(self.nodes)
        for i in range(start, len(self.nodes)):
            n = self.nodes[i]
            bounds[i] = (x, x) if n.op is None else n.op.ibp([bounds[j] for j in n.inputs], w)
        return bounds

    def backward(self, start: int, C: torch.Tensor, bounds: list[Bounds], w: _Weights, *,
                 interval_inputs: bool = False, record: dict | None = None) -> torch.Tensor:
        """Lower bound (b, S) of C . node[start], with C (b, S, *shape). ``interval_inputs``: stop after
        the start node and concretise its inputs with their interval bounds (IBP with the spec merged).
        ``record``: filled with the coefficients (b, S, *shape) reaching each activation node."""
        const = C.new_zeros(C.shape[:2])
        lams: dict[int, torch.Tensor] = {start: C}
        for i in range(start, -1, -1):
            lam = lams.pop(i, None)
            if lam is None:
                continue
            n = self.nodes[i]
            if record is not None and isinstance(n.op, _Activation):
                record[i] = lam
            if n.op is None or (interval_inputs and i != start):
                l, u = bounds[i]
                const = const + _sum_rest(lam.clamp(min=0) * l.unsqueeze(1) + lam.clamp(max=0) * u.unsqueeze(1), 2)
                continue
            lam_ins, c = n.op.backward(lam, [bounds[j] for j in n.inputs], w)
            const = const + c
            for j, lj in zip(n.inputs, lam_ins):
                lams[j] = lj if j not in lams else lams[j] + lj
        return _widen(const, -1, _FINAL_SLACK)

    def _rows(self, start: int, b: int) -> int:
        biggest = max(math.prod(self.nodes[i].shape) for i in range(start + 1))
        return max(1, _BUDGET // max(1, b * biggest))

    def tighten(self, k: int, need: torch.Tensor, bounds: list[Bounds], w: _Weights) -> None:
        """Replace the bounds of node k, where ``need`` (b, N) is set, by backward-pass (CROWN) bounds."""
        l, u = bounds[k]
        b = l.shape[0]
        shape = l.shape[1:]
        lf, uf = l.reshape(b, -1).clone(), u.reshape(b, -1).clone()
        N = lf.shape[1]
        counts = need.sum(1)
        width = int(counts.max()) if b else 0
        if width == 0:
            return
        order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]   # needed neurons first
        valid = torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)
        step = max(1, self._rows(k, b) // 2)
        new_l, new_u = [], []
        for s in range(0, width, step):
            idx = order[:, s:s + step]
            m = idx.shape[1]
            C = torch.zeros(b, 2 * m, N, dtype=DTYPE)
            ones = valid[:, s:s + step].to(DTYPE)
            C[:, :m].scatter_(2, idx.unsqueeze(2), ones.unsqueeze(2))
            C[:, m:].scatter_(2, idx.unsqueeze(2), -ones.unsqueeze(2))
            lo = self.backward(k, C.reshape(b, 2 * m, *shape), bounds, w)
            new_l.append(lo[:, :m])
            new_u.append(-lo[:, m:])
        nl, nu = torch.cat(new_l, 1), torch.cat(new_u, 1)
        old_l, old_u = lf.gather(1, order), uf.gather(1, order)
        lf.scatter_(1, order, torch.where(valid, torch.maximum(old_l, nl), old_l))
        uf.scatter_(1, order, torch.where(valid, torch.minimum(old_u, nu), old_u))
        bounds[k] = (lf.reshape(l.shape), uf.reshape(u.shape))

    def lower(self, x: torch.Tensor, C: torch.Tensor, w: _Weights, method: str,
              intermediate: str = "crown", splits: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
              record: dict | None = None) -> torch.Tensor:
        """Lower bounds (b, S) of C . f(x) over the perturbation set, for method 'ibp' or 'crown'.

        ``splits`` (CROWN only): ReLU pre-activation node -> (lo, hi) of shape (b, N), bounds known to
        hold on the part of the set a row stands for (a branch of branch and bound: its parent's
        bounds, with 0 as lo or hi of the split neurons). They are intersected with the computed
        ones before CROWN tightens what is left unstable; the bound then holds on that part of the set.
        A row whose bounds contradict each other is empty and gets +inf. ``record`` receives the final
        pass's coefficients per activation node and the bounds ("bounds")."""
        bounds = self.ibp(x, w)
        if method == "ibp":
            return self.backward(self.output, C, bounds, w, interval_inputs=True)
        empty = None
        if intermediate == "crown":
            for k in sorted(self.preact):
                l, u = bounds[k]
                b = l.shape[0]
                if splits and k in splits:
                    lo, hi = splits[k]
                    l = torch.maximum(l.reshape(b, -1), lo).reshape(l.shape)
                    u = torch.minimum(u.reshape(b, -1), hi).reshape(u.shape)
                    bad = (l > u).reshape(b, -1).any(1)
                    empty = bad if empty is None else empty | bad
                    u = torch.maximum(u, l)                  # keep empty rows well-formed; they are discarded
                    bounds[k] = (l, u)
                need = ((l < 0) & (u > 0)) if self.preact[k] else (u > l)
                self.tighten(k, need.reshape(b, -1), bounds, w)
                self.ibp(x, w, bounds, start=k + 1)
        lb = self.backward(self.output, C, bounds, w, record=record)
        if record is not None:
            record["bounds"] = bounds
        return lb if empty is None else torch.where(empty.unsqueeze(1), math.inf, lb)


# ============================================================================ public API


def _margin_spec(target: torch.Tensor, classes: int) -> torch.Tensor:
    """(b, K, K): row j is e_target - e_j (the row j = target is zero)."""
    eye = torch.eye(classes, dtype=DTYPE)
    return eye[target].unsqueeze(1) - eye.unsqueeze(0)


def check_method(method: str, intermediate: str = "crown", time_budget: float | None = None) -> None:
    """Raise a one-line :class:`ConstraintError` for an unknown method or intermediate-bound method,
    or a time budget that is not a finite number of seconds >= 0."""
    if method not in METHODS:
        raise ConstraintError(f"certify: unknown method '{method}'{did_you_mean(str(method), METHODS)}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and math.isfinite(time_budget)
                                        and time_budget >= 0):
        raise ConstraintError(f"certify: expected a time budget >= 0 seconds, got {time_budget}")
    if intermediate not in INTERMEDIATE:
        raise ConstraintError(f"certify: unknown intermediate bounds '{intermediate}' (choose from: crown, ibp)")


_CACHE: dict[int, tuple[nn.Module, tuple, _Graph]] = {}


def _graph(model: nn.Module, x: torch.Tensor) -> _Graph:
    """The traced graph of ``model`` (cached per model object and input shape)."""
    key = (tuple(x.shape[1:]), x.dtype)
    hit = _CACHE.get(id(model))
    if hit is not None and hit[0] is model and hit[1] == key:
        return hit[2]
    example = x[:2] if len(x) >= 2 else torch.cat([x, x])[:2]
    logits(model, (example, None))  # a model that cannot run on these inputs says so in its own words
    g = _Graph(model, example)
    _CACHE.clear()
    _CACHE[id(model)] = (model, key, g)
    return g


def _unstable_counts(graph: _Graph, w: _Weights, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per input, the number of pre-activation neurons that interval bounds leave unstable."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 4 * batch_size):
            bounds = graph.ibp(x[i:i + 4 * batch_size].to(DTYPE), w)
            n = torch.zeros(len(bounds[0][0]), dtype=torch.long)
            for k in graph.preact:
                l, u = bounds[k]
                n += ((l < 0) & (u > 0)).reshape(len(l), -1).sum(1)
            out.append(n)
    return torch.cat(out)


def _lower_all(graph: _Graph, w: _Weights, x: torch.Tensor, C: torch.Tensor, method: str, intermediate: str,
               batch_size: int, on_chunk: Callable[[int], None] | None = None,
               deadline: float | None = None) -> tuple[torch.Tensor, int]:
    """Lower bounds for all inputs in chunks; stops before a chunk once ``deadline`` has passed
    (the rows not done stay -inf). Returns (bounds, inputs done). For CROWN the inputs are processed
    in order of their number of unstable neurons, which keeps the padded row counts of a chunk small."""
    out = torch.full(C.shape[:2], -math.inf, dtype=DTYPE)
    order = torch.arange(len(x))
    if deadline is not None:  # under a time budget: small chunks, the inputs likeliest to certify first
        batch_size = min(batch_size, 32)
    if method == "crown" and intermediate == "crown" and graph.preact and len(x) > batch_size:
        order = torch.argsort(_unstable_counts(graph, w, x, batch_size), descending=deadline is None, stable=True)
    done = 0
    for i in range(0, len(x), batch_size):
        if deadline is not None and time.perf_counter() > deadline:
            break
        idx = order[i:i + batch_size]
        with torch.no_grad():
            out[idx] = graph.lower(x[idx].to(DTYPE), C[idx], w, method, intermediate)
        done += len(idx)
        if on_chunk:
            on_chunk(len(idx))
    return out, done


def _falsify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pset: PerturbationSet, *, steps: int = 20,
             deadline: float | None = None) -> torch.Tensor:
    """Per input: True where a perturbation inside ``pset`` makes the model misclassify it (a
    counterexample: the input cannot be certified). Projected sign-gradient descent on each input's
    own margin f_y - max_j f_j in the model's dtype, from the centre and from a random box vertex
    (box coordinates step by sign, ball coordinates by the normalised gradient); each input's lowest
    point is then re-evaluated in float64, the arithmetic the bounds are about, and counts only if
    its margin is < 0 there too."""
    from torch.func import functional_call, grad, vmap

    n = len(x)
    broken = torch.zeros(n, dtype=torch.bool)
    named = dict(model.named_parameters())
    names = [nm for nm in pset.bounds if nm in named]
    if not names or n == 0:
        return broken
    pb = {nm: pset.bounds[nm] for nm in names}

    def margin_fn(mdl: nn.Module):
        params = {k: v.detach() for k, v in mdl.named_parameters()}
        buffers = {k: v.detach() for k, v in mdl.named_buffers()}
        dt = params[names[0]].dtype

        def delta(t, v, nm):
            b, d = pb[nm], 0.0
            if b.offset is not None:
                d = d + b.offset.to(dt)
            if b.radius is not None:
                d = d + b.radius.to(dt) * t[nm].to(dt)
            for i, (rho, sig) in enumerate(b.balls):
                d = d + rho * (v[nm][i].to(dt) if sig is None else sig.to(dt) * v[nm][i].to(dt))
            return d

        def margin(t, v, xi, yi):
            p = {**params, **{nm: params[nm] + delta(t, v, nm) for nm in names}}
            out = functional_call(mdl, (p, buffers), (xi.unsqueeze(0).to(dt),))[0]
            own = torch.arange(out.shape[0]) == yi
            return (out * own).sum() - torch.where(own, -math.inf, out).max()

        return margin, dt

    margin, dt = margin_fn(model)
    m_fn, g_fn = vmap(margin), vmap(grad(margin, argnums=(0, 1)))
    margin64, _ = margin_fn(copy.deepcopy(model).to(DTYPE).eval())
    m64_fn = vmap(margin64)
    k = sum(named[nm].numel() for nm in names)
    chunk = max(1, 2 ** 24 // max(1, 6 * k))
    gen = torch.Generator().manual_seed(0)
    shape = {nm: tuple(named[nm].shape) for nm in names}
    with torch.enable_grad():
        for s in range(0, n, chunk):
            xs, ys = x[s:s + chunk], y[s:s + chunk]
            b = len(xs)
            low = torch.full((b,), math.inf, dtype=dt)
            best_t = {nm: torch.zeros(b, *shape[nm], dtype=dt) for nm in names}
            best_v = {nm: [torch.zeros(b, *shape[nm], dtype=dt) for _ in pb[nm].balls] for nm in names}
            for start in ("centre", "vertex"):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                t = {nm: (torch.zeros(b, *shape[nm], dtype=dt) if start == "centre" else
                          torch.randint(0, 2, (b, *shape[nm]), generator=gen).to(dt) * 2 - 1) for nm in names}
                v = {nm: [torch.zeros(b, *shape[nm], dtype=dt) for _ in pb[nm].balls] for nm in names}
                for it in range(steps + 1):
                    mv = m_fn(t, v, xs, ys).detach()
                    better = mv < low
                    low = torch.where(better, mv, low)
                    for nm in names:
                        best_t[nm][better] = t[nm][better]
                        for i in range(len(v[nm])):
                            best_v[nm][i][better] = v[nm][i][better]
                    if it == steps or bool((low < 0).all()):
                        break
                    gt, gv = g_fn(t, v, xs, ys)
                    step = 0.5 if it < steps // 2 else 0.125
                    t = {nm: (t[nm] - step * gt[nm].sign()).clamp(-1, 1) for nm in names}
                    for nm in names:
                        for i in range(len(v[nm])):
                            g = gv[nm][i]
                            g = g / g.flatten(1).norm(dim=1).clamp(min=1e-30).reshape(-1, *[1] * (g.ndim - 1))
                            z = v[nm][i] - step * g
                            v[nm][i] = z / z.flatten(1).norm(dim=1).clamp(min=1.0).reshape(-1, *[1] * (z.ndim - 1))
            cand = torch.nonzero(low < 0).reshape(-1)
            if len(cand):    # the lowest points, in float64 (ball coordinates renormalised there)
                bt = {nm: best_t[nm][cand].to(DTYPE) for nm in names}
                bv = {nm: [u[cand].to(DTYPE) / u[cand].to(DTYPE).flatten(1).norm(dim=1).clamp(min=1.0).reshape(
                    -1, *[1] * (u.ndim - 1)) for u in best_v[nm]] for nm in names}
                with torch.no_grad():
                    broken[s + cand] = m64_fn(bt, bv, xs[cand].to(DTYPE), ys[cand]) < 0
    return broken


def _bab(graph: _Graph, w: _Weights, x: torch.Tensor, C: torch.Tensor, skip: torch.Tensor, *,
         deadline: float | None, max_domains: int = 256, batch_size: int = 128, patience: int | None = 20,
         on_input: Callable[[int], None] | None = None) -> torch.Tensor:
    """Branch and bound on ReLU phases over CROWN (Wang et al. 2021 without the beta multipliers): an
    input is certified when, on every branch, the lower bounds of C . f(x) are > 0, except the row
    ``skip[i]`` of each input (its label's own zero row). Branches split the unstable neuron whose
    relaxation costs the worst margin most (|lam| times the chord's intercept, as in BaBSR) into its
    active (pre-activation >= 0) and inactive (<= 0) halves; the inputs are taken in order and each gets
    at most ``max_domains`` branches. Give the inputs likeliest to certify first: the search stops at the
    deadline, or once ``patience`` inputs in a row have failed. Returns a bool per input (False where
    the search failed or stopped). ``on_input(k)`` is called with the number of inputs decided."""
    n = len(x)
    relu = [k for k, r in sorted(graph.preact.items()) if r]
    acts = {k: [i for i, nd in enumerate(graph.nodes) if isinstance(nd.op, _Activation) and nd.inputs == (k,)]
            for k in relu}
    size = {k: math.prod(graph.nodes[k].shape) for k in relu}
    where = [(k, j) for k in relu for j in range(size[k])]          # flat neuron index -> (node, neuron)
    certified = torch.zeros(n, dtype=torch.bool)
    if not relu or n == 0:
        return certified
    inp = torch.arange(n)
    lo = {k: torch.full((n, size[k]), -math.inf, dtype=DTYPE) for k in relu}
    hi = {k: torch.full((n, size[k]), math.inf, dtype=DTYPE) for k in relu}
    open_ = torch.ones(n, dtype=torch.bool)            # inputs still being decided
    created = torch.ones(n, dtype=torch.long)
    streak = 0
    B = min(4, batch_size)                            # grows to about a second per wave
    while len(inp) and not (deadline is not None and time.perf_counter() > deadline):
        t_wave = time.perf_counter()
        B = min(B, len(inp))
        bi = inp[:B]
        rec: dict = {}
        with torch.no_grad():
            lb = graph.lower(x[bi].to(DTYPE), C[bi], w, "crown", splits={k: (lo[k][:B], hi[k][:B]) for k in relu},
                             record=rec)
        lb[torch.arange(B), skip[bi]] = math.inf
        worst, row = lb.min(1)
        todo = ~(worst > 0)
        # the branching neuron of each unresolved branch
        scores = []
        for k in relu:
            l, u = (t.reshape(B, -1) for t in rec["bounds"][k])
            lam_w = sum(rec[a].reshape(B, lb.shape[1], -1)[torch.arange(B), row] for a in acts[k] if a in rec)
            unstable = (l < 0) & (u > 0)
            gap = torch.where(unstable, -l * u / torch.where(unstable, u - l, 1.0), 0.0)
            scores.append(torch.where(unstable, torch.as_tensor(lam_w).abs() * gap + 1e-12 * gap, -1.0))
        score = torch.cat(scores, 1)
        best, pick = score.max(1)
        stuck = todo & (best < 0)                                                    # nothing left to split
        fail = torch.zeros(n, dtype=torch.bool)
        fail[bi[stuck]] = True
        split = todo & ~stuck
        si = torch.nonzero(split).reshape(-1)
        created += torch.bincount(bi[si], minlength=n)
        fail |= (created > max_domains) & open_
        # children: inactive (hi = 0) then active (lo = 0) copies of each split branch, starting from the
        # bounds computed for it (valid on the parent, so on both halves: the children only get tighter)
        c_inp = bi[si].repeat(2)
        c_lo = {k: rec["bounds"][k][0].reshape(B, -1)[si].repeat(2, 1) for k in relu}
        c_hi = {k: rec["bounds"][k][1].reshape(B, -1)[si].repeat(2, 1) for k in relu}
        m = len(si)
        for r, p in enumerate(pick[si].tolist()):
            k, j = where[p]
            c_hi[k][r, j] = 0.0
            c_lo[k][m + r, j] = 0.0
        inp = torch.cat([inp[B:], c_inp])
        lo = {k: torch.cat([lo[k][B:], c_lo[k]]) for k in relu}
        hi = {k: torch.cat([hi[k][B:], c_hi[k]]) for k in relu}
        open_ &= ~fail
        keep = open_[inp]
        order = torch.argsort(inp[keep], stable=True)                                # inputs in order, depth-first
        inp = inp[keep][order]
        lo = {k: v[keep][order] for k, v in lo.items()}
        hi = {k: v[keep][order] for k, v in hi.items()}
        done = open_ & (torch.bincount(inp, minlength=n) == 0)
        certified |= done
        decided = torch.nonzero(done | fail).reshape(-1).tolist()
        if on_input is not None and decided:
            on_input(len(decided))
        open_ &= ~done
        # about a second per wave, so that the deadline is kept to within a wave
        B = max(1, min(batch_size, 2 * B, int(B / max(time.perf_counter() - t_wave, 1e-3))))
        for i in decided:                      # in input order: a run of failures ends the search
            streak = 0 if certified[i] else streak + 1
        if patience is not None and streak >= patience:
            break
    return certified


def margin_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pset: PerturbationSet, method: str = "crown",
                  *, intermediate: str = "crown", batch_size: int = 128) -> torch.Tensor:
    """Lower bounds (N, K) float64 on f_y(x) - f_j(x) over every perturbation in ``pset``; the entry
    of class y itself is +inf. ``method``: 'ibp', 'crown' or 'auto' (the larger of both)."""
    check_method(method, intermediate)
    if method == "bab":
        raise ConstraintError("margin_bounds: 'bab' decides each input by branching and gives no single bound "
                              "per class; use certify(), or method 'crown'")
    graph = _graph(model, x)
    w = graph.weights(pset)
    K = graph.nodes[graph.output].shape[0]
    y = torch.as_tensor(y).long()
    C = _margin_spec(y, K)
    methods = ("ibp", "crown") if method == "auto" else (method,)
    lb = None
    for m in methods:
        b, _ = _lower_all(graph, w, x, C, m, intermediate, batch_size)
        lb = b if lb is None else torch.maximum(lb, b)
    lb[torch.arange(len(y)), y] = math.inf
    return lb


@dataclass(frozen=True)
class CertifyPoint:
    """Certification at one eps (``eps`` None for a set that is not an eps-ball).

    ``certified_accuracy``: share of inputs classified correctly whose margin lower bound is > 0
    against every other class; ``certified_stable``: share whose predicted class is certified
    unchanged (correct or not); ``mean_margin_lower``: mean over inputs of the smallest lower bound
    of f_label - f_j."""

    eps: float | None
    method: str
    certified_accuracy: float
    certified_stable: float
    clean_accuracy: float
    mean_margin_lower: float
    seconds: float
    n: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"eps": self.eps, "method": self.method, "certified_accuracy": self.certified_accuracy,
                "certified_stable": self.certified_stable, "clean_accuracy": self.clean_accuracy,
                "mean_margin_lower": self.mean_margin_lower, "seconds": self.seconds, "n": self.n, **self.extra}


@dataclass(frozen=True)
class CertifyResult(ByEps):
    """Certified accuracy indexed by eps (``result[eps]``), in the order the epsilons were given."""

    norm: str
    relative: str | None
    params: tuple[str, ...]
    k: int
    method: str
    points: tuple[CertifyPoint, ...]

    def to_dict(self) -> dict:
        return {"norm": self.norm, "relative": self.relative, "params": list(self.params), "k": self.k,
                "method": self.method, "points": [p.to_dict() for p in self.points]}


def _model(model: nn.Module | str) -> nn.Module:
    if isinstance(model, str):
        from .inputs import load_model

        return load_model(model, requires_grad=False)
    return model


def _resolve(model, data):
    model = _model(model)
    if isinstance(data, str):
        from .data import load_data

        data = load_data(data, "test")
    x, y = as_tensors(data)
    if len(x) == 0:
        raise DataError("certify: expected at least one input, got an empty data set")
    return model, x, torch.as_tensor(y).long()


def _certify_one(graph: _Graph, model: nn.Module, x, y, pred, pset: PerturbationSet, method: str, *,
                 intermediate: str, batch_size: int, time_budget: float, eps: float | None,
                 on_progress: Progress | None) -> CertifyPoint:
    t0 = time.perf_counter()
    w = graph.weights(pset)
    n = len(x)
    K = graph.nodes[graph.output].shape[0]
    C = torch.cat([_margin_spec(pred, K), _margin_spec(y, K)], dim=1)           # (n, 2K, K)
    total = n * (2 if method == "auto" else 1)
    state = {"done": 0, "total": total}

    def tick(m: int) -> None:
        state["done"] += m
        if on_progress:
            on_progress(state["done"], state["total"])

    def stable_of(lb):
        lp = lb[:, :K].clone()
        lp[torch.arange(n), pred] = math.inf
        return lp.min(1).values

    extra: dict = {}
    deadline = t0 + time_budget if time_budget is not None else None
    if method in ("ibp", "crown", "bab"):
        lb, _ = _lower_all(graph, w, x, C, "crown" if method == "bab" else method, intermediate, batch_size, tick)
        label = method
    else:
        lb, _ = _lower_all(graph, w, x, C, "ibp", intermediate, batch_size, tick)
        ibp_stable = stable_of(lb) > 0
        extra["ibp_certified_accuracy"] = float(((ibp_stable) & (pred == y)).double().mean())
        todo = torch.nonzero(~ibp_stable).reshape(-1)
        tick(n - len(todo))
        if len(todo):
            lc, done = _lower_all(graph, w, x[todo], C[todo], "crown", intermediate, batch_size, tick, deadline)
            lb[todo] = torch.maximum(lb[todo], lc)
            extra["crown_inputs"] = done
            extra["crown_skipped"] = len(todo) - done
        else:
            extra["crown_inputs"], extra["crown_skipped"] = 0, 0
        label = "auto(ibp+crown)" if extra["crown_inputs"] else "auto(ibp)"
    stable = stable_of(lb) > 0
    ll = lb[:, K:].clone()
    ll[torch.arange(n), y] = math.inf
    margin = ll.min(1).values
    correct = pred == y
    if method == "bab" or (method == "auto" and extra["crown_inputs"] and not extra["crown_skipped"]):
        # branch and bound for the correct inputs left, closest to certified first, in the budget
        if method == "bab":
            deadline = time.perf_counter() + time_budget if time_budget is not None else None
        cand = torch.nonzero(correct & ~stable).reshape(-1)
        t1 = time.perf_counter()
        # an attack first: an input with a counterexample cannot be certified, so it is not branched on
        bad = _falsify(model, x[cand], y[cand], pset, deadline=deadline)
        extra["falsified"] = int(bad.sum())
        extra["attack_upper_accuracy"] = (int(correct.sum()) - int(bad.sum())) / n
        cand = cand[~bad]
        cand = cand[torch.argsort(margin[cand], descending=True, stable=True)]
        state["total"] = total + len(cand)
        before = state["done"]
        got = _bab(graph, w, x[cand], C[cand, K:], y[cand], deadline=deadline, on_input=tick) if len(cand) \
            else cand.bool()
        tick(before + len(cand) - state["done"])                 # the inputs the search did not reach
        won = cand[got]
        stable[won] = True
        margin[won] = margin[won].clamp(min=0.0)
        extra.update(bab_inputs=len(cand), bab_certified=len(won), bab_seconds=round(time.perf_counter() - t1, 4))
        label = "crown+bab" if method == "bab" else "auto(ibp+crown+bab)"
    return CertifyPoint(eps, label, float((stable & correct).double().mean()), float(stable.double().mean()),
                        float(correct.double().mean()), float(margin.mean()),
                        round(time.perf_counter() - t0, 4), n, extra)


def certify(model: nn.Module | str, data, *, eps: float | Sequence[float], norm: str | float = "inf",
            relative: str | None = None, params: str | Sequence[str] | Selection | None = "*",
            method: str = "auto", intermediate: str = "crown", batch_size: int = 128, time_budget: float = 30.0,
            on_progress: Progress | None = None) -> CertifyResult:
    """Certified accuracy of ``model`` on ``data`` under weight perturbations of size ``eps``.

    ``norm``: 'inf' (per-element box) or '2' (per-tensor L2 ball); ``relative``: None (absolute),
    'element' or 'tensor' (see :meth:`PerturbationSet.ball`); ``params``: globs understood by
    :func:`hwfault.params.select` or a Selection ('*' = every parameter: weights, biases, norms).
    ``method``: 'ibp', 'crown', 'bab' (CROWN, then branch and bound for the correct inputs left, for
    ``time_budget`` seconds) or 'auto' (IBP for all inputs, then CROWN for the inputs IBP does not
    certify, then branch and bound, all within ``time_budget`` seconds per eps). With 'bab' and 'auto',
    ``mean_margin_lower`` counts an input certified by branching as 0 (its bound is the least over its
    branches, > 0). ``on_progress(done, total)`` is called per chunk; ``total`` grows when branching starts.
    """
    eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not eps_list:
        raise ConstraintError("expected at least one eps")
    eps_list = [_check_eps(e) for e in eps_list]
    p = _parse_norm(norm)
    if relative not in RELATIVE:
        raise ConstraintError(f"certify: expected relative None, 'tensor' or 'element', got '{relative}'")
    check_method(method, intermediate, time_budget)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConstraintError(f"certify: expected batch_size >= 1, got {batch_size}")
    model, x, y = _resolve(model, data)
    sel = _selection(model, params)
    graph = _graph(model, x)
    out = logits(model, (x, y))
    check_labels(out, y)
    pred = out.argmax(1)
    points = []
    for e in eps_list:
        pset = PerturbationSet.ball(model, e, norm=p, relative=relative, params=sel)
        points.append(_certify_one(graph, model, x, y, pred, pset, method, intermediate=intermediate,
                                   batch_size=batch_size, time_budget=time_budget, eps=e, on_progress=on_progress))
    return CertifyResult(p, relative, tuple(sel.names), sel.numel, method, tuple(points))


def certify_set(model: nn.Module | str, data, perturbation: PerturbationSet | ConstraintSet, *,
                selection: Selection | None = None, method: str = "auto", intermediate: str = "crown",
                batch_size: int = 128, time_budget: float = 30.0,
                on_progress: Progress | None = None) -> CertifyPoint:
    """Certify one perturbation set: a :class:`PerturbationSet`, or an hwfault constraint set (a chip's
    covering set, a Box, an Ellipsoid, an LpBall) over ``selection``."""
    check_method(method, intermediate, time_budget)
    model, x, y = _resolve(model, data)
    if not isinstance(perturbation, PerturbationSet):
        if selection is None:
            raise ConstraintError("certify: a constraint set needs the selection it is laid out over")
        perturbation = PerturbationSet.from_constraint(selection, perturbation)
    graph = _graph(model, x)
    out = logits(model, (x, y))
    check_labels(out, y)
    pred = out.argmax(1)
    pt = _certify_one(graph, model, x, y, pred, perturbation, method, intermediate=intermediate,
                      batch_size=batch_size, time_budget=time_budget, eps=perturbation.description.get("eps"),
                      on_progress=on_progress)
    return CertifyPoint(pt.eps, pt.method, pt.certified_accuracy, pt.certified_stable, pt.clean_accuracy,
                        pt.mean_margin_lower, pt.seconds, pt.n, {**pt.extra, "set": perturbation.to_dict()})


def quantisation_safety(model: nn.Module | str, data, bits: int, *, per_channel: bool = False,
                        params: str | Sequence[str] | Selection | None = None, method: str = "auto",
                        batch_size: int = 128, time_budget: float = 30.0,
                        on_progress: Progress | None = None) -> CertifyPoint:
    """Quantisation safety: ``certified_stable`` is the share of inputs whose prediction is certified
    unchanged by any rounding of the selected weights inside the intN quantisation box (half a step
    per element, :func:`quantisation_set`); ``certified_accuracy`` also requires a correct prediction."""
    m = _model(model)
    pset = quantisation_set(m, bits, per_channel=per_channel, params=params)
    return certify_set(m, data, pset, method=method, batch_size=batch_size, time_budget=time_budget,
                       on_progress=on_progress)
