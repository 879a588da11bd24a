"""Quantisation implied by the chip's number format: round to nearest in the stored format.

The realisation is deterministic (w_q - w). Covering set: the box |a_i| <= step_i / 2, which
contains every rounding of w to the grid (Weng et al. 2020 treat quantisation as such a
non-adversarial perturbation); its worst case rounds every weight the wrong way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constraints import Box
from .base import FaultModel


@dataclass(frozen=True)
class Quantization(FaultModel):
    kind = "quantization"
    severity_name = "step"

    def sample(self, view, values, gen):
        return view.w_q.double().clone()

    def constraint(self, view, coverage):
        half = view.step().double() / 2
        return Box(-half, half)

    def scaled(self, factor):
        return self

    @property
    def severity(self):
        return 1.0

    def describe(self):
        return {"kind": self.kind}
