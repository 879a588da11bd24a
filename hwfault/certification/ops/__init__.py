"""The certified operations, one module per family, each registering its builders in :mod:`.base`.

Supported: Linear, Conv1d/2d/3d (any stride, padding, dilation, groups) (:mod:`.affine`); eval-mode
BatchNorm1d/2d/3d (:mod:`.norm`); ReLU, LeakyReLU, Sigmoid, Tanh, SiLU, GELU (exact and tanh-approximate)
(:mod:`.activations`); MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d (:mod:`.pooling`);
Flatten/view/reshape, Identity/Dropout (eval),
residual additions and scalar affine maps (:mod:`.shape`). The same operations are read from a
``torch.fx.symbolic_trace`` graph (modules, functions, tensor methods) and from the ATen graph of a
``torch.export`` archive. Anything else (LayerNorm, attention, recurrent layers, products of two
activations, ...) has no builder, and the tracer raises :class:`~hwfault.errors.ModelError` naming it,
the supported list (:data:`.base.SUPPORTED`, kept in step with the builders) and what to do instead.

To add an operation: write an :class:`~.base.Op` (``forward``, ``ibp``, ``backward``) and a builder
``(call) -> (op, inputs)``, decorate the builder with ``register_module(SomeModule)``,
``register_aten("name")`` and/or ``register_function(torch.fn, "method")``, and import its module here.
"""

from . import activations, affine, norm, pooling, shape  # noqa: F401  (registers the builders)
from .activations import Activation, SmoothActivation
from .base import ATEN, FUNCTIONS, MODULES, SUPPORTED, Bounds, Call, Op, module_builder, unsupported_error

__all__ = ["ATEN", "FUNCTIONS", "MODULES", "SUPPORTED", "Activation", "Bounds", "Call", "Op", "SmoothActivation",
           "module_builder", "unsupported_error"]
