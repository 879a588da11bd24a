"""Intervals for Monte-Carlo aggregates: Wilson and Clopper-Pearson for rates, t and bootstrap for means."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval from beta quantiles."""
    if n == 0:
        return (0.0, 1.0)
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return (lo, hi)


def t_interval_from(mean: float, std: float, n: int, confidence: float = 0.95,
                    domain: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student t interval for a mean from its sample mean, sample std (ddof 1) and size, clipped to
    ``domain`` (e.g. (0, 1) for an accuracy) where given."""
    if n < 2 or not std > 0:
        lo = hi = mean
    else:
        h = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        lo, hi = mean - h, mean + h
    if domain is not None:
        lo, hi = min(max(lo, domain[0]), domain[1]), min(max(hi, domain[0]), domain[1])
    return (lo, hi)


def t_interval(values: Sequence[float], confidence: float = 0.95,
               domain: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student t interval for the mean, clipped to ``domain`` where given."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean()) if v.size else math.nan
    return t_interval_from(m, float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size), confidence, domain)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean (seeded, so reproducible)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        m = float(v.mean()) if v.size else math.nan
        return (m, m)
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(resamples, v.size), replace=True).mean(axis=1)
    a = (1 - confidence) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))
