"""Pooling: MaxPool1d/2d (planes from the window's bounds) and AvgPool1d/2d, AdaptiveAvgPool1d/2d
(fixed non-negative linear maps, :class:`~.shape.PositiveLinear`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..sets import DTYPE
from .base import Call, Op, ntuple, register_aten, register_module, unsupported_error
from .shape import PositiveLinear


class MaxPool(Op):
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
            raise unsupported_error(f"MaxPool{dims}d", f" (configuration {self.args})")
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


# ============================================================================ builders


@register_module(nn.MaxPool1d, nn.MaxPool2d)
def _maxpool_module(call: Call):
    mod = call.module
    d = 1 if isinstance(mod, nn.MaxPool1d) else 2
    if mod.return_indices:
        raise call.unsupported(" (return_indices)")
    k = ntuple(mod.kernel_size, d)
    s = ntuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
    return MaxPool(d, k, s, ntuple(mod.padding, d), ntuple(mod.dilation, d), mod.ceil_mode,
                   call.in_shape(), call.out_shape), call.tensor_args


@register_module(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
def _avgpool_module(call: Call):
    return PositiveLinear(call.module), call.tensor_args


@register_aten("max_pool1d", "max_pool2d")
def _maxpool_aten(call: Call):
    d = int(call.node.target.overloadpacket.__name__[-2])
    k = ntuple(call.arg(1), d)
    st = call.arg(2, None)
    st = k if not st else ntuple(st, d)
    return MaxPool(d, k, st, ntuple(call.arg(3, 0), d), ntuple(call.arg(4, 1), d), bool(call.arg(5, False)),
                   call.shape_of(call.x), call.out_shape), [call.x]


@register_aten("avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d")
def _avgpool_aten(call: Call):
    fn, rest = getattr(torch.ops.aten, call.node.target.overloadpacket.__name__).default, tuple(call.node.args[1:])
    return PositiveLinear(lambda t: fn(t, *rest)), [call.x]
