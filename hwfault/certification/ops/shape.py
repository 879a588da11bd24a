"""Shape and sum operations: reshape/flatten/view (and the no-ops Identity, eval-mode Dropout, clone,
contiguous), fixed linear maps with non-negative coefficients (average pooling), and sums with
scalar coefficients (residual additions, subtraction, scalar affine maps)."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import nn

from ..relax import sum_rest
from .base import Call, Op, register_aten, register_function, register_module, zero_const


class PositiveLinear(Op):
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
        return [g.reshape(b, S, *in_shape)], zero_const(lam)


class Reshape(Op):
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, xs, w):
        return xs[0].reshape(xs[0].shape[0], *self.out_shape)

    def ibp(self, ins, w):
        l, u = ins[0]
        return l.reshape(l.shape[0], *self.out_shape), u.reshape(u.shape[0], *self.out_shape)

    def backward(self, lam, ins, w):
        return [lam.reshape(*lam.shape[:2], *self.in_shape)], zero_const(lam)


class Sum(Op):
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
        const = sum_rest(lam, 2) * self.constant if self.constant else zero_const(lam)
        return [lam * c for c in self.coefs], const


# ============================================================================ builders


@register_module(nn.Flatten, nn.Identity)
def _reshape_module(call: Call):
    return Reshape(call.in_shape(), call.out_shape), call.tensor_args


@register_module(nn.modules.dropout._DropoutNd)
def _dropout_module(call: Call):
    if call.module.training:
        raise call.unsupported()
    return Reshape(call.in_shape(), call.out_shape), call.tensor_args


@register_function("view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", torch.flatten, torch.reshape)
def _reshape_function(call: Call):
    if len(call.tensor_args) != 1:
        raise call.unsupported()
    return Reshape(call.in_shape(), call.out_shape), call.tensor_args


@register_aten("flatten", "view", "reshape", "_unsafe_view", "clone", "contiguous", "alias", "squeeze",
               "unsqueeze", "dropout")
def _reshape_aten(call: Call):
    if call.node.target.overloadpacket.__name__ == "dropout" and call.arg(2, False):
        raise call.unsupported(" (training mode)")
    return Reshape(call.shape_of(call.x), call.out_shape), [call.x]


def arith(kind: str, call: Call) -> tuple[Op, list]:
    """add / sub / mul / div / neg with scalar operands or (add, sub) two traced tensors, as a :class:`Sum`."""
    node = call.node
    args = list(node.args)
    alpha = node.kwargs.get("alpha", 1)
    if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)):
        raise call.unsupported()
    is_t = [call.is_tensor(a) for a in args]
    nums = [isinstance(a, (int, float)) and not isinstance(a, bool) for a in args]
    if not all(t or n for t, n in zip(is_t, nums)):
        raise call.unsupported(" (tensor constant operand)")
    if kind == "neg":
        return Sum((-1.0,)), [args[0]]
    a, b = args
    if kind in ("add", "sub"):
        sign = float(alpha) * (1.0 if kind == "add" else -1.0)
        if is_t[0] and is_t[1]:
            return Sum((1.0, sign)), [a, b]
        if is_t[0]:
            return Sum((1.0,), sign * float(b)), [a]
        return Sum((sign,), float(a)), [b]
    if is_t[0] and is_t[1]:
        raise call.unsupported(" (product of two tensors)")
    if kind == "mul":
        t, c = (a, float(b)) if is_t[0] else (b, float(a))
        return Sum((c,)), [t]
    if not is_t[0]:
        raise call.unsupported(" (division by a tensor)")
    return Sum((1.0 / float(b),)), [a]


def _arith_builder(kind: str):
    def build(call: Call):
        return arith(kind, call)
    return build


_ARITH = {"add": (operator.add, torch.add, operator.iadd), "sub": (operator.sub, torch.sub, operator.isub),
          "mul": (operator.mul, torch.mul), "div": (operator.truediv, torch.div), "neg": (operator.neg, torch.neg)}
for _kind, _targets in _ARITH.items():
    register_function(*_targets, _kind)(_arith_builder(_kind))   # the callables and the tensor method
    register_aten(_kind)(_arith_builder(_kind))
del _kind, _targets
