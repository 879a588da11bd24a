"""Conductance drift of phase-change memory: g(t) = g_prog (t / t0)^(-nu).

nu per device ~ N(nu_mean, nu_std), by default conductance-dependent (IBM aihwkit's
PCMLikeNoiseModel): nu_mean = clamp(-0.0155 ln g^ + 0.0244, 0.049, 0.1),
nu_std = clamp(-0.0125 ln g^ - 0.0059, 0.008, 0.045), g^ = |w| / max|w| of the tensor. Global drift
compensation rescales each tensor by one factor, sum|w| / sum|w(t)| (what a calibration read of
the whole array measures), which removes the mean decay and leaves the spread (both in
:mod:`hwfault.faults.physics`).

Here: the ``[[faults]]`` schema and summary (no torch); the fault model and its covering set (a
box) are in :mod:`hwfault.faults.models.drift`.
"""

from __future__ import annotations

from typing import Literal

from .config import FaultConfig, Flag, NonNeg, Pos, num
from .registry import lazy_attribute, register


class DriftFault(FaultConfig):
    """Conductance drift g(t) = g_prog (t / t0)^-nu, ``t`` and ``t0`` in seconds since programming;
    nu ~ N(nu_mean, nu_std), by default (None) the PCM conductance-dependent model of aihwkit's
    PCMLikeNoiseModel; ``compensation`` = global drift compensation (one rescaling per tensor)."""

    units = {"t": "s", "t0": "s"}

    kind: Literal["drift"]
    t: Pos
    t0: Pos = 20.0
    compensation: Flag = True
    nu_mean: NonNeg | None = None
    nu_std: NonNeg | None = None


def _seconds(t: float) -> str:
    for unit, n in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if t >= n:
            return f"{num(round(t / n, 2))} {unit if t != n else unit[:-1]}"
    return f"{num(t)} s"


register(kind="drift", config=DriftFault, model=".models.drift:Drift", order=5,
         summary=lambda f: f"{_seconds(f.t)} after programming"
                           + (", nu from the PCM model" if f.nu_mean is None and f.nu_std is None else "")
                           + (", global compensation" if f.compensation else ", uncompensated"))


def __getattr__(name: str):
    """The fault models (torch) are imported on first use: ``hwfault.faults.drift.Drift``."""
    return lazy_attribute(__name__, ".models.drift", name)
