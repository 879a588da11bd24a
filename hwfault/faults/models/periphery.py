"""The analog periphery of in-memory matrix-vector products: IBM aihwkit's IO-managed forward pass.

A selected Linear or Conv layer is an analog tile (or a grid of tiles): its product of weights and
inputs is computed as aihwkit's RPUCuda computes a forward pass (``ForwardBackwardPassIOManaged::
forwardVector`` and ``TileModuleArray``), one input vector at a time; the bias is added digitally.
The aihwkit names of the parameters (``IOParameters``, ``MappingParameter``) are the field names.

Tiles. The weight matrix W (out x in; a convolution's (out_channels / groups) x (in_channels /
groups x kernel) per group, its inputs the patches under the kernel) is split into tiles of at most
``max_input_size`` inputs and ``max_output_size`` outputs, in balanced splits (aihwkit's
``get_split_sizes``: n = ceil(size / max) parts of size // n, the first size % n one larger; 0: no
split). Each tile t has its own periphery; the outputs of the tiles along the inputs are summed
digitally. Weight mapping (``weight_scaling_omega`` w > 0): the tile holds W_t / a with
a = max|W_t| / w (per output row with ``weight_scaling_columnwise``; a = 1 where the max is 0), and its
output is multiplied by a digitally; w = 0 (aihwkit's default): the tile holds W_t as it is.

One input vector x of a tile (n inputs), with ``noise_management`` abs_max (aihwkit's AbsMax):
alpha = max_j |x_j|; if alpha = 0 the output is 0 (aihwkit's short cut, no noise). With "none",
alpha is not used (1/alpha below reads 1; the inputs must lie in [-1, 1] or they clip). Bound
management rounds k = 0, 1, ... with the reduction r = 2^k:

    s     = (1 / alpha) / r                                   input scale (float32, as aihwkit)
    x'_j  = clip(d_in rint(s x_j / d_in), -1, 1)              DAC, d_in = 2 inp_res (inp_bound = 1)
    z_i   = sum_j W_ij x'_j                                   the analog product
    z_i  -= ir_drop c_i sum_j W_ij x'_j (1 - (1 - j/n)^2)     IR drop, first order (if ir_drop > 0):
            a_i = (n / ir_drop_g_ratio) sum_j |W_ij| |x'_j|,  c_i = a_i (a_i (0.05 a_i - 0.2) + 0.5)
    z_i  += out_noise xi_i,   xi_i ~ N(0, 1) i.i.d.           output noise (normalised units)
    q_i   = d_out rint(z_i / d_out)                           ADC, d_out = 2 out_bound out_res
    pass  = all_i |q_i| <= out_bound                          (aihwkit tests both signs)
    y'_i  = clip(q_i, -out_bound, out_bound)                  saturation

With ``bound_management`` iterative (aihwkit's Iterative), a vector that does not pass is computed
again at the next r (new DAC codes, new noise), until it passes or r > ``max_bm_factor`` or (with a
DAC) r > ``max_bm_res`` / d_in: with the defaults r = 1, 2, 4, 8, 16 at most. The last round's y' is
the tile's output, read back as y = a y' / s. With "none" there is one round (r = 1). A resolution
``res`` is 1/levels (aihwkit reads res > 1 as levels: 1/res); 0 turns its converter off, and
``out_bound`` = 0 is no bound. rint rounds half to even (C's rintf, torch.round).

Differences from aihwkit, on purpose: the mapping scale a is taken from the weights the layer holds
at each forward call (aihwkit fixes it when the weights are set; with programming noise in the
weights the two differ by the noise on max|W|); only the one-pass forward is modelled (``mv_type``
ONE_PASS), and ``inp_noise``, ``w_noise``, ``nm_thres``, asymmetries, non-linearities and
``out_noise_std`` are not. aihwkit's pure-torch tile (``TorchInferenceRPUConfig``) runs bound
management for a whole batch at once (a batch is re-run when any of its vectors saturates) and gives
zero-input vectors noise; its C++ tiles (here) run each vector on its own. With the noise off, a
Linear layer's outputs equal those of aihwkit 1.2.0's C++ tile value for value
(bench/periphery_vs_aihwkit.py); float32 sums in another order can put a value on the other side of
an ADC rounding boundary, one step.

Mechanism: the pre-hook marks the layer's input for the one call (:class:`AnalogInput`, a tensor
subclass); the layer's ``F.linear`` / ``F.conv{1,2,3}d`` on it is computed by :func:`analog_matmul`
and every other operation sees a plain tensor, so nothing outlives the call and the module is never
written to. The forward hook checks that the product was intercepted (a layer whose forward calls no
such function is an error, not a silent no-op). A convolution's patches are materialised a few
images at a time (at most :data:`PATCHES` values). Draws come from the chip's generator, per forward
call, in the order of the tiles and rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import HwfaultError
from .activation import ForwardFault

__all__ = ["Periphery", "AnalogInput", "analog_matmul", "tile_mvm", "split_sizes", "conv_patches"]

_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_TRANSPOSED = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
PATCHES = 1 << 24  # convolution patches (values) materialised at once; larger batches go a few images at a time


def _f32(v: float) -> float:
    return float(np.float32(v))


def resolution(res: float, span: float) -> float:
    """The converter step (float32 arithmetic, as aihwkit's ``checkAndSetRes``): ``res`` as 1/levels
    (a value > 1 as levels) times the range ``span``; 0 when off."""
    r = np.float32(res)
    if r <= 0:
        return 0.0
    if r > 1:
        r = np.float32(1) / r
    return float(r * np.float32(span))


def split_sizes(size: int, max_size: int) -> list[int]:
    """aihwkit's balanced tile split of ``size`` rows or columns into parts of at most ``max_size``."""
    if max_size <= 0 or size <= max_size:
        return [size]
    n = (size + max_size - 1) // max_size
    base, extra = divmod(size, n)
    return [base + (i < extra) for i in range(n)]


@dataclass(frozen=True)
class Periphery(ForwardFault):
    """The analog periphery of the selected Linear / Conv layers (aihwkit's IO-managed forward pass);
    the equations are in the module docstring."""

    inp_res: float = 1 / 126
    out_res: float = 1 / 510
    out_noise: float = 0.06
    out_bound: float = 12.0
    noise_management: str = "abs_max"
    bound_management: str = "iterative"
    max_bm_factor: int = 1000
    max_bm_res: float = 0.25
    ir_drop: float = 0.0
    ir_drop_g_ratio: float = 1.0 / 0.35 / 5e-6
    weight_scaling_omega: float = 0.0
    weight_scaling_columnwise: bool = False
    max_input_size: int = 512
    max_output_size: int = 512
    types: tuple = ("linear", "conv")
    params: tuple = ()
    kind = "periphery"
    severity_name = "output noise"

    def apply_input(self, name, x, afmt, state, gen):
        if isinstance(x, AnalogInput):
            raise HwfaultError(f"periphery: layer '{name}' is selected by two periphery faults (one analog tile each)")
        call = _Call(self, name, gen)
        state[name] = call
        return AnalogInput.wrap(x, call)

    def apply(self, name, out, afmt, state, gen):
        call = state.pop(name, None)
        if call is None or not call.done:
            raise HwfaultError(f"periphery: layer '{name}' computes no F.linear or F.conv1d/2d/3d on its input, so its "
                               "analog product cannot be modelled (select other layers with params)")
        return out

    def scaled(self, factor):
        return replace(self, out_noise=self.out_noise * factor)

    @property
    def severity(self):
        return self.out_noise

    def describe(self):
        keys = ("inp_res", "out_res", "out_noise", "out_bound", "noise_management", "bound_management",
                "max_bm_factor", "max_bm_res", "ir_drop", "ir_drop_g_ratio", "weight_scaling_omega",
                "weight_scaling_columnwise", "max_input_size", "max_output_size")
        return {"kind": self.kind, **{k: getattr(self, k) for k in keys}, "types": list(self.types),
                "params": list(self.params), "redrawn": "per inference"}

    # ------------------------------------------------------------------ the arithmetic, once per tile

    @property
    def steps(self) -> tuple[float, float]:
        """(d_in, d_out): the DAC and ADC steps (0: off)."""
        return resolution(self.inp_res, 2.0), resolution(self.out_res, 2.0 * self.out_bound)


def tile_mvm(p: Periphery, x: torch.Tensor, w: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One analog tile: the rows of ``x`` (M, n) through the tile holding ``w`` (m, n), float32, in
    the tile's normalised units and read back (y = y' / s, before the mapping scale); (M, m)."""
    d_in, d_out = p.steps
    bound = p.out_bound if p.out_bound > 0 else float("inf")
    nm = p.noise_management == "abs_max"
    bm = p.bound_management == "iterative" and p.out_bound > 0
    limit = _f32(np.float32(p.max_bm_res) / np.float32(d_in)) if d_in > 0 else float("inf")
    n = x.shape[1]
    out = x.new_zeros(x.shape[0], w.shape[0])
    if nm:
        alpha = x.abs().amax(dim=1)
        live = torch.nonzero(alpha > 0).reshape(-1)  # a zero vector reads 0 (aihwkit's short cut)
        inv = 1.0 / alpha
    else:
        live = torch.arange(x.shape[0], device=x.device)
        inv = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    pfac = None
    if p.ir_drop > 0:
        j = torch.arange(n, dtype=torch.float32, device=x.device)
        q = 1 - j / n
        pfac = 1 - q * q
    r = 1.0
    while live.numel():
        scale = inv[live] / r
        v = x[live] * scale[:, None]
        if d_in > 0:
            v = torch.round(v / d_in) * d_in
        v = v.clamp(-1.0, 1.0)
        z = v @ w.T
        if pfac is not None:
            a = (v.abs() @ w.abs().T) * _f32(n / p.ir_drop_g_ratio)
            c = a * (a * (0.05 * a - 0.2) + 0.5)
            z = z - c * (((v * pfac) @ w.T) * p.ir_drop)
        if p.out_noise > 0:
            z = z + p.out_noise * torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
        if d_out > 0:
            z = torch.round(z / d_out) * d_out
        passed = ((z <= bound) & (z >= -bound)).all(dim=1)
        z = z.clamp(-bound, bound)
        if bm:
            done = passed | (r > p.max_bm_factor) | (r > limit)
        else:
            done = torch.ones_like(passed)
        out[live[done]] = z[done] * (1.0 / scale[done])[:, None]
        live = live[~done]
        r *= 2.0
    return out


def analog_matmul(p: Periphery, x: torch.Tensor, w: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """``x @ w.T`` (x: (M, n), w: (m, n)) on the grid of analog tiles of ``p``, with the weight mapping
    and the digital sum over the tiles along the inputs; float32, (M, m)."""
    x, w = x.float(), w.float()
    ins, outs = split_sizes(w.shape[1], p.max_input_size), split_sizes(w.shape[0], p.max_output_size)
    y = None
    for xi, wi in zip(torch.split(x, ins, dim=1), torch.split(w, ins, dim=1)):
        parts = []
        for wt in torch.split(wi, outs, dim=0):
            if p.weight_scaling_omega > 0:
                wmax = wt.abs().amax(dim=1, keepdim=True) if p.weight_scaling_columnwise else wt.abs().max().reshape(1, 1)
                a = wmax / p.weight_scaling_omega
                a = torch.where(a == 0, torch.ones_like(a), a)
                parts.append(tile_mvm(p, xi, wt / a, gen) * a.reshape(1, -1))
            else:
                parts.append(tile_mvm(p, xi, wt, gen))
        part = torch.cat(parts, dim=1)
        y = part if y is None else y + part
    return y


def conv_patches(x: torch.Tensor, kernel, stride, padding, dilation) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The patches under a convolution's kernel: x (N, C, *S) -> (N * L, C * prod(kernel)), the columns
    in the order of ``weight.reshape(out, -1)``, and the output's spatial shape (L = its product).
    ``padding``: one (left, right) pair per spatial dimension (zeros)."""
    d = len(kernel)
    pads = [v for lr in reversed(padding) for v in lr]
    if any(pads):
        x = F.pad(x, pads)
    for i in range(d):
        x = x.unfold(2 + i, dilation[i] * (kernel[i] - 1) + 1, stride[i])
    if any(dl > 1 for dl in dilation):
        x = x[(Ellipsis, *[slice(None, None, dl) for dl in dilation])]
    n, spatial = x.shape[0], tuple(x.shape[2:2 + d])
    perm = (0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))
    return x.permute(perm).reshape(n * int(np.prod(spatial)), -1), spatial


def _tuple(v, d: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * d


@dataclass(eq=False)
class _Call:
    """One forward call of one layer on the tiles: computes the product, records that it did."""

    fault: Periphery
    name: str
    gen: torch.Generator | None
    done: bool = False

    def linear(self, x, weight, bias=None):
        y = analog_matmul(self.fault, x.reshape(-1, x.shape[-1]), weight, self.gen).reshape(*x.shape[:-1], -1)
        if bias is not None:
            y = y + bias.float()
        self.done = True
        return y.to(x.dtype)

    def conv(self, d, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        single = x.dim() == d + 1
        if single:
            x = x.unsqueeze(0)
        kernel = tuple(weight.shape[2:])
        stride, dilation = _tuple(stride, d), _tuple(dilation, d)
        if isinstance(padding, str):
            if padding == "valid":
                pads = [(0, 0)] * d
            else:  # "same": torch puts the odd pixel on the right
                tot = [dl * (k - 1) for dl, k in zip(dilation, kernel)]
                pads = [(t // 2, t - t // 2) for t in tot]
        else:
            pads = [(v, v) for v in _tuple(padding, d)]
        og, cg = weight.shape[0] // groups, weight.shape[1]
        k = cg * int(np.prod(kernel))
        spatial = [(size + lo + hi - dl * (kk - 1) - 1) // st + 1
                   for size, (lo, hi), dl, kk, st in zip(x.shape[2:], pads, dilation, kernel, stride)]
        chunk = max(1, PATCHES // max(1, int(np.prod(spatial)) * k * groups))  # images whose patches fit at once
        outs = []
        for i in range(0, x.shape[0], chunk):
            cols, sp = conv_patches(x[i:i + chunk], kernel, stride, pads, dilation)
            ys = [analog_matmul(self.fault, cols[:, g * k:(g + 1) * k], weight[g * og:(g + 1) * og].reshape(og, -1),
                                self.gen) for g in range(groups)]
            outs.append(torch.cat(ys, dim=1).reshape(-1, *sp, og * groups))
        y = torch.cat(outs).permute(0, d + 1, *range(1, d + 1))
        if bias is not None:
            y = y + bias.float().reshape(1, -1, *([1] * d))
        self.done = True
        y = y.to(x.dtype).contiguous()
        return y[0] if single else y


def _plain(a):
    return a.as_subclass(torch.Tensor) if isinstance(a, AnalogInput) else a


class AnalogInput(torch.Tensor):
    """A layer's input marked for one forward call on analog tiles: ``F.linear`` / ``F.conv{1,2,3}d``
    with it as the input run on the tiles (:func:`analog_matmul`); ``F.pad`` (a padded convolution)
    keeps the mark; every other operation returns plain tensors."""

    _hwfault_call: _Call | None = None

    @staticmethod
    def wrap(x: torch.Tensor, call: _Call) -> AnalogInput:
        with torch._C.DisableTorchFunctionSubclass():
            t = x.as_subclass(AnalogInput)
        t._hwfault_call = call
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        call = first._hwfault_call if isinstance(first, AnalogInput) else None
        with torch._C.DisableTorchFunctionSubclass():
            pa = tuple(_plain(a) for a in args)
            pk = {k: _plain(v) for k, v in kwargs.items()}
            if call is not None:
                if func is F.linear:
                    return call.linear(*pa, **pk)
                if func in _CONV:
                    return call.conv(_CONV[func], *pa, **pk)
                if func in _TRANSPOSED:
                    raise HwfaultError(f"periphery: layer '{call.name}' is a transposed convolution, which is not "
                                       "modelled on analog tiles (select other layers with params)")
            out = func(*pa, **pk)
        if call is not None and func is F.pad and isinstance(out, torch.Tensor):
            return AnalogInput.wrap(out, call)
        return out
