"""Analog programming and read noise (Gaussian, per element).

Kinds: ``additive``, ``multiplicative``, ``pcm`` (programming noise, drawn once per chip) and
``read`` (redrawn for every inference). Here: their ``[[faults]]`` schemas and summaries (no torch);
the fault models and their covering set (an ellipsoid) are in :mod:`hwfault.faults.models.analog`.
"""

from __future__ import annotations

from typing import Literal

from .config import FaultConfig, NonNeg, Pos, num
from .registry import lazy_attribute, register

# ----------------------------------------------------------------------------- [[faults]] entries


class AdditiveFault(FaultConfig):
    """Gaussian programming noise, drawn once per programming: std = sigma * max|w| of each tensor
    (the conductance range)."""

    kind: Literal["additive"]
    sigma: NonNeg


class MultiplicativeFault(FaultConfig):
    """Gaussian programming noise, drawn once per programming: std = sigma * |w| per element."""

    kind: Literal["multiplicative"]
    sigma: NonNeg


class PCMFault(FaultConfig):
    """PCM-like conductance-dependent programming noise (IBM aihwkit's PCMLikeNoiseModel):
    sigma(g) = 0.26348 + 1.9650 g^ - 1.1731 g^^2 uS at g^ = g / g_max; ``g_max`` in uS."""

    units = {"g_max": "uS"}

    kind: Literal["pcm"]
    g_max: Pos = 25.0


class ReadFault(FaultConfig):
    """Gaussian read noise, redrawn for every inference: std = sigma * max|w| (``relative_to = "max"``)
    or sigma * |w| (``"weight"``)."""

    kind: Literal["read"]
    sigma: NonNeg
    relative_to: Literal["max", "weight"] = "max"


# ----------------------------------------------------------------------------- registration

register(kind="additive", config=AdditiveFault, model=".models.analog:Additive", order=1,
         summary=lambda f: f"Gaussian, std {num(f.sigma)} x max|w| per tensor, drawn once at programming")
register(kind="multiplicative", config=MultiplicativeFault, model=".models.analog:Multiplicative", order=2,
         summary=lambda f: f"Gaussian, std {num(f.sigma)} x |w|, drawn once at programming")
register(kind="pcm", config=PCMFault, model=".models.analog:PCMProgramming", order=3,
         summary="PCM conductance-dependent programming noise, drawn once")
register(kind="read", config=ReadFault, model=".models.analog:ReadNoise", order=4,
         summary=lambda f: f"Gaussian, std {num(f.sigma)} x {'max|w| per tensor' if f.relative_to == 'max' else '|w|'}, "
                           f"redrawn every inference")


def __getattr__(name: str):
    """The fault models (torch) are imported on first use: ``hwfault.faults.analog.Additive``."""
    return lazy_attribute(__name__, ".models.analog", name)
