"""Affine layers: Linear and Conv1d/2d/3d (any stride, padding, dilation, groups), y = W x + b with
W and b possibly perturbed.

IBP in centre/radius form: y_c = W_c x_c + b_c, y_r = |W_c| x_r + R (|x_c| + x_r) + r_b for a box of
radius R; for a weighted L2 ball ||D / sigma||_2 <= rho, |D_i . x| <= rho sqrt(sum_j sigma_ij^2 m_j^2)
with m = max(|l|, |u|) (Cauchy-Schwarz per output). Backward: the centre part is back-substituted
(Conv through the transposed convolution); the product D x is bounded by its dual norm: box:
lam^T D x >= -sum_j g_j |x_j| with g = R^T |lam|, and |x_j| <= a_j x_j + c_j (the chord of |x| over
[l_j, u_j], exact where the sign is known, e.g. after a ReLU), which keeps the bound linear in x;
L2: lam^T D x >= -rho ||sigma (.) G||_F with |G| bounded from ||lam|| and max ||x||.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..relax import chord_term, widen
from .base import Call, Op, ntuple, register_aten, register_module, unsupported_error, zero_const


def ball_term(lam2: torch.Tensor, s2oc: torch.Tensor, m2: torch.Tensor, groups: int) -> torch.Tensor:
    """sqrt(sum_{o,c} lam2_o s2_{oc} m2_c) within groups: lam2 (b,S,O), s2oc (O, C/g), m2 (b, C)."""
    b, S, O = lam2.shape
    cg = s2oc.shape[1]
    t = torch.einsum("bsgo,goc,bgc->bs", lam2.reshape(b, S, groups, O // groups),
                     s2oc.reshape(groups, O // groups, cg), m2.reshape(b, groups, cg))
    return t.clamp(min=0).sqrt()


class Affine(Op):
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
        return widen(yc - yr, -1), widen(yc + yr, 1)

    def backward(self, lam, ins, w):
        l, u = ins[0]
        b, S = lam.shape[:2]
        in_shape = tuple(l.shape[1:])
        W = w.centre[self.weight]
        lam_in = self.transpose(lam, W, in_shape)
        const = zero_const(lam)
        R = w.radius.get(self.weight)
        if R is not None:
            r_row = w.row_radius.get(self.weight)
            g = (self.transpose(lam.abs(), R, in_shape) if r_row is None
                 else self.transpose_rows(lam.abs(), r_row, in_shape))
            lam_in, c = chord_term(lam_in, g, l, u)
            const = const + c
        balls = w.balls.get(self.weight, ())
        if balls:
            m2 = self.channel_sum(torch.maximum(l.abs(), u.abs()) ** 2, 1)      # (b, C)
            lam2 = self.channel_sum(lam * lam, 2)                                  # (b, S, O)
            for rho, s2 in balls:
                const = const - rho * ball_term(lam2, self.kernel_sum(s2), m2, self.groups)
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


class Linear(Affine):
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


class Conv(Affine):
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


def conv_padding(mod: nn.modules.conv._ConvNd, node_name: str) -> tuple[int, ...]:
    if mod.padding_mode != "zeros":
        raise unsupported_error(type(mod).__name__, f" (padding_mode '{mod.padding_mode}')", node_name)
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return (0,) * len(mod.kernel_size)
        total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
        if any(t % 2 for t in total):
            raise unsupported_error(type(mod).__name__, " (asymmetric 'same' padding)", node_name)
        return tuple(t // 2 for t in total)
    return tuple(mod.padding)


# ============================================================================ builders


@register_module(nn.Linear)
def _linear_module(call: Call):
    return Linear(*call.names()), call.tensor_args


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(call: Call):
    mod = call.module
    d = len(mod.kernel_size)
    return Conv(*call.names(), d, tuple(mod.kernel_size), tuple(mod.stride), conv_padding(mod, call.node.name),
                tuple(mod.dilation), mod.groups), call.tensor_args


@register_aten("linear")
def _linear_aten(call: Call):
    return Linear(call.attr(call.arg(1)), call.attr(call.arg(2))), [call.x]


@register_aten("conv1d", "conv2d", "conv3d")
def _conv_aten(call: Call):
    d = int(call.node.target.overloadpacket.__name__[4])
    w = call.attr(call.arg(1))
    kernel = tuple(call.param_shape(w)[2:])
    padding = call.arg(4, 0)
    if isinstance(padding, str):
        mod = type("Conv", (), {"padding_mode": "zeros", "padding": padding, "kernel_size": kernel,
                                "dilation": ntuple(call.arg(5, 1), d)})
        padding = conv_padding(mod, call.node.name)
    return Conv(w, call.attr(call.arg(2)), d, kernel, ntuple(call.arg(3, 1), d), ntuple(padding, d),
                ntuple(call.arg(5, 1), d), int(call.arg(6, 1))), [call.x]
