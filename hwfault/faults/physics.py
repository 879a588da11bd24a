"""Device physics shared by the fault kinds, written once.

Conductance mapping: each weight is programmed on one device of a differential pair, at the
normalised conductance g^ = |w| / max|w| of its tensor (the largest weight of a tensor sits at
g_max). PCM programming noise and drift's conductance-dependent nu are functions of g^.

Global drift compensation: one rescaling per tensor, sum|w_before| / sum|w_after| (what a
calibration read of the whole array measures), which removes the mean decay and leaves the spread.
"""

from __future__ import annotations

import torch

from .base import DeviceView

__all__ = ["conductance", "tensor_sums", "compensate", "compensation_range"]


def conductance(view: DeviceView, values: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """g^ = |values| / max|w| of each element's tensor, clamped to [floor, 1] (float64, flat).
    A tensor of zeros maps to g^ = 0 (its max|w| is taken as 1)."""
    tmax = view.tmax.double()
    return (values.abs() / torch.where(tmax > 0, tmax, torch.ones_like(tmax))).clamp(floor, 1)


def tensor_sums(seg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over each parameter tensor (``seg`` = :meth:`DeviceView.segment_of`)."""
    n = int(seg.max()) + 1 if seg.numel() else 0
    return torch.zeros(n, dtype=torch.float64).index_add_(0, seg, x)


def compensate(view: DeviceView, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Global drift compensation: ``after`` rescaled per tensor by sum|before| / sum|after|
    (by 1 where the tensor reads all zeros)."""
    seg = view.segment_of()
    num = tensor_sums(seg, before.abs())
    den = tensor_sums(seg, after.abs())
    alpha = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    return after * alpha[seg]


def compensation_range(view: DeviceView, w: torch.Tensor, mean_factor: torch.Tensor, var_factor: torch.Tensor,
                       slack: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds (per element) of the compensation factor alpha = sum|w| / sum|w f| of each tensor, for
    independent decay factors f_i of mean ``mean_factor`` and variance ``var_factor``: the mean decay
    sum|w| E f / sum|w| +- ``slack`` of its standard deviations (a slack far beyond what k >= 100
    devices produce)."""
    seg = view.segment_of()
    sw = tensor_sums(seg, w.abs())
    mean = tensor_sums(seg, w.abs() * mean_factor) / sw.clamp(min=1e-300)
    std = tensor_sums(seg, w.abs() ** 2 * var_factor).sqrt() / sw.clamp(min=1e-300)
    alpha_lo = 1 / (mean + slack * std)
    alpha_hi = 1 / (mean - slack * std).clamp(min=1e-12)
    return alpha_lo[seg], alpha_hi[seg]
