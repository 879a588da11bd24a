"""A chip spec applied to a model: the device parameters, stored in the chip's format, and the faults.

:class:`Chip` binds a :class:`~hwfault.spec.ChipSpec` to a model: it selects the parameters that
live on the device, stores them in the chip's number format (:class:`~hwfault.faults.base.DeviceView`),
and builds one :class:`~hwfault.faults.base.FaultModel` per fault of the spec (through the fault
registry), applied in the spec's order after quantisation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..constraints import SumSet
from ..blockformats import number_format
from ..params import Selection, select
from .base import DeviceView, FaultModel
from .quantization import Quantization
from .registry import build_fault

__all__ = ["Chip", "device_selection"]


def device_selection(spec, model: nn.Module) -> Selection:
    """The parameters that live on the device: the spec's globs and component types (weights only by default)."""
    dev = spec.device
    types = list(dev.types) if dev.types else None
    sel = select(model, list(dev.params) or None, types=types)
    if dev.weights_only:
        sel = sel.weights_only()
        if not sel.params:
            from ..errors import SelectionError

            raise SelectionError(f"chip '{spec.name}': no weight tensor among the selected parameters")
    return sel


@dataclass(eq=False)
class Chip:
    """A chip spec applied to a model."""

    spec: object
    selection: Selection
    view: DeviceView
    faults: tuple[FaultModel, ...]

    @classmethod
    def build(cls, spec, model: nn.Module, faults: tuple[FaultModel, ...] | None = None, *, data=None) -> Chip:
        """The chip of ``spec`` on ``model``; a spec with ``[[protection]]`` gives a
        :class:`~hwfault.faults.protection.ProtectedChip` (``data``: what the ranked choice of
        protected bits and Ranger's profiling need)."""
        sel = device_selection(spec, model)
        fmt = number_format(spec.format.kind, per_channel=spec.format.scale == "per-channel",
                            group=spec.format.group_size)
        view = DeviceView.build(sel, fmt)
        fl = tuple(build_fault(f) for f in spec.faults) if faults is None else tuple(faults)
        chip = cls(spec, sel, view, fl)
        if getattr(spec, "protection", None):
            from .protection import protected

            return protected(chip, model, spec.protection, data=data)
        return chip

    def with_faults(self, faults) -> Chip:
        return Chip(self.spec, self.selection, self.view, tuple(faults))

    @property
    def quantized(self) -> bool:
        return self.view.fmt.name != "fp32"

    @property
    def persistent(self) -> tuple[FaultModel, ...]:
        return tuple(f for f in self.faults if not f.transient and not f.forward)

    @property
    def transient(self) -> tuple[FaultModel, ...]:
        """The faults redrawn for every inference: transient weight faults, and the faults that act on
        forward passes (activation faults, run through :meth:`forward_hooks` per batch)."""
        return tuple(f for f in self.faults if f.transient or f.forward)

    @property
    def redrawn(self) -> tuple[FaultModel, ...]:
        """The transient faults of the stored weights (read noise, transient flips): what
        :meth:`read` draws for every inference (the forward faults draw in their hooks)."""
        return tuple(f for f in self.faults if f.transient and not f.forward)

    @property
    def forward_faults(self) -> tuple[FaultModel, ...]:
        return tuple(f for f in self.faults if f.forward)

    @property
    def activation_format(self) -> str:
        """How the chip stores activations (``[activations] format``; fp32 when the spec has none)."""
        act = getattr(self.spec, "activations", None)
        return "fp32" if act is None else act.format

    def forward_hooks(self, model: nn.Module, gen: torch.Generator, log: list | None = None):
        """A context manager that installs the hooks of the forward faults (activation flips, stuck
        neurons) on ``model`` for one chip, and removes them on exit, also after an exception.
        ``log`` receives the (layer, neuron, bit) cells of persistent activation flips."""
        if not self.forward_faults:
            return contextlib.nullcontext(model)
        from .models.activation import ActivationFormat, installed

        return installed(self.forward_faults, model, ActivationFormat(self.activation_format), gen, log)

    @property
    def offsets(self) -> np.ndarray:
        """Where each parameter tensor starts in the flat layout, and the total last (cached by the view)."""
        return self.view.offsets

    @property
    def stored(self) -> torch.Tensor:
        """The fault-free stored values, flat float64 (cached by the view; do not modify in place)."""
        return self.view.stored

    def program(self, gen: torch.Generator | None) -> torch.Tensor:
        """One chip: the stored values after quantisation and the persistent faults (flat float64)."""
        values = self.view.w_q.double().clone()
        for f in self.persistent:
            values = f.sample(self.view, values, gen)
        return values

    def program_sparse(self, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The chip of :meth:`program` (the same draw), as the flat indices of the stored values its
        persistent faults changed (sorted) and their new values (float64): O(faults), not O(weights).
        None when the faults have no sparse form (several faults in sequence, or a kind without one)."""
        p = self.persistent
        if len(p) != 1 or not hasattr(p[0], "sample_at"):
            return None
        idx, values = p[0].sample_at(self.view, gen)
        hit = values != self.view.w_q[idx].double()  # a NaN pattern counts as changed, as in program()
        return idx[hit], values[hit]

    def read(self, programmed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One inference's values: the transient faults drawn on top of the programmed ones."""
        values = programmed
        for f in self.redrawn:
            values = f.sample(self.view, values, gen)
        return values

    def delta(self, values: torch.Tensor) -> torch.Tensor:
        """The perturbation of the model's float32 weights that realises ``values``."""
        return (values - self.view.w.double()).float()

    def parts(self) -> list[tuple[str, FaultModel]]:
        """The parts of the covering set: quantisation (if the format rounds), then each fault."""
        named = [("quantization", Quantization())] if self.quantized else []
        return named + [part for f in self.faults for part in f.parts()]

    def constraint(self, coverage: float | None = None) -> SumSet:
        """The covering set: the Minkowski sum of each part's set. With m random parts, each part
        gets coverage c^(1/m), so that all hold together with probability >= c (independence)."""
        c = self.spec.coverage if coverage is None else coverage
        parts = self.parts()
        m = sum(1 for name, _ in parts if name != "quantization")
        ci = c ** (1.0 / m) if m else c
        sets = tuple(f.constraint(self.view, ci) for _, f in parts)
        return SumSet(sets, tuple(n for n, _ in parts))

    def sample_parts(self, gen: torch.Generator) -> list[torch.Tensor]:
        """One realisation per part of :meth:`constraint`, each fault drawn on the stored values w_q
        (quantisation: w_q - w). This is the composition the covering set assumes: the sum of the
        parts, with an overriding fault (a stuck weight) replacing the earlier parts on its elements.
        The Monte-Carlo chips of :meth:`program` compose sequentially instead, so they also contain
        the second-order cross terms (e.g. drift of the programming noise itself)."""
        w_q = self.view.w_q.double()
        out = []
        for name, f in self.parts():
            if name == "quantization":
                out.append(w_q - self.view.w.double())
                continue
            part = f.sample(self.view, w_q.clone(), gen) - w_q
            if f.overrides:
                hit = part != 0
                for d in out[1 if self.quantized else 0:]:
                    d[hit] = 0
            out.append(part)
        return out

    def describe(self) -> dict:
        return {"format": self.view.fmt.name, "params": list(self.selection.names), "k": self.view.k,
                "faults": [f.describe() for f in self.faults]}
