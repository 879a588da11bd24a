"""The device model layer: a chip spec's faults as samplers and as constraint sets.

:class:`Chip` (:mod:`.chip`) binds a :class:`~hwfault.spec.ChipSpec` to a model. Each fault kind
lives in one module of this package, which declares its ``[[faults]]`` schema, its fault model and
its one-line summary and registers them (:mod:`.registry`); shared device physics is in
:mod:`.physics`. This module only re-exports.
"""

from __future__ import annotations

from . import registry
from .analog import Additive, Multiplicative, PCMProgramming, ReadNoise
from .base import DeviceView, FaultModel
from .bitflip import BitFlip
from .chip import Chip, device_selection
from .drift import Drift
from .quantization import Quantization
from .registry import build_fault, register
from .stuck import StuckAt

__all__ = ["Chip", "FaultModel", "DeviceView", "build_fault", "register", "device_selection", "FAULT_KINDS",
           "Additive", "Multiplicative", "PCMProgramming", "ReadNoise", "Drift", "BitFlip", "StuckAt",
           "Quantization"]

FAULT_KINDS: dict[str, type[FaultModel]] = {k.kind: k.model for k in registry.kinds()}  # kind -> model class
