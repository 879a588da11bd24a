"""Conductance drift of phase-change memory: g(t) = g_prog (t / t0)^(-nu).

nu per device ~ N(nu_mean, nu_std), by default conductance-dependent (IBM aihwkit's
PCMLikeNoiseModel): nu_mean = clamp(-0.0155 ln g^ + 0.0244, 0.049, 0.1),
nu_std = clamp(-0.0125 ln g^ - 0.0059, 0.008, 0.045), g^ = |w| / max|w| of the tensor. Global drift
compensation rescales each tensor by one factor, sum|w| / sum|w(t)| (what a calibration read of
the whole array measures), which removes the mean decay and leaves the spread (both in
:mod:`hwfault.faults.physics`).

Covering set: a box. Each nu_i lies in nu_mean_i +- z nu_std_i (union bound over the k devices),
so each factor (t/t0)^(-nu_i) lies in an interval; the compensation factor is a mean over k devices
and is bounded by its expected value times (1 +- 10 of its standard deviations), a slack far beyond
what k >= 100 devices produce. The ``[[faults]]`` schema is in :mod:`hwfault.faults.drift`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ...constraints import Box
from ..base import DeviceView, FaultModel, union_bound_z
from ..physics import compensate, compensation_range, conductance

__all__ = ["Drift"]


@dataclass(frozen=True)
class Drift(FaultModel):
    t: float
    t0: float = 20.0
    compensation: bool = True
    nu_mean: float | None = None
    nu_std: float | None = None
    kind = "drift"
    severity_name = "t (s)"

    def _nu(self, view: DeviceView, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.nu_mean is not None:
            mu = torch.full_like(values, self.nu_mean)
            sd = torch.full_like(values, self.nu_std if self.nu_std is not None else 0.0)
            return mu, sd
        gh = conductance(view, values, floor=1e-6)
        mu = (-0.0155 * gh.log() + 0.0244).clamp(0.049, 0.1)
        sd = (-0.0125 * gh.log() - 0.0059).clamp(0.008, 0.045)
        if self.nu_std is not None:
            sd = torch.full_like(values, self.nu_std)
        return mu, sd

    @property
    def _log_ratio(self) -> float:
        return math.log(max(self.t, self.t0) / self.t0)

    def sample(self, view, values, gen):
        mu, sd = self._nu(view, values)
        nu = (mu + sd * torch.randn(values.numel(), generator=gen, dtype=torch.float64)).clamp(min=0)
        after = values * torch.exp(-nu * self._log_ratio)
        return compensate(view, values, after) if self.compensation else after

    def constraint(self, view, coverage):
        w = view.w_q.double()
        mu, sd = self._nu(view, w)
        z = union_bound_z(coverage, view.k)
        L = self._log_ratio
        f_hi = torch.exp(-(mu - z * sd).clamp(min=0) * L)  # least decay
        f_lo = torch.exp(-(mu + z * sd).clamp(min=0) * L)  # most decay
        a_lo, a_hi = f_lo, f_hi
        if self.compensation:
            # alpha = sum|w| / sum|w f|: expected value and spread of the mean decay per tensor
            ef = torch.exp(-mu * L + 0.5 * (sd * L) ** 2)                       # E f (lognormal)
            vf = (torch.exp((sd * L) ** 2) - 1) * torch.exp(-2 * mu * L + (sd * L) ** 2)  # Var f
            alpha_lo, alpha_hi = compensation_range(view, w, ef, vf)
            a_lo, a_hi = f_lo * alpha_lo, f_hi * alpha_hi
        # a_i = w_i (factor - 1), factor in [a_lo, a_hi]; order by the sign of w_i
        d1, d2 = w * (a_lo - 1), w * (a_hi - 1)
        return Box(torch.minimum(d1, d2), torch.maximum(d1, d2))

    def scaled(self, factor):
        return replace(self, t=max(self.t0, self.t0 * (self.t / self.t0) ** factor))

    @property
    def severity(self):
        return self.t

    def describe(self):
        return {"kind": self.kind, "t_s": self.t, "t0_s": self.t0, "compensation": self.compensation,
                "nu": "PCM model" if self.nu_mean is None else {"mean": self.nu_mean, "std": self.nu_std}}
