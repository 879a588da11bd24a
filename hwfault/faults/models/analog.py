"""Analog programming and read noise (Gaussian, per element).

Covering set: independent Gaussian noise a_i ~ N(0, sigma_i^2) lies in the weighted L2 ellipsoid
||a / sigma||_2 <= sqrt(chi2_k^{-1}(coverage)) with exactly that probability. We use the ellipsoid
rather than a union-bound box (|a_i| <= z sigma_i with z = Phi^{-1}(1 - (1 - c) / 2k)): for a
dense gradient g the box admits a linear gain z ||sigma g||_1, about z sqrt(2k/pi) ||sigma g||_2,
several times the ellipsoid's sqrt(k) ||sigma g||_2, so the ellipsoid is the tighter worst case.

Kinds: ``additive``, ``multiplicative``, ``pcm`` (programming noise, drawn once per chip) and
``read`` (redrawn for every inference); their ``[[faults]]`` schemas are in :mod:`hwfault.faults.analog`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...constraints import Ellipsoid
from ..base import DeviceView, FaultModel, chi2_radius
from ..physics import conductance

__all__ = ["Additive", "Multiplicative", "PCMProgramming", "ReadNoise", "PCM_PROG"]


def _noise(sigma: torch.Tensor, values: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return values + sigma * torch.randn(values.numel(), generator=gen, dtype=torch.float64)


class _Gaussian(FaultModel):
    severity_name = "sigma"

    def sigmas(self, view: DeviceView, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, view, values, gen):
        return _noise(self.sigmas(view, values), values, gen)

    def constraint(self, view, coverage):
        return Ellipsoid(self.sigmas(view, view.w_q.double()), chi2_radius(coverage, view.k))

    def scaled(self, factor):
        return replace(self, sigma=self.sigma * factor)

    @property
    def severity(self):
        return self.sigma


@dataclass(frozen=True)
class Additive(_Gaussian):
    """Additive Gaussian programming noise, std = sigma * max|w| of each tensor."""

    sigma: float
    kind = "additive"

    def sigmas(self, view, values):
        return self.sigma * view.tmax.double()

    def describe(self):
        return {"kind": self.kind, "sigma": self.sigma, "relative_to": "max|w| per tensor"}


@dataclass(frozen=True)
class Multiplicative(_Gaussian):
    """Multiplicative Gaussian programming noise, std = sigma * |w| per element."""

    sigma: float
    kind = "multiplicative"

    def sigmas(self, view, values):
        return self.sigma * values.abs()

    def describe(self):
        return {"kind": self.kind, "sigma": self.sigma, "relative_to": "|w|"}


# PCM programming noise (IBM aihwkit's PCMLikeNoiseModel): in uS at normalised
# conductance g^ = g / g_max, sigma(g^) = 0.26348 + 1.9650 g^ - 1.1731 g^^2 (1% of g_max at 0, 4.2% at g_max).
PCM_PROG = (0.26348, 1.9650, -1.1731)


@dataclass(frozen=True)
class PCMProgramming(_Gaussian):
    """Conductance-dependent PCM programming noise. Each weight maps to one device of a
    differential pair, g^ = |w| / max|w| of its tensor, g = g^ g_max; the noise in weight units is
    sigma(g^) / g_max * max|w|. ``scale`` multiplies the noise (1 = the device model)."""

    g_max: float = 25.0
    scale: float = 1.0
    kind = "pcm"

    def sigmas(self, view, values):
        gh = conductance(view, values)
        c0, c1, c2 = PCM_PROG
        sigma_us = c0 + c1 * gh + c2 * gh**2
        return self.scale * sigma_us / self.g_max * view.tmax.double()

    def scaled(self, factor):
        return replace(self, scale=self.scale * factor)

    @property
    def severity(self):
        return self.scale

    def describe(self):
        return {"kind": self.kind, "g_max_uS": self.g_max, "noise_scale": self.scale}


@dataclass(frozen=True)
class ReadNoise(_Gaussian):
    """Read noise, redrawn for every inference: std = sigma * max|w| (or * |w|)."""

    sigma: float
    relative_to: str = "max"
    kind = "read"
    transient = True

    def sigmas(self, view, values):
        return self.sigma * (view.tmax.double() if self.relative_to == "max" else values.abs())

    def describe(self):
        return {"kind": self.kind, "sigma": self.sigma, "relative_to": self.relative_to, "redrawn": "per inference"}
