"""The operation interface, what a builder sees of a traced node, and the tables the tracer dispatches on.

A builder turns one traced node into ``(op, inputs)``: an :class:`Op` and the graph nodes it reads.
It is registered for what the node calls: an ``nn.Module`` type (:func:`register_module`; subclasses
find it through their MRO), an ATen op by its overload packet name (:func:`register_aten`), or, in a
``torch.fx.symbolic_trace`` graph, a function or a tensor method name (:func:`register_function`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from ..sets import _Weights

Bounds = tuple[torch.Tensor, torch.Tensor]

# what certify reads, for the one-line refusal (tests check that every name here has a builder)
SUPPORTED = ("Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval), ReLU, LeakyReLU, Sigmoid, Tanh, SiLU, GELU, "
             "MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten/view/reshape, Identity, Dropout (eval), "
             "residual add and scalar affine maps")


def unsupported_error(what: str, extra: str = "", where: str | None = None) -> ModelError:
    """The one-line refusal of a layer certify has no bound for: what it is, where, what is supported
    and what to do instead."""
    at = f" at {where}" if where else ""
    return ModelError(f"certify: unsupported layer {what}{extra}{at}; supported: {SUPPORTED}; "
                      "replace it, or run sweep/estimate, which need no bound")


class Op:
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


def zero_const(lam: torch.Tensor) -> torch.Tensor:
    return lam.new_zeros(lam.shape[:2])


def ntuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class Call:
    """One traced node as a builder sees it: its arguments, shapes and parameter names, and the
    one-line error that names it."""

    def __init__(self, node, what: str, graph, index: dict[str, int], module: nn.Module | None = None):
        self.node, self.what, self.module = node, what, module
        self._graph, self._index = graph, index

    def unsupported(self, extra: str = "") -> ModelError:
        return unsupported_error(self.what, extra, self.node.name)

    def is_tensor(self, a) -> bool:
        """True if ``a`` is a traced tensor (a node computed from the input)."""
        return hasattr(a, "name") and a.name in self._index

    @property
    def tensor_args(self) -> list:
        return [a for a in self.node.args if self.is_tensor(a)]

    def shape_of(self, a) -> tuple[int, ...]:
        """The shape (without the batch dimension) of the traced tensor ``a``."""
        return self._graph.nodes[self._index[a.name]].shape

    def in_shape(self) -> tuple[int, ...]:
        return self.shape_of(self.tensor_args[0])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.node.meta["tensor_meta"].shape[1:])

    @property
    def fname(self) -> str:
        """The called function's or method's name."""
        t = self.node.target
        return t if isinstance(t, str) else getattr(t, "__name__", "")

    # ----------------------------------------------------------------- call_module nodes

    @property
    def prefix(self) -> str:
        return f"{self.node.target}." if self.node.target else ""

    def names(self) -> tuple[str | None, str | None]:
        """The module's weight and bias parameter names (None where it has none)."""
        m, pre = self.module, self.prefix
        return (f"{pre}weight" if getattr(m, "weight", None) is not None else None,
                f"{pre}bias" if getattr(m, "bias", None) is not None else None)

    # ----------------------------------------------------------------- ATen nodes (torch.export graphs)

    @property
    def x(self):
        """The first argument (the traced input of an ATen op)."""
        return self.node.args[0] if self.node.args else None

    def arg(self, i: int, default=None):
        """Argument ``i`` of an ATen op, positional or by its schema name."""
        args, node = self.node.args, self.node
        return args[i] if len(args) > i else node.kwargs.get(
            node.target._schema.arguments[i].name, default) if i < len(node.target._schema.arguments) else default

    def attr(self, a) -> str | None:
        """The parameter or buffer name a get_attr argument reads (None stays None)."""
        if a is None:
            return None
        if not hasattr(a, "name") or a.name not in self._graph.attrs:
            raise self.unsupported(" (a weight computed in the graph)")
        return self._graph.attrs[a.name]

    def param_shape(self, name: str) -> torch.Size:
        return self._graph.shapes[name]


Builder = Callable[[Call], tuple[Op, list]]

MODULES: dict[type, Builder] = {}     # nn.Module type -> builder
ATEN: dict[str, Builder] = {}         # ATen overload packet name ("conv2d") -> builder
FUNCTIONS: dict[Any, Builder] = {}    # fx: call_function target (a callable) or call_method name (a str) -> builder


def _register(table: dict, keys) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for k in keys:
            table[k] = fn
        return fn
    return deco


def register_module(*types: type) -> Callable[[Builder], Builder]:
    return _register(MODULES, types)


def register_aten(*names: str) -> Callable[[Builder], Builder]:
    return _register(ATEN, names)


def register_function(*targets) -> Callable[[Builder], Builder]:
    return _register(FUNCTIONS, targets)


def module_builder(mod: nn.Module) -> Builder | None:
    """The builder of the closest registered class in ``type(mod)``'s MRO (None: unsupported)."""
    for cls in type(mod).__mro__:
        b = MODULES.get(cls)
        if b is not None:
            return b
    return None
