"""Conductance drift of phase-change memory: g(t) = g_prog (t / t0)^(-nu).

nu per device ~ N(nu_mean, nu_std), by default conductance-dependent (IBM aihwkit's PCM model,
facts.md section 5): nu_mean = clamp(-0.0155 ln g^ + 0.0244, 0.049, 0.1),
nu_std = clamp(-0.0125 ln g^ - 0.0059, 0.008, 0.045), g^ = |w| / max|w| of the tensor. Global drift
compensation rescales each tensor by one factor, sum|w| / sum|w(t)| (what a calibration read of
the whole array measures), which removes the mean decay and leaves the spread.

Covering set: a box. Each nu_i lies in nu_mean_i +- z nu_std_i (union bound over the k devices),
so each factor (t/t0)^(-nu_i) lies in an interval; the compensation factor is a mean over k devices
and is bounded by its expected value times (1 +- 10 of its standard deviations), a slack far beyond
what k >= 100 devices produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..constraints import Box
from .base import DeviceView, FaultModel, union_bound_z


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
        tmax = view.tmax.double()
        gh = (values.abs() / torch.where(tmax > 0, tmax, torch.ones_like(tmax))).clamp(1e-6, 1)
        mu = (-0.0155 * gh.log() + 0.0244).clamp(0.049, 0.1)
        sd = (-0.0125 * gh.log() - 0.0059).clamp(0.008, 0.045)
        if self.nu_std is not None:
            sd = torch.full_like(values, self.nu_std)
        return mu, sd

    @property
    def _log_ratio(self) -> float:
        return math.log(max(self.t, self.t0) / self.t0)

    def _compensate(self, view, before, after):
        if not self.compensation:
            return after
        seg = view.segment_of()
        n = int(seg.max()) + 1 if seg.numel() else 0
        num = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, before.abs())
        den = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, after.abs())
        alpha = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
        return after * alpha[seg]

    def sample(self, view, values, gen):
        mu, sd = self._nu(view, values)
        nu = (mu + sd * torch.randn(values.numel(), generator=gen, dtype=torch.float64)).clamp(min=0)
        return self._compensate(view, values, values * torch.exp(-nu * self._log_ratio))

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
            seg = view.segment_of()
            n = int(seg.max()) + 1
            ef = torch.exp(-mu * L + 0.5 * (sd * L) ** 2)                       # E f (lognormal)
            vf = (torch.exp((sd * L) ** 2) - 1) * torch.exp(-2 * mu * L + (sd * L) ** 2)  # Var f
            sw = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, w.abs())
            mean = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, w.abs() * ef) / sw.clamp(min=1e-300)
            std = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, w.abs() ** 2 * vf).sqrt() / sw.clamp(min=1e-300)
            alpha_lo = 1 / (mean + 10 * std)
            alpha_hi = 1 / (mean - 10 * std).clamp(min=1e-12)
            a_lo, a_hi = f_lo * alpha_lo[seg], f_hi * alpha_hi[seg]
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
