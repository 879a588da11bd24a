"""Faults in the datapath: bits of layer outputs (activations) flipped, and neurons stuck.

``activation-bitflip``: each stored bit of the outputs of the selected layers flips with
probability ``ber`` per inference (``transient``: redrawn for every input), or the same bits on every
input (``persistent``: a faulty register or buffer cell, drawn once per chip); with ``count``
instead, exactly that many flips per inference, uniform over all selected neurons and bits.
``activation-stuck``: each selected neuron (one output element of a selected layer, the same
position for every input) is stuck with probability ``sa0 + sa1``, once per chip: an SA0 neuron
reads 0, an SA1 neuron the largest magnitude of its layer's output for that input (saturation).

The bits are those of the chip's activation format (``[activations] format``, fp32 when absent):
a flipped element is encoded in the format, its bit flipped, and decoded (intN and FP8 with one
scale per input and layer output, max|a| over the largest code; MX formats with their block
scales along the output); the other elements keep their values. ``types`` picks the layers by kind
(conv, linear, norm, activation, pool; default conv and linear, the outputs of the matrix
products), ``params`` by module-name glob (both AND-ed).

Here: the schemas and summaries (no torch); the fault models, which act through forward hooks that
are always removed, are in :mod:`hwfault.faults.models.activation`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .config import FaultConfig, LayerSelection, Prob, fail, show
from .registry import lazy_attribute, register


class _Layers(LayerSelection, FaultConfig):
    """An activation fault's layers (:class:`~.config.LayerSelection`)."""


class ActivationBitFlipFault(_Layers):
    """Flips of the stored bits of layer outputs at ``ber`` per bit and inference (or ``count`` per
    inference); ``transient`` (redrawn per input) or ``persistent`` (the same bits for every input)."""

    kind: Literal["activation-bitflip"]
    ber: Prob | None = None
    count: Annotated[int, Field(strict=True, ge=1)] | None = None
    mode: Literal["transient", "persistent"] = "transient"

    @model_validator(mode="after")
    def _ber_or_count(self):
        if (self.ber is None) == (self.count is None):
            fail("expected exactly one of ber (a bit error rate per inference) or count (flips per inference), got "
                 + ("both" if self.ber is not None else "neither"))
        return self


class ActivationStuckFault(_Layers):
    """Neurons stuck at rates ``sa0`` (reads 0) and ``sa1`` (reads the largest magnitude of its layer's
    output), drawn once per chip (sa0 + sa1 <= 1)."""

    kind: Literal["activation-stuck"]
    sa0: Prob = 0.0
    sa1: Prob = 0.0

    @model_validator(mode="after")
    def _total(self):
        if self.sa0 + self.sa1 > 1 + 1e-12:
            fail(f"expected sa0 + sa1 <= 1, got {show(self.sa0)} + {show(self.sa1)} = {show(self.sa0 + self.sa1)}")
        if self.sa0 + self.sa1 == 0:
            fail("expected sa0 or sa1 > 0 (the rate of stuck neurons), got both 0")
        return self


def _where(f) -> str:
    return f"outputs of {', '.join(f.types)} layers" + (f" matching {', '.join(f.params)}" if f.params else "")


register(kind="activation-bitflip", config=ActivationBitFlipFault, model=".models.activation:ActivationBitFlip",
         order=8, args=lambda f: {"ber": 0.0 if f.ber is None else f.ber, "count": f.count, "mode": f.mode,
                                  "types": tuple(f.types), "params": tuple(f.params)},
         summary=lambda f: f"bits of the {_where(f)} flip; " + ("redrawn every inference" if f.mode == "transient"
                                                              else "the same bits on every inference"))
register(kind="activation-stuck", config=ActivationStuckFault, model=".models.activation:ActivationStuck", order=9,
         args=lambda f: {"sa0": f.sa0, "sa1": f.sa1, "types": tuple(f.types), "params": tuple(f.params)},
         summary=lambda f: f"neurons of the {_where(f)} stuck: SA0 reads 0, SA1 the layer's largest |output|")


def __getattr__(name: str):
    """The fault models (torch) are imported on first use."""
    return lazy_attribute(__name__, ".models.activation", name)
