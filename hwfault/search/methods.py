"""Parameter-corruption methods with one call shape.

``method(model, data, constraint, *, epsilons, selection=None, ...) -> CorruptionResult``

- :func:`random`: Monte-Carlo over random corruptions in the set (Sun et al. 2021, Eq. 5);
- :func:`gradient`: the one-step gradient-based corruption, the closed-form maximiser of the
  first-order loss change (Eq. 10);
- :func:`multistep`: projected gradient ascent in weight space (Zhang et al. 2021), started from the
  one-step solution and keeping the best iterate, so it is never weaker than :func:`gradient` on the
  probe data.

The gradient is taken on ``probe`` data (default: the evaluation data itself, as the paper does).
Every perturbation is applied in place and undone bit-exactly (:func:`hwfault.params.perturbed`),
and every returned perturbation is re-checked with ``constraint.contains``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import progress, validate
from ..constraints import LpBall
from ..errors import ConstraintError
from ..evaluation import EvalResult, evaluate, finite_gradient, loss_and_grad
from ..params import Selection, perturbed, select
from ..rng import trial_seed
from .results import CorruptionPoint, CorruptionResult


def _check_epsilons(epsilons: Sequence[float]) -> list[float]:
    eps = [float(e) for e in epsilons]
    if not eps:
        raise ConstraintError("expected at least one eps")
    for e in eps:
        if not math.isfinite(e) or e < 0:
            raise ConstraintError(f"expected eps >= 0 and finite, got {e}")
    return eps


def _setup(model: nn.Module, data, constraint: LpBall, selection: Selection | None, clean: EvalResult | None):
    sel = selection if selection is not None else select(model)
    base = clean if clean is not None else evaluate(model, data)
    return sel, base


def _verify(constraint: LpBall, a: torch.Tensor) -> None:
    if not constraint.contains(a):
        raise RuntimeError(f"internal error: corruption left the constraint set {constraint.to_dict()} "
                           f"(norm {constraint.norm(a):.6g})")


def random(model: nn.Module, data, constraint: LpBall, *, epsilons: Sequence[float],
           selection: Selection | None = None, trials: int = 10, seed: int = 0, antithetic: bool = False,
           clean: EvalResult | None = None) -> CorruptionResult:
    """Random corruption (Eq. 5), ``trials`` draws per eps.

    Trial t uses the same random direction at every eps (common random numbers, seeded from
    ``(seed, t)``), so curves over eps are comparable. ``antithetic=True`` pairs each direction with
    its negation, which cancels the first-order term of the loss change exactly in the mean
    (a variance reduction for measuring the second-order behaviour of Theorem 1).
    """
    trials = validate.trials("--trials", trials)
    seed = validate.seed(seed)
    eps_list = _check_epsilons(epsilons)
    sel, base = _setup(model, data, constraint, selection, clean)
    k, dtype = sel.numel, sel.params[0].dtype
    unit = constraint.with_eps(1.0)
    accs: list[list[float]] = [[] for _ in eps_list]
    losses: list[list[float]] = [[] for _ in eps_list]
    with progress.task("random corruption", trials * len(eps_list)) as advance:
        for t in range(trials):  # one direction at a time (drawn from (seed, t)), never all of them at once
            j, sign = (t // 2, -1.0 if t % 2 else 1.0) if antithetic else (t, 1.0)
            gen = torch.Generator().manual_seed(trial_seed(seed, j))
            d = sign * unit.random(k, gen, dtype=torch.float64)
            for i, e in enumerate(eps_list):
                a = (d * e).to(dtype)
                _verify(constraint.with_eps(e), a)
                with perturbed(sel, a):
                    r = evaluate(model, data)
                accs[i].append(r.accuracy)
                losses[i].append(r.loss)
                advance(1)
    points = []
    for i, e in enumerate(eps_list):
        acc, loss = np.asarray(accs[i]), np.asarray(losses[i])
        change = loss - base.loss
        points.append(CorruptionPoint("random", e, float(acc.mean()), float(loss.mean()), float(change.mean()), {
            "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
            "accuracy_std": float(acc.std(ddof=1)) if trials > 1 else 0.0,
            "loss_change_std": float(change.std(ddof=1)) if trials > 1 else 0.0,
            "trials": trials, "antithetic": antithetic, "trial_accuracies": [float(v) for v in acc],
        }))
    return CorruptionResult("random", tuple(points))


def _probe_data(data, probe):
    return data if probe is None else probe


def gradient(model: nn.Module, data, constraint: LpBall, *, epsilons: Sequence[float],
             selection: Selection | None = None, probe=None, clean: EvalResult | None = None) -> CorruptionResult:
    """One-step gradient-based corruption (Eq. 10): a = argmax_{a in S} a.g with g taken on ``probe``.

    Each point reports ``first_order`` = a.g = eps ||top_n(g)||_q, the first-order estimate of the
    loss change (Eq. 11; on the probe data).
    """
    eps_list = _check_epsilons(epsilons)
    sel, base = _setup(model, data, constraint, selection, clean)
    pdata = _probe_data(data, probe)
    with progress.task("gradient corruption", len(eps_list) + 1) as advance:
        _, grads = loss_and_grad(model, pdata, sel.params)
        g, nonfinite = finite_gradient(sel.flatten(grads))
        advance(1)
        points = []
        for e in eps_list:
            c = constraint.with_eps(e)
            a = c.maximize(g)
            _verify(c, a)
            with perturbed(sel, a):
                r = evaluate(model, data)
            extra = {"first_order": float(torch.dot(a.double(), g.double())),
                     "grad_norm_q": c.first_order(g) / e if e else 0.0}
            if nonfinite:
                extra["gradient_nonfinite"] = nonfinite
            points.append(CorruptionPoint("gradient", e, r.accuracy, r.loss, r.loss - base.loss, extra))
            advance(1)
    return CorruptionResult("gradient", tuple(points))


def _worse(a: EvalResult, b: EvalResult) -> bool:
    """True if ``a`` is a stronger corruption than ``b``: lower accuracy, then higher loss (NaN loss = +inf)."""
    la = a.loss if math.isfinite(a.loss) or a.loss == math.inf else math.inf
    lb = b.loss if math.isfinite(b.loss) or b.loss == math.inf else math.inf
    return (a.accuracy, -la) < (b.accuracy, -lb)


def multistep(model: nn.Module, data, constraint: LpBall, *, epsilons: Sequence[float],
              selection: Selection | None = None, probe=None, steps: int = 10, step_size: float | None = None,
              clean: EvalResult | None = None) -> CorruptionResult:
    """Multi-step corruption: projected gradient ascent in weight space.

    a_0 = the one-step solution (Eq. 10); a_{j+1} = Proj_S(a_j + d_j) with d_j the Eq. 10 direction
    of grad L(w + a_j) at budget ``step_size`` (default 1.5 eps / steps, as in a reimplementation of
    Zhang et al. 2021). The best iterate on the probe data — lowest accuracy, then highest loss — is
    returned, so the result is never weaker than the one-step corruption there.
    """
    if steps < 1:
        raise ConstraintError(f"expected steps >= 1, got {steps}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ConstraintError(f"expected step size > 0, got {step_size}")
    eps_list = _check_epsilons(epsilons)
    sel, base = _setup(model, data, constraint, selection, clean)
    pdata = _probe_data(data, probe)
    same = pdata is data
    points = []
    with progress.task("multi-step corruption", len(eps_list) * (steps + 1) + 1) as advance:
        _, grads0 = loss_and_grad(model, pdata, sel.params)
        g0, _ = finite_gradient(sel.flatten(grads0))
        advance(1)
        for e in eps_list:
            c = constraint.with_eps(e)
            eta = step_size if step_size is not None else 1.5 * e / steps
            step_set = c.with_eps(eta)
            a = c.maximize(g0)
            best_a, best_r, best_step = a, None, 0
            for j in range(steps + 1):
                with perturbed(sel, a):
                    r, grads = loss_and_grad(model, pdata, sel.params)
                if best_r is None or _worse(r, best_r):
                    best_a, best_r, best_step = a, r, j
                advance(1)
                if j == steps:
                    break
                g = sel.flatten(grads)
                if not bool(torch.isfinite(g).all()):
                    advance(steps - j)
                    break
                a = c.project(a + step_set.maximize(g))
            _verify(c, best_a)
            if same:
                r = best_r
            else:
                with perturbed(sel, best_a):
                    r = evaluate(model, data)
            points.append(CorruptionPoint("multistep", e, r.accuracy, r.loss, r.loss - base.loss, {
                "steps": steps, "step_size": eta, "best_step": best_step,
                "probe_accuracy": best_r.accuracy, "probe_loss": best_r.loss,
            }))
    return CorruptionResult("multistep", tuple(points))


METHODS = {"random": random, "gradient": gradient, "multistep": multistep}
