"""Campaign planning and intervals, against the formulas and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from hwfault.analyses.campaign.plan import proportional_allocation, sample_size
from hwfault.stats import bootstrap_interval, clopper_pearson, t_interval, wilson
from hwfault.errors import ConstraintError


def test_sample_size_infinite_population():
    assert sample_size(0.01, 0.95) == 9604
    assert 16_580 <= sample_size(0.01, 0.99) <= 16_650


@pytest.mark.parametrize("N", [10, 1000, 38_160 * 32, 10**9])
@pytest.mark.parametrize("e, c", [(0.01, 0.95), (0.05, 0.99), (0.02, 0.9)])
def test_sample_size_finite_population_follows_leveugle(N, e, c):
    t = stats.norm.ppf(1 - (1 - c) / 2)  # two-sided
    exact = N / (1 + e**2 * (N - 1) / (t**2 * 0.25))
    assert sample_size(e, c, N) == min(N, math.ceil(exact))
    assert sample_size(e, c, N) <= sample_size(e, c)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_sample_size_rejects_bad_margin_and_confidence(bad):
    with pytest.raises(ConstraintError, match="margin"):
        sample_size(bad, 0.95)
    with pytest.raises(ConstraintError, match="confidence"):
        sample_size(0.01, bad)


def test_allocation_is_proportional_and_exact():
    alloc = proportional_allocation({"a": 100, "b": 300, "c": 1}, 1000)
    assert sum(alloc.values()) == 1000 and alloc["b"] == pytest.approx(3 * alloc["a"], abs=1)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 1000), (500, 1000)])
@pytest.mark.parametrize("conf", [0.95, 0.99])
def test_rate_intervals_match_scipy(k, n, conf):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    assert wilson(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-9)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
    assert clopper_pearson(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_mean_intervals():
    v = np.random.default_rng(0).normal(0.9, 0.05, 200)
    ref = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert t_interval(v) == pytest.approx(ref, abs=1e-12)
    lo, hi = bootstrap_interval(v)
    assert lo < v.mean() < hi and (hi - lo) == pytest.approx(ref[1] - ref[0], rel=0.2)
