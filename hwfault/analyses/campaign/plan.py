"""Statistical fault-injection planning (Leveugle et al., DATE 2009).

n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), with N the fault population, e the margin of error,
t the two-sided normal quantile of the confidence (1.96 at 95%, 2.576 at 99%; using the one-sided
quantile undersizes the sample) and p the expected proportion (0.5 when unknown, the worst case).
For an effectively infinite population, n = t^2 p (1 - p) / e^2: about 9,604 at 95%/1% and about
16,590 at 99%/1%.
"""

from __future__ import annotations

import math

from scipy import stats

from ...errors import ConstraintError


def sample_size(margin: float, confidence: float, population: int | None = None, p: float = 0.5) -> int:
    """Trials needed for a proportion within +-``margin`` at ``confidence`` (``population=None``: infinite)."""
    if not (0 < margin < 1):
        raise ConstraintError(f"expected --margin in (0, 1), got {margin}")
    if not (0 < confidence < 1):
        raise ConstraintError(f"expected --confidence in (0, 1), got {confidence}")
    if not (0 < p < 1):
        raise ConstraintError(f"expected p in (0, 1), got {p}")
    t = float(stats.norm.ppf(0.5 + confidence / 2))
    n_inf = t * t * p * (1 - p) / (margin * margin)
    if population is None:
        return math.ceil(n_inf)
    if population < 1:
        raise ConstraintError(f"expected a fault population >= 1, got {population}")
    n = population / (1 + margin * margin * (population - 1) / (t * t * p * (1 - p)))
    return min(population, math.ceil(n))


def proportional_allocation(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` trials over strata in proportion to their sizes (largest remainders), each >= 0."""
    whole = sum(sizes.values())
    if whole == 0:
        return {k: 0 for k in sizes}
    raw = {k: total * v / whole for k, v in sizes.items()}
    out = {k: int(math.floor(r)) for k, r in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return out
