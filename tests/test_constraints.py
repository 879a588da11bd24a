"""The Lp-ball constraint set against references: closed form vs search, projection invariants."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from hwfault.constraints import LpBall, dual, parse_norm, top_n_mask
from hwfault.errors import ConstraintError

PS = [1.0, 1.5, 2.0, 3.0, math.inf]


def _g(k=40, seed=0):
    return torch.randn(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _norm(a, p):
    return float(torch.linalg.vector_norm(a, ord=p))


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", [None, 1, 7])
def test_closed_form_attains_dual_norm_and_lies_on_sphere(p, n):
    g = _g()
    c = LpBall(p=p, eps=0.3, n=n)
    a = c.maximize(g)
    h = torch.where(top_n_mask(g, n or g.numel()), g, torch.zeros_like(g))
    assert float(a @ g) == pytest.approx(0.3 * _norm(h, dual(p)), rel=1e-9)
    assert float(a @ g) == pytest.approx(c.first_order(g), rel=1e-12)
    assert _norm(a, p) == pytest.approx(0.3, rel=1e-9)
    assert int(torch.count_nonzero(a)) <= (n or g.numel())
    assert c.contains(a)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("n", [None, 5])
def test_closed_form_beats_random_search(p, n):
    """No random point of S (random direction, random or best support) does better than Eq. 10."""
    g = _g(30, seed=1)
    c = LpBall(p=p, eps=1.0, n=n)
    best = float(c.maximize(g) @ g)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3000):
        a = c.project(torch.randn(30, generator=gen, dtype=torch.float64) * 3)
        if _norm(a, p) > 0:
            a = a * (1.0 / _norm(a, p)) if math.isfinite(p) else a.sign()
            if n is not None:
                a = torch.where(top_n_mask(a, n), a, torch.zeros_like(a))
        assert c.contains(a)
        assert float(a @ g) <= best + 1e-9


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_closed_form_matches_numerical_optimiser(p):
    """SLSQP maximising a.g subject to ||a||_p = eps on the top-n support finds the same value."""
    g = _g(8, seed=3)
    n = 5
    c = LpBall(p=p, eps=0.7, n=n)
    support = top_n_mask(g, n).numpy()
    gs = g.numpy()[support]
    res = minimize(lambda v: -v @ gs, x0=np.full(n, 0.1), method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda v: np.sum(np.abs(v) ** p) ** (1 / p) - 0.7}])
    assert res.success
    assert -res.fun == pytest.approx(float(c.maximize(g) @ g), rel=1e-5)


@pytest.mark.parametrize("p", PS)
def test_projection_is_idempotent_and_inside(p):
    c = LpBall(p=p, eps=0.5, n=6)
    v = _g(25, seed=4) * 2
    a = c.project(v)
    assert c.contains(a)
    assert torch.allclose(c.project(a), a, atol=1e-12)
    inside = c.project(v * 1e-3)  # small and sparse enough after the top-n cut: only the mask applies
    assert c.contains(inside)


def test_l1_and_l2_projection_are_euclidean():
    v = _g(10, seed=5)
    for p in (1.0, 2.0):
        c = LpBall(p=p, eps=0.4)
        a = c.project(v).numpy()
        res = minimize(lambda x: np.sum((x - v.numpy()) ** 2), x0=np.zeros(10), method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda x: 0.4 - np.sum(np.abs(x) ** p) ** (1 / p)}])
        assert np.allclose(a, res.x, atol=1e-4)


def test_random_corruption_has_same_norm_and_sparsity():
    c = LpBall(p=2, eps=0.2, n=50)
    a = c.random(1000, torch.Generator().manual_seed(0))
    assert _norm(a.double(), 2) == pytest.approx(0.2, rel=1e-5)
    assert int(torch.count_nonzero(a)) == 50


def test_eps_zero_gives_zero():
    assert not torch.any(LpBall(p=2, eps=0.0).maximize(_g()))


@pytest.mark.parametrize("bad", [0.5, 0, -1, "x", float("nan")])
def test_bad_norm(bad):
    with pytest.raises(ConstraintError):
        parse_norm(bad)


@pytest.mark.parametrize("kw", [{"eps": -1}, {"eps": float("inf")}, {"n": 0}, {"n": -3}, {"p": 0.9}])
def test_bad_parameters(kw):
    with pytest.raises(ConstraintError):
        LpBall(**kw)
