"""The device model layer: a chip spec's faults as samplers and as constraint sets.

:class:`Chip` (:mod:`.chip`) binds a :class:`~hwfault.spec.ChipSpec` to a model. Each fault kind is
declared in one module of this package, which declares its ``[[faults]]`` schema, its fault model
and its one-line summary and registers them (:mod:`.registry`); the built-in kinds keep their fault
models (torch) in :mod:`.models`, so that reading a chip spec imports no torch. Shared device physics
is in :mod:`.physics`. This module only re-exports, each name imported on first use.
"""

from __future__ import annotations

import importlib

from . import registry
from .registry import build_fault, register

__all__ = ["Chip", "FaultModel", "DeviceView", "build_fault", "register", "device_selection", "FAULT_KINDS",
           "Additive", "Multiplicative", "PCMProgramming", "ReadNoise", "Drift", "BitFlip", "StuckAt",
           "Quantization"]

_LAZY = {"Chip": ".chip", "device_selection": ".chip", "DeviceView": ".base", "FaultModel": ".base",
         "Additive": ".models.analog", "Multiplicative": ".models.analog", "PCMProgramming": ".models.analog",
         "ReadNoise": ".models.analog", "BitFlip": ".models.bitflip", "Drift": ".models.drift",
         "StuckAt": ".models.stuck", "Quantization": ".quantization"}


def __getattr__(name: str):
    """The torch side is imported on first use; ``FAULT_KINDS`` maps kind -> model class."""
    if name == "FAULT_KINDS":
        value = {k.kind: k.model for k in registry.kinds()}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
