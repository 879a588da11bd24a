"""Corruption methods: invariants, restore guarantees, and the paper's findings on digits-cnn."""

import math

import numpy as np
import pytest
import torch

import hwfault as hw
import hwfault.search.methods as corruption
from hwfault.evaluation import logits

EPS = [0.01, 0.1, 0.3, 1.0, 3.0]


@pytest.fixture(scope="module")
def cnn_sweep():
    return hw.sweep("digits-cnn", "digits", epsilons=EPS, norm=2, trials=10, seed=0)


def test_gradient_beats_random_and_multistep_beats_gradient(cnn_sweep):
    rnd, grad, ms = (cnn_sweep.method(m) for m in ("random", "gradient", "multistep"))
    for e in EPS:
        assert grad[e].accuracy <= rnd[e].accuracy
        assert grad[e].loss_change >= rnd[e].loss_change
        assert ms[e].accuracy <= grad[e].accuracy
        assert rnd[e].extra["accuracy_min"] <= rnd[e].accuracy <= rnd[e].extra["accuracy_max"]


def test_gradient_reaches_chance_while_random_stays_near_clean(cnn_sweep):
    clean = cnn_sweep.clean["accuracy"]
    rnd, grad = cnn_sweep.method("random"), cnn_sweep.method("gradient")
    hits = [e for e in EPS if grad[e].accuracy <= 0.15 and rnd[e].accuracy >= clean - 0.02]
    assert hits, [(e, grad[e].accuracy, rnd[e].accuracy) for e in EPS]


def test_first_order_estimate_is_reported_and_tight_at_small_eps(cnn_sweep):
    pt = cnn_sweep.method("gradient")[0.01]
    assert pt.extra["first_order"] > 0
    assert pt.loss_change == pytest.approx(pt.extra["first_order"], rel=0.3)


def test_theorem1_slopes(mlp, digits):
    """Sun et al. Theorem 1, measured in float64: loss change ~ eps (gradient) vs ~ eps^2 (random)."""
    m = hw.load_model("digits-mlp").double()
    x, y = digits.tensors
    data = (x.double(), y)
    eps = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    ball = hw.LpBall(p=2)
    g = [p.loss_change for p in hw.gradient(m, data, ball, epsilons=eps)]
    r = [p.loss_change for p in hw.random(m, data, ball, epsilons=eps, trials=20, antithetic=True)]
    slope = lambda v: np.polyfit(np.log(eps), np.log(v), 1)[0]  # noqa: E731
    assert min(g) > 0 and min(r) > 0
    assert slope(g) == pytest.approx(1.0, abs=0.15)
    assert slope(r) == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize("method", ["random", "gradient", "multistep"])
def test_eps_zero_is_bit_identical(method, cnn, digits):
    clean = logits(cnn, digits)
    kw = {"trials": 2} if method == "random" else {"steps": 2} if method == "multistep" else {}
    res = corruption.METHODS[method](cnn, digits, hw.LpBall(p=2), epsilons=[0.0], **kw)
    base = hw.evaluate(cnn, digits)
    assert res[0.0].loss == base.loss and res[0.0].accuracy == base.accuracy
    sel = hw.select(cnn)
    with hw.perturbed(sel, hw.LpBall(p=2, eps=0.0).maximize(torch.ones(sel.numel))):
        assert torch.equal(logits(cnn, digits), clean)


@pytest.mark.parametrize("method", ["random", "gradient", "multistep"])
@pytest.mark.parametrize("p", [2, math.inf])
def test_weights_restored_after_every_method(method, p, cnn, digits, snapshot):
    take, same = snapshot
    snap = take(cnn)
    kw = {"trials": 3} if method == "random" else {"steps": 3} if method == "multistep" else {}
    corruption.METHODS[method](cnn, digits, hw.LpBall(p=p, n=500), epsilons=[0.1, 5.0], **kw)
    assert same(cnn, snap)


@pytest.mark.parametrize("method, target", [("random", "evaluate"), ("gradient", "evaluate"),
                                            ("multistep", "loss_and_grad")])
def test_weights_restored_when_evaluation_raises(method, target, cnn, digits, snapshot, monkeypatch):
    take, same = snapshot
    snap = take(cnn)
    real = getattr(corruption, target)
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-way, while a corruption is applied
            assert not same(cnn, snap)
            raise RuntimeError("evaluation failed")
        return real(*a, **k)

    monkeypatch.setattr(corruption, target, flaky)
    kw = {"trials": 3} if method == "random" else {"steps": 4} if method == "multistep" else {}
    with pytest.raises(RuntimeError, match="evaluation failed"):
        corruption.METHODS[method](cnn, digits, hw.LpBall(p=2), epsilons=[0.5, 1.0, 2.0], **kw)
    assert same(cnn, snap)


def test_random_is_reproducible_and_uses_common_directions(cnn, digits):
    a = hw.random(cnn, digits, hw.LpBall(p=2), epsilons=[2.0, 4.0], trials=4, seed=7)
    b = hw.random(cnn, digits, hw.LpBall(p=2), epsilons=[4.0], trials=4, seed=7)
    assert a[4.0].extra["trial_accuracies"] == b[4.0].extra["trial_accuracies"]
    c = hw.random(cnn, digits, hw.LpBall(p=2), epsilons=[4.0], trials=4, seed=8)
    assert c[4.0].extra["trial_accuracies"] != b[4.0].extra["trial_accuracies"]


@pytest.mark.parametrize("probe", [None, "train"])
def test_the_probe_split_is_where_the_gradient_comes_from(probe):
    """--probe train takes the gradient on the train split and evaluates on the test split: the sweep's
    point equals Eq. 10 built by hand from the train-split gradient and evaluated on the test data."""
    res = hw.sweep("digits-cnn", "digits", epsilons=[0.3], methods="gradient", probe=probe)
    assert res.probe == ("train split" if probe else "evaluation data (test split)")
    model, test = hw.load_model("digits-cnn", requires_grad=False), hw.load_data("digits", "test")
    source = hw.load_data("digits", probe or "test")
    sel = hw.select(model)
    _, grads = hw.loss_and_grad(model, source, sel.params)
    g = sel.flatten(grads)
    a = hw.LpBall(p=2, eps=0.3).maximize(g)
    with hw.perturbed(sel, a):
        want = hw.evaluate(model, test)
    got = res.method("gradient")[0.3]
    assert (got.accuracy, got.loss) == (want.accuracy, want.loss)
    assert got.extra["first_order"] == pytest.approx(float(torch.dot(a.double(), g.double())), rel=1e-9)


def test_sparse_budget_is_respected(cnn, digits):
    sel = hw.select(cnn)
    _, grads = hw.loss_and_grad(cnn, digits, sel.params)
    a = hw.LpBall(p=2, eps=1.0, n=100).maximize(sel.flatten(grads))
    assert int(torch.count_nonzero(a)) == 100
    res = hw.multistep(cnn, digits, hw.LpBall(p=2, n=100), epsilons=[1.0], steps=3)
    grad = hw.gradient(cnn, digits, hw.LpBall(p=2, n=100), epsilons=[1.0])
    assert res[1.0].accuracy <= grad[1.0].accuracy


def test_sweep_json_contract(cnn_sweep):
    d = cnn_sweep.to_dict()
    for key in ("model", "data", "norm", "n", "clean", "results"):
        assert key in d
    assert set(d["clean"]) >= {"accuracy", "loss"}
    for r in d["results"]:
        assert {"method", "eps", "accuracy", "loss", "loss_change"} <= set(r)
        if r["method"] == "random":
            assert {"accuracy_min", "accuracy_max", "trials"} <= set(r)
        if r["method"] == "gradient":
            assert "first_order" in r
    assert d["norm"] == 2 and d["n"] == "all"


def test_a_gradient_sweep_takes_its_clean_row_from_the_gradient_pass(monkeypatch):
    """The clean row of a sweep with gradient methods comes from the same forward pass as the gradient
    (one pass saved), and equals a plain evaluation exactly; gradient and multi-step share that g."""
    import hwfault as hw
    import hwfault.search.methods as methods

    model = hw.load_model("digits-cnn")
    data = hw.load_data("digits")
    calls = []
    real = methods.loss_and_grad
    monkeypatch.setattr(methods, "loss_and_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = hw.sweep(model, data, epsilons=[0.1], methods=["gradient", "multistep"], steps=2).to_dict()
    assert r["clean"] == hw.evaluate(model, data).row()
    # one gradient pass for the clean row and both methods' start, then the ascent's own steps: adding
    # the gradient method to a multi-step sweep adds no gradient pass
    both = len(calls)
    calls.clear()
    hw.sweep(model, data, epsilons=[0.1], methods=["multistep"], steps=2)
    assert both == len(calls) >= 1
