"""Proving that a fault leaves an input's top-1 class unchanged, so a campaign need not recompute it.

A trial's forward pass (:mod:`.incremental`) knows, at a value ``v`` it has just computed, the exact
change ``d = v_faulty - v_clean`` of every input. When all of the fault's effect flows through ``v``
(``v`` cuts the faulty layer from the logits) and what follows ``v`` is fault-free, the change of an
input's logits is at most ``G_v * ||d||_2`` (the Euclidean norm over that input's elements), where
``G_v`` is a Lipschitz constant of the rest of the network, composed backwards from the logits over
the traced graph (:meth:`Gains.of`):

- Linear: its spectral norm; Conv: the operator norm of the circular convolution on a grid where
  nothing wraps (the largest singular value of the kernel's Fourier transform; Sedghi et al. 2019)
  when that is cheap, else the smaller of ``sqrt(kernel size) * ||W as (out, in*k)||_2`` and the sum
  over kernel offsets of ``||W[:, :, offset]||_2`` (zero padding and strides only shrink), with a
  following eval-mode batch norm folded into the weight first;
- batch norm (eval): ``max |gamma| / sqrt(var + eps)``; activations: their Lipschitz constants
  (ReLU 1, GELU 1.13, SiLU 1.1, sigmoid 0.25, ...); reshapes, slices and concatenations: 1;
- pooling: ``sqrt(m / k)`` for an average over ``k`` elements where each element lies in at most ``m``
  windows (``sqrt(m)`` for a maximum); a sum: the sum of its inputs' constants.

An input whose golden logits ``z`` have top class ``t`` and runner-up margin ``z_t - z_j`` keeps its top
class for sure when that margin exceeds ``sqrt(2) * G_v * ||d||_2 + tau`` (``|dz_t| + |dz_j| <= sqrt(2)
||dz||_2``; ``tau`` a float32 round-off allowance); its top-1 class, its correctness and the
finiteness of its outputs are then the golden run's. Such inputs are dropped from the rest of the
trial's forward pass; accuracy, SDC and DUE stay exact and the trial's loss is not computed.

The constants depend on the weights only; each is computed once. A value followed by anything else
(layer norms, attention, products of two activations) has none, and trials there evaluate every input.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

_LIPSCHITZ_MODULES = {nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Hardtanh: 1.0, nn.Tanh: 1.0, nn.Identity: 1.0, nn.Dropout: 1.0,
                      nn.GELU: 1.13, nn.SiLU: 1.1, nn.Mish: 1.1, nn.Sigmoid: 0.25, nn.Hardswish: 1.5,
                      nn.Hardsigmoid: 1 / 6 + 1e-6, nn.Softplus: 1.0, nn.Flatten: 1.0}
_LIPSCHITZ_FUNCTIONS = {F.relu: 1.0, torch.relu: 1.0, F.relu6: 1.0, F.hardtanh: 1.0, torch.tanh: 1.0, F.tanh: 1.0,
                        F.gelu: 1.13, F.silu: 1.1, torch.sigmoid: 0.25, F.sigmoid: 0.25, F.hardswish: 1.5,
                        F.dropout: 1.0, torch.flatten: 1.0, torch.reshape: 1.0, torch.permute: 1.0,
                        torch.transpose: 1.0, operator.getitem: 1.0}
_LIPSCHITZ_METHODS = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "flatten": 1.0, "view": 1.0, "reshape": 1.0,
                      "permute": 1.0, "transpose": 1.0, "contiguous": 1.0}
_POOL_FUNCTIONS = {F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
                   F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d}
_SUMS = {operator.add, torch.add, operator.sub, torch.sub}
_SCALES = {operator.mul: False, torch.mul: False, operator.truediv: True, torch.div: True}
SAFETY = 1.001   # constants (float32 SVDs) and norms are widened by this factor
TAU = 1e-4       # round-off allowance: tau = TAU * (1 + max |z|) per input


class _NoGain(Exception):
    """A node whose Lipschitz constant is not known."""


class Gains:
    """Lipschitz constants ``G_v`` (value -> logits, Euclidean per input) of a traced model, on demand.

    ``shapes``: each node's value shape (None for non-tensors); the output must be (batch, classes)."""

    def __init__(self, gm: fx.GraphModule, nodes: list, shapes: dict):
        self.modules = dict(gm.named_modules())
        self.shapes = shapes
        self._g: dict = {}
        out = nodes[-1]
        res = out.args[0] if out.op == "output" else None
        if isinstance(res, (tuple, list)):
            res = res[0] if len(res) == 1 else None
        self.logits = res if isinstance(res, fx.Node) and _rank(shapes.get(res)) == 2 else None

    def of(self, node) -> float | None:
        """``G_node``, or None when something after it has no known constant."""
        if self.logits is None or self.shapes.get(node) is None:
            return None
        if node not in self._g:
            self._g[node] = None  # (a cycle cannot occur in a graph; this marks work in progress)
            try:
                self._g[node] = self._compute(node)
            except _NoGain:
                pass
        return self._g[node]

    def warm(self) -> None:
        """Compute every constant now (from the logits backwards: no deep recursion), so that the
        campaign's trials do not pay for them: they depend on the fault-free weights only."""
        if self.logits is None:
            return
        for node in reversed(list(self.shapes)):
            self.of(node)

    def _compute(self, node) -> float:
        if node is self.logits:
            return 1.0
        total, reached = 0.0, False
        for user in node.users:
            if user.op == "output":
                raise _NoGain  # a value returned beside the logits
            if self.shapes.get(user) is None:
                continue  # a size or a shape: faults do not change it
            lip, after = self._step(user, node)
            g = self.of(after)
            if g is None:
                raise _NoGain
            total += lip * g
            reached = True
        if not reached:
            raise _NoGain
        return total

    def _step(self, user, node) -> tuple[float, object]:
        """(Lipschitz constant of ``user`` in ``node``, the value it leads to): a Conv followed only by
        an eval-mode batch norm is taken with the norm folded in, leading to the norm's output."""
        times = sum(1 for a in _flat_args(user) if a is node)
        if user.op == "call_module":
            m = self.modules[user.target]
            if len(user.args) != 1 or user.kwargs:
                raise _NoGain
            if isinstance(m, nn.Linear):
                return _spectral(m.weight.detach().double()), user
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                bn = _sole_norm(user, self.modules)
                scale = None if bn is None else _bn_scale(self.modules[bn.target])
                return _conv_lipschitz(m, scale, self.shapes[node]), (user if bn is None else bn)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return float(_bn_scale(m).max()), user
            if type(m) in _LIPSCHITZ_MODULES:
                return _LIPSCHITZ_MODULES[type(m)], user
            if isinstance(m, nn.LeakyReLU):
                return max(1.0, abs(m.negative_slope)), user
            if isinstance(m, nn.ELU):
                return max(1.0, abs(m.alpha)), user
            if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
                return _pool_lipschitz(m, self.shapes[node]), user
            if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
                return _adaptive_avg(self.shapes[node], self.shapes[user]), user
            raise _NoGain
        if user.op == "call_function":
            t = user.target
            if t in _SUMS and all(isinstance(a, (fx.Node, int, float)) for a in user.args) \
                    and user.kwargs.get("alpha", 1) == 1:
                return float(times), user
            if t in (torch.cat, torch.concat) and times:
                return float(times), user
            if t in _SCALES:
                other = [a for a in user.args if a is not node]
                if times != 1 or user.kwargs or len(other) != 1 or not isinstance(other[0], (int, float)) \
                        or (_SCALES[t] and user.args[0] is not node) or other[0] == 0:
                    raise _NoGain
                return (1.0 / abs(other[0])) if _SCALES[t] else abs(float(other[0])), user
            if t in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d) and user.args[0] is node:
                return _adaptive_avg(self.shapes[node], self.shapes[user]), user
            if t in _POOL_FUNCTIONS and times == 1 and user.args[0] is node and len(user.args) <= 5:
                try:
                    mod = _POOL_FUNCTIONS[t](*user.args[1:], **user.kwargs)
                except TypeError:
                    raise _NoGain from None
                return _pool_lipschitz(mod, self.shapes[node]), user
            if t in _LIPSCHITZ_FUNCTIONS and times == 1 and user.args[0] is node:
                return _LIPSCHITZ_FUNCTIONS[t], user
            raise _NoGain
        if user.op == "call_method" and user.target in _LIPSCHITZ_METHODS and times == 1 and user.args[0] is node:
            return _LIPSCHITZ_METHODS[user.target], user
        raise _NoGain


def _flat_args(node) -> list:
    out = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: out.append(a))
    return out


def _rank(shape) -> int:
    return -1 if shape is None else len(shape)


def _sole_norm(conv_node, modules: dict):
    """The eval-mode batch norm that alone reads a Conv's output, if so."""
    users = list(conv_node.users)
    if len(users) == 1 and users[0].op == "call_module" and len(users[0].args) == 1:
        m = modules[users[0].target]
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.running_var is not None:
            return users[0]
    return None


def _bn_scale(m) -> torch.Tensor:
    if m.training or m.running_var is None:
        raise _NoGain
    s = 1.0 / torch.sqrt(m.running_var.detach().double() + m.eps)
    return s * m.weight.detach().double().abs() if m.weight is not None else s


def _spectral(w: torch.Tensor) -> float:
    """The largest singular value, computed in float32 (relative error about 1e-6, inside ``SAFETY``)."""
    return float(torch.linalg.matrix_norm(w.float(), 2)) * SAFETY if w.numel() else 0.0


def _conv_lipschitz(m, scale: torch.Tensor | None, shape_in) -> float:
    """A bound on the Euclidean operator norm of a zero-padded Conv (times ``scale`` per output channel)."""
    if m.padding_mode != "zeros":
        raise _NoGain  # reflect/circular padding repeats inputs
    w = m.weight.detach().double()
    if scale is not None:
        w = w * scale.view(-1, *([1] * (w.ndim - 1)))
    cout_g = w.shape[0] // m.groups
    if all(k == 1 for k in w.shape[2:]):  # pointwise: one matrix at every position (strides only subsample)
        return max(_spectral(w[g * cout_g:(g + 1) * cout_g].flatten(1)) for g in range(m.groups))
    exact = _conv_fourier(m, w, shape_in)
    if exact is not None:  # (the simple bounds below hold for the circular convolution too: never smaller)
        return exact
    k = math.prod(w.shape[2:])
    flat = max(_spectral(w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1)) for g in range(m.groups))
    taps = w.flatten(2)
    per_tap = sum(max(_spectral(taps[g * cout_g:(g + 1) * cout_g, :, j]) for g in range(m.groups)) for j in range(k))
    return min(math.sqrt(k) * flat, per_tap)


FOURIER_MAX_FLOPS = 1.5e9  # the exact bound costs about (frequencies x in^2 x out) flops; beyond, the simple one


def _conv_fourier(m, w: torch.Tensor, shape_in) -> float | None:
    """The operator norm of the circular convolution on a grid large enough that nothing wraps (the
    zero-padded convolution is a restriction of it, strides subsample it): the largest singular value
    of the kernel's discrete Fourier transform over the grid's frequencies (Sedghi et al., ICLR 2019),
    computed in float32 (its relative error, about 1e-6, is far inside ``SAFETY``)."""
    d = w.ndim - 2
    if shape_in is None or len(shape_in) != d + 2 or d not in (1, 2, 3):
        return None
    dil = _tuple(m.dilation, d)
    if any(x != 1 for x in dil):  # the kernel with its holes
        big = torch.zeros(*w.shape[:2], *[(k - 1) * q + 1 for k, q in zip(w.shape[2:], dil)], dtype=w.dtype)
        big[(slice(None), slice(None), *[slice(None, None, q) for q in dil])] = w
        w = big
    grid = [n + k - 1 for n, k in zip(shape_in[2:], w.shape[2:])]
    freqs = math.prod(grid[:-1]) * (grid[-1] // 2 + 1)
    cout_g, cin_g = w.shape[0] // m.groups, w.shape[1]
    if freqs * min(cout_g, cin_g) ** 2 * max(cout_g, cin_g) * m.groups > FOURIER_MAX_FLOPS:
        return None
    dims = tuple(range(2, 2 + d))
    spec = torch.fft.rfftn(w.float(), s=grid, dim=dims)  # (out, in/groups, *freqs); real kernels: half the spectrum
    spec = spec.permute(*range(2, 2 + d), 0, 1).reshape(-1, m.groups, cout_g, cin_g)
    return float(torch.linalg.matrix_norm(spec, 2).max()) * SAFETY


def _pool_lipschitz(m, shape_in) -> float:
    d = len(shape_in) - 2
    k = _tuple(m.kernel_size, d)
    s = _tuple(m.stride if m.stride is not None else m.kernel_size, d)
    dil = _tuple(getattr(m, "dilation", 1), d)
    mult = math.prod(kk if dd != 1 else math.ceil(kk / ss) for kk, ss, dd in zip(k, s, dil))
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        if m.return_indices:
            raise _NoGain
        return math.sqrt(mult)
    if getattr(m, "divisor_override", None):
        return math.sqrt(mult) * math.prod(k) / m.divisor_override
    return math.sqrt(mult / math.prod(k)) if m.count_include_pad and not m.ceil_mode else math.sqrt(mult)


def _adaptive_avg(shape_in, shape_out) -> float:
    if shape_out is None or len(shape_in) != len(shape_out):
        raise _NoGain
    k = 1
    for a, b in zip(shape_in[2:], shape_out[2:]):
        if b == 0 or a % b:
            raise _NoGain  # uneven windows
        k *= a // b
    return 1.0 / math.sqrt(k)


def _tuple(v, d: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d


def proven(gain: float, norms: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Which inputs keep their top-1 class for sure: ``norms`` (batch,) bound the Euclidean norm of the
    change of a value whose constant is ``gain``; ``logits`` (batch, classes) are the golden logits of
    the same inputs. Inputs with a non-finite change are never proven."""
    z = logits.detach().double()
    top2 = z.topk(2, dim=1).values if z.shape[1] > 1 else torch.cat([z, z - math.inf], 1)
    margin = top2[:, 0] - top2[:, 1]
    b = norms.detach().double() * (gain * SAFETY * math.sqrt(2.0))
    tau = TAU * (1.0 + z.abs().amax(1))
    return (margin > b + tau) & torch.isfinite(b) & torch.isfinite(z).all(1)


def change_norms(change: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each input's change (dimension 0 is the batch)."""
    return change.detach().double().flatten(1).norm(dim=1) if change.ndim > 1 else change.detach().double().abs()


def input_norms(m: nn.Module, x) -> torch.Tensor | None:
    """Per input, the Euclidean norm of each input channel of a Linear/Conv layer's input (batch, C)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        return None
    if isinstance(m, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).norm(dim=1)
    return x.flatten(2).norm(dim=2) if x.ndim > 2 else x.abs()


def source_norms(m: nn.Module, norms: torch.Tensor, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per input, a bound on the Euclidean norm of a Linear/Conv layer's output change when its weight
    changes by ``delta`` at flat ``index``: ``sum |d| * ||input channel of d||_2`` (``norms``: the
    layer's :func:`input_norms`); each weight meets each input element at most once per output."""
    w = m.weight
    per_in = w[0, 0].numel() if w.ndim > 2 else 1
    chan = (index % w[0].numel()) // per_in  # the input channel within its group
    if w.ndim > 2 and m.groups > 1:
        chan = chan + (index // w[0].numel()) // (w.shape[0] // m.groups) * w.shape[1]
    d = delta.abs().double().to(norms.device)
    return (norms.index_select(1, chan.to(norms.device)).double() * d).sum(1)
