"""Weight-only integer quantisation with brevitas, in hwfault's ``intN`` format.

:func:`quantize_model` returns a copy of a model in which every ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` is a brevitas ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` whose weight is
fake-quantised on every forward pass exactly as :class:`hwfault.formats.NumberFormat` ``intN``
stores it: symmetric, narrow range (codes in [-(2**(N-1) - 1), 2**(N-1) - 1]), scale
``max|w| / (2**(N-1) - 1)`` per tensor or per output channel, computed from the current weights
(brevitas ``STATS`` scaling with ``MAX``). Training through the copy is quantisation-aware training:
rounding passes gradients straight through (STE) and the scale follows the weights.

Activations and biases stay float, and so do BatchNorm, recurrent and embedding layers. Parameter
names are those of the float model (``conv1.weight``), so the latent float weights load back into
the float architecture; :func:`dequantized_state_dict` gives the quantised values instead.

Not replaced: Linear layers owned by ``nn.MultiheadAttention`` or ``nn.Transformer*Layer`` modules
(their fused inference paths read the weight tensors directly, bypassing a quantiser), and
subclasses of the three layer types. Such weights stay float; :func:`quantized_layers` lists what
was replaced. One difference from hwfault's format: an all-zero tensor gets brevitas's minimum
scale (1e-10 / qmax) instead of 1; its codes are 0 either way.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .errors import ModelError

__all__ = ["quantize_model", "quantized_layers", "dequantized_state_dict", "to_float", "MIN_BITS", "MAX_BITS"]

MIN_BITS, MAX_BITS = 2, 16
_FLOAT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
# parents whose Linear children are read directly by fused kernels (not through the child's forward)
_FUSED_PARENTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _quant_classes() -> dict[type, type]:
    with warnings.catch_warnings():  # brevitas warns at import about optional CUDA kernels
        warnings.simplefilter("ignore")
        import brevitas.nn as qnn

    return {nn.Linear: qnn.QuantLinear, nn.Conv1d: qnn.QuantConv1d, nn.Conv2d: qnn.QuantConv2d}


def _weight_quant(per_channel: bool) -> type:
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat

    return Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat


def _replacement(m: nn.Module, bits: int, per_channel: bool) -> nn.Module:
    """The brevitas layer of ``m``'s type and hyper-parameters, holding copies of its weight and bias."""
    cls = _quant_classes()[type(m)]
    quant = dict(weight_quant=_weight_quant(per_channel), weight_bit_width=bits, weight_narrow_range=True,
                 weight_signed=True, bias_quant=None, input_quant=None, output_quant=None,
                 return_quant_tensor=False, device=m.weight.device, dtype=m.weight.dtype)
    if isinstance(m, nn.Linear):
        q = cls(m.in_features, m.out_features, bias=m.bias is not None, **quant)
    else:
        q = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode, bias=m.bias is not None,
                **quant)
    with torch.no_grad():
        q.weight.copy_(m.weight)
        q.weight.requires_grad_(m.weight.requires_grad)
        if m.bias is not None:
            q.bias.copy_(m.bias)
            q.bias.requires_grad_(m.bias.requires_grad)
    q.train(m.training)
    return q


def _replace(root: nn.Module, should: Callable[[nn.Module, nn.Module], bool],
             make: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Replace in place every child ``c`` of a module ``p`` of ``root`` with ``should(p, c)`` by ``make(c)``."""
    done = []
    for pname, parent in list(root.named_modules()):
        for cname, child in list(parent.named_children()):
            if should(parent, child):
                setattr(parent, cname, make(child))
                done.append(f"{pname}.{cname}" if pname else cname)
    return done


def quantize_model(model: nn.Module, bits: int, *, per_channel: bool = False) -> nn.Module:
    """A copy of ``model`` with brevitas fake-quantised ``bits``-bit weights (see the module docstring).

    The copy keeps the training mode and the ``requires_grad`` flags of ``model``; ``model`` itself
    is not changed. Raises :class:`~hwfault.errors.ModelError` if no layer can be quantised.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ModelError(f"expected a weight bit width in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if isinstance(model, torch.fx.GraphModule):
        raise ModelError("cannot quantise a traced GraphModule (e.g. from a torch.export archive): it has no "
                         "Linear/Conv modules left; quantise the model from its source instead")
    qmodel = copy.deepcopy(model)
    done = _replace(qmodel, lambda p, c: type(c) in _FLOAT_TYPES and not isinstance(p, _FUSED_PARENTS),
                    lambda c: _replacement(c, bits, per_channel))
    if not done:
        raise ModelError(f"nothing to quantise in {type(model).__name__}: no nn.Linear, nn.Conv1d or nn.Conv2d layer")
    return qmodel


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The brevitas weight-quantised layers of ``model`` by module name (empty for a float model)."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, QuantWeightBiasInputOutputLayer)}


@torch.no_grad()
def dequantized_state_dict(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """``qmodel``'s state dict with each quantised weight replaced by its quantised value ``q * scale``
    (detached copies). It loads into the float architecture: the float model then computes what the
    quantised model computes (up to float round-off)."""
    state = {k: v.detach().clone() for k, v in qmodel.state_dict().items()}
    for name, layer in quantized_layers(qmodel).items():
        key = f"{name}.weight" if name else "weight"
        state[key] = layer.quant_weight().value.detach().clone().to(state[key].dtype)
    return state


def to_float(qmodel: nn.Module, float_model_factory: Callable[[], nn.Module] | None = None, *,
             dequantize: bool = True) -> nn.Module:
    """A float model computing what ``qmodel`` computes: with ``dequantize`` (default) its weights are the
    quantised values, otherwise the latent float weights that training updated.

    The float model is ``float_model_factory()`` with the state dict loaded (strictly), or, without a
    factory, a copy of ``qmodel`` whose brevitas layers are turned back into ``nn.Linear`` /
    ``nn.Conv1d`` / ``nn.Conv2d``. It has ``qmodel``'s training mode.
    """
    state = dequantized_state_dict(qmodel) if dequantize else {k: v.detach().clone()
                                                               for k, v in qmodel.state_dict().items()}
    if float_model_factory is not None:
        model = float_model_factory()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"quantised weights do not fit the float architecture: "
                             f"{str(e).strip().splitlines()[0]}") from None
        return model.train(qmodel.training)
    inverse = {q: f for f, q in _quant_classes().items()}
    model = copy.deepcopy(qmodel)
    _replace(model, lambda p, c: type(c) in inverse, lambda c: _float_layer(c, inverse[type(c)]))
    model.load_state_dict(state, strict=True)
    return model.train(qmodel.training)


def _float_layer(q: nn.Module, cls: type) -> nn.Module:
    kw = dict(bias=q.bias is not None, device=q.weight.device, dtype=q.weight.dtype)
    if cls is nn.Linear:
        m = cls(q.in_features, q.out_features, **kw)
    else:
        m = cls(q.in_channels, q.out_channels, q.kernel_size, stride=q.stride, padding=q.padding,
                dilation=q.dilation, groups=q.groups, padding_mode=q.padding_mode, **kw)
    m.weight.requires_grad_(q.weight.requires_grad)
    if q.bias is not None:
        m.bias.requires_grad_(q.bias.requires_grad)
    return m.train(q.training)
