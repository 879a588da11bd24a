"""Fake quantisation with a straight-through estimator, for training in a chip's stored format.

:func:`fake_quantize` is ``fmt.quantize(w)`` on the forward pass, bit for bit (the values a chip
stores for ``w`` in ``fmt``: any format with ``quantize``, in particular the block formats of
:mod:`hwfault.blockformats` — FP8, MX, NVFP4 and intN with per-group scales), and the identity on the
backward pass: ``d loss / d w = d loss / d q`` for every element (a straight-through estimator).

Saturation: the gradient is *not* zeroed anywhere. Every scale of these formats follows the weights
it scales (``max|v|`` of its block, group or tensor), so no weight lies outside the range of its
scale; the only saturated elements are block maxima that round down onto the largest normal (MX:
``max|v| / X`` in (6, 8) for E2M1 stores 6), and zeroing their gradient would freeze the largest
weight of every such block. The scales are not differentiated: the backward pass treats them as
constants. The backward pass is linear, so double backprop (``crt``) works through it.

As the chip does, the values are computed from float32 weights on the CPU, then moved back to the
weight's device and dtype.

:class:`FakeQuantized` applies it to some parameters of a model: while the model's forward runs
(its outermost call), each of them reads as ``fake_quantize(p, fmt)``; the parameters themselves
(the latent float weights the optimiser updates), their names and the state dict stay as they are,
and every module that reads the weight attribute sees the stored values (also fused paths such as
``nn.MultiheadAttention``'s ``out_proj``, and recurrent layers). :meth:`FakeQuantized.exact` lets
chosen parameters through unquantised for a block (weights that already hold a chip's stored,
faulty values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .errors import ModelError

__all__ = ["fake_quantize", "stored_values", "FakeQuantized"]


def stored_values(fmt, w: torch.Tensor) -> torch.Tensor:
    """``fmt.quantize`` of ``w`` as a chip stores it (from float32 on the CPU), on ``w``'s device and in its
    dtype, detached."""
    q = fmt.quantize(w.detach().float().cpu())
    return q.to(device=w.device, dtype=w.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, fmt):
        return stored_values(fmt, w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(w: torch.Tensor, fmt) -> torch.Tensor:
    """``fmt.quantize(w)`` forward (bit-exact), identity backward (see the module docstring)."""
    return _StraightThrough.apply(w, fmt)


class FakeQuantized:
    """``params`` of ``model`` fake-quantised in ``fmt`` during the model's forward passes, until
    :meth:`remove` (also a context manager). A parameter shared by several modules is quantised once
    per forward pass and read so by all of them. The hooks live on ``model``: a deep copy of the model
    made meanwhile is fake-quantised too (its own copy of this object, never removed)."""

    def __init__(self, model: nn.Module, params: Iterable[torch.Tensor], fmt):
        wanted = {id(p) for p in params}
        self.fmt = fmt
        self._owners = [(m, name, p) for m in model.modules() for name, p in list(m._parameters.items())
                        if p is not None and id(p) in wanted]
        if not self._owners:
            raise ModelError(f"nothing to fake-quantise in {fmt.name}: none of the given parameters is in "
                             f"{type(model).__name__}")
        self._exact: set[int] = set()
        self._depth = 0
        self._handles = [model.register_forward_pre_hook(self._swap),
                         model.register_forward_hook(self._restore, always_call=True)]

    @property
    def params(self) -> list[torch.Tensor]:
        """The fake-quantised parameters (each once)."""
        return list({id(p): p for _, _, p in self._owners}.values())

    def _swap(self, module, args) -> None:
        self._depth += 1
        if self._depth > 1:  # a re-entrant call of the model inside its own forward: already swapped
            return
        done: dict[int, torch.Tensor] = {}
        for m, name, p in self._owners:
            if id(p) in self._exact:
                continue
            if id(p) not in done:
                done[id(p)] = fake_quantize(p, self.fmt)
            m._parameters[name] = done[id(p)]  # as torch.func.functional_call swaps a parameter

    def _restore(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            for m, name, p in self._owners:
                m._parameters[name] = p

    @contextlib.contextmanager
    def exact(self, params: Iterable[torch.Tensor]) -> Iterator[None]:
        """Within the block, ``params`` read as they are (not quantised)."""
        ids = {id(p) for p in params} - self._exact
        self._exact |= ids
        try:
            yield
        finally:
            self._exact -= ids

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FakeQuantized:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
