"""Element-wise activations: ReLU, LeakyReLU (0 <= slope <= 1), Sigmoid, Tanh, SiLU, GELU (exact and
tanh-approximate).

ReLU gets the CROWN planes (the chord above, the better of the two pieces below); sigmoid and tanh
get parallel planes at the chord slope (:mod:`..relax`); SiLU and GELU, which dip below zero to one
minimum, get parallel planes at the chord slope too, with the extremes of f(x) - k x found piece by
piece (:func:`..relax.smooth_planes`), and interval bounds that take the minimum into account.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..relax import SMOOTH, relu_planes, smooth_planes, smooth_range, sshape_planes, sum_rest
from .base import Call, Op, register_aten, register_function, register_module, zero_const


class Activation(Op):
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
        return relu_planes(l, u, self.leak) if self.kind == "relu" else sshape_planes(l, u, self.kind)

    def backward(self, lam, ins, w):
        if self.kind == "relu":
            return self._backward_relu(lam, *ins[0])
        sl, il, su, iu = (t.unsqueeze(1) for t in self.planes(*ins[0]))
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        const = sum_rest(pos * il + neg * iu, 2)
        return [pos * sl + neg * su], const

    def _backward_relu(self, lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
        """ReLU/LeakyReLU: stable neurons pass lam times their slope (dense); the few unstable ones are
        gathered and get the lower plane for lam >= 0, the chord for lam < 0."""
        b, S = lam.shape[:2]
        lf, uf = l.reshape(b, -1), u.reshape(b, -1)
        slope = torch.where(lf >= 0, 1.0, self.leak).to(lam.dtype)                  # stable slopes
        flat = lam.reshape(b, S, -1)
        out = flat * slope.unsqueeze(1)
        const = zero_const(lam)
        unstable = (lf < 0) & (uf > 0)
        if bool(unstable.any()):
            bi, ji = torch.nonzero(unstable, as_tuple=True)
            sl, _, su, iu = relu_planes(lf[bi, ji], uf[bi, ji], self.leak)             # (n,)
            lam_u = flat[bi, :, ji]                                                    # (n, S)
            neg = lam_u.clamp(max=0)
            out[bi, :, ji] = torch.where(lam_u >= 0, lam_u * sl.unsqueeze(1), lam_u * su.unsqueeze(1))
            const = const.index_add(0, bi, neg * iu.unsqueeze(1))
        return [out.reshape(lam.shape)], const


class SmoothActivation(Activation):
    """SiLU, GELU or tanh-approximate GELU (kind 'silu', 'gelu', 'gelu_tanh'): not monotone, so the
    interval bounds use the minimum; the planes (a few dozen bisection steps per neuron) are kept for
    the bounds they were computed on, as every later backward pass reuses them."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self._memo = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return SMOOTH[self.kind].f(x)

    def ibp(self, ins, w):
        return smooth_range(*ins[0], self.kind)

    def planes(self, l, u):
        memo = self._memo
        if memo is not None and memo[0]() is l and memo[1]() is u and memo[2] == (l._version, u._version):
            return memo[3]
        p = smooth_planes(l, u, self.kind)
        self._memo = (weakref.ref(l), weakref.ref(u), (l._version, u._version), p)
        weakref.finalize(l, self._forget)
        return p

    def _forget(self) -> None:
        """Drop the planes once the bounds they were computed on are gone."""
        if self._memo is not None and self._memo[0]() is None:
            self._memo = None


# ============================================================================ builders


def _fixed(kind: str):
    def build(call: Call):
        return Activation(kind), call.tensor_args
    return build


register_module(nn.ReLU)(_fixed("relu"))
register_module(nn.Sigmoid)(_fixed("sigmoid"))
register_module(nn.Tanh)(_fixed("tanh"))


@register_module(nn.LeakyReLU)
def _leaky_module(call: Call):
    slope = call.module.negative_slope
    if not 0 <= slope <= 1:
        raise call.unsupported(f" (negative slope {slope})")
    return Activation("relu", float(slope)), call.tensor_args


@register_function(torch.relu, F.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, "relu", "sigmoid", "tanh")
def _activation_function(call: Call):
    if len(call.tensor_args) != 1:
        raise call.unsupported()
    return Activation(call.fname), call.tensor_args


@register_aten("relu", "sigmoid", "tanh")
def _activation_aten(call: Call):
    return Activation(call.node.target.overloadpacket.__name__), [call.x]


@register_aten("leaky_relu")
def _leaky_aten(call: Call):
    slope = float(call.arg(1, 0.01))
    if not 0 <= slope <= 1:
        raise call.unsupported(f" (negative slope {slope})")
    return Activation("relu", slope), [call.x]


# SiLU and GELU


def _gelu_kind(approximate) -> str | None:
    return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)


@register_module(nn.SiLU)
def _silu_module(call: Call):
    return SmoothActivation("silu"), call.tensor_args


@register_module(nn.GELU)
def _gelu_module(call: Call):
    kind = _gelu_kind(call.module.approximate)
    if kind is None:
        raise call.unsupported(f" (approximate '{call.module.approximate}')")
    return SmoothActivation(kind), call.tensor_args


@register_function(F.silu, F.gelu, "silu", "gelu")
def _smooth_function(call: Call):
    """F.silu(x, inplace=False) and F.gelu(x, approximate='none'|'tanh'), positional or by keyword."""
    name = "inplace" if call.fname == "silu" else "approximate"
    extra = dict(zip([name], call.node.args[1:]), **call.node.kwargs)
    setting = extra.pop(name, False if name == "inplace" else "none")
    kind = "silu" if name == "inplace" else _gelu_kind(setting)
    if len(call.tensor_args) != 1 or len(call.node.args) > 2 or extra or kind is None:
        raise call.unsupported()
    return SmoothActivation(kind), call.tensor_args


@register_aten("silu", "silu_", "gelu", "gelu_")
def _smooth_aten(call: Call):
    name = call.node.target.overloadpacket.__name__.rstrip("_")
    kind = "silu" if name == "silu" else _gelu_kind(call.arg(1, "none"))
    if kind is None:
        raise call.unsupported(f" (approximate '{call.arg(1)}')")
    return SmoothActivation(kind), [call.x]
