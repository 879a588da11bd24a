"""Eval-mode BatchNorm1d/2d/3d: a per-channel affine map of fixed running statistics, with gamma and
beta perturbable."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ModelError
from ..relax import chord_term, widen
from ..sets import DTYPE, _Weights
from .base import Call, Op, register_aten, register_module


class BatchNorm(Op):
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
        return widen(yc - yr, -1), widen(yc + yr, 1)

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
                lam_in, c = chord_term(lam_in, lam.abs() * v(rg), l, u,
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


@register_module(nn.modules.batchnorm._BatchNorm)
def _batchnorm_module(call: Call):
    mod, pre = call.module, call.prefix
    if mod.training or mod.running_mean is None:
        raise ModelError(f"certify: {call.what} at {call.node.name} normalises with batch statistics "
                         "(training mode or no running stats); call model.eval()")
    return BatchNorm(*call.names(), f"{pre}running_mean", f"{pre}running_var", mod.eps), call.tensor_args


@register_aten("batch_norm")
def _batchnorm_aten(call: Call):
    if call.arg(5, False):
        raise ModelError(f"certify: aten.batch_norm at {call.node.name} normalises with batch statistics "
                         "(training mode); export the model in eval mode")
    return BatchNorm(call.attr(call.arg(1)), call.attr(call.arg(2)), call.attr(call.arg(3)), call.attr(call.arg(4)),
                     float(call.arg(7, 1e-5))), [call.x]
