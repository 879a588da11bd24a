"""Parameter-corruption methods with one call shape, over any constraint set.

``method(model, data, constraint, *, epsilons, selection=None, ...) -> CorruptionResult``

- :func:`random`: Monte-Carlo over random corruptions in the set (Sun et al. 2021, Eq. 5);
- :func:`gradient`: the one-step gradient-based corruption, the maximiser of the first-order loss
  change inside the set (Eq. 10 for an L_p ball: the closed form);
- :func:`multistep`: projected gradient ascent in weight space (Zhang et al. 2021), started from the
  one-step solution and keeping the best iterate, so it is never weaker than :func:`gradient` on the
  probe data.

``constraint`` is any :class:`~hwfault.constraints.ConstraintSet`; ``constraint.at(eps)`` is the set at
each eps (an L_p ball of radius eps; another set scaled by eps). A Minkowski sum (a chip's covering
set) is searched part by part; an L_p ball is a sum of one part. :func:`one_step` and
:func:`multi_step` are the same searches on a set as it is (the worst cases of ``hwfault estimate``),
returning the point itself as a :class:`~hwfault.search.results.WorstCase`.

The gradient is taken on ``probe`` data (default: the evaluation data itself, as the paper does).
Every perturbation is applied in place and undone bit-exactly (:func:`hwfault.params.perturbed`),
and every returned perturbation is re-checked against its set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import progress, validate
from ..constraints import ConstraintSet, LpBall, SumSet
from ..errors import ConstraintError
from ..evaluation import EvalResult, evaluate, finite_gradient, loss_and_grad
from ..params import Selection, perturbed, select
from ..rng import trial_seed
from ..runtime import single_thread
from .ascent import best_iterate, iterates, set_step
from .results import (CorruptionPoint, CorruptionResult, WorstCase, check_parts, evaluate_parts, mean_extra,
                      task_extra, total)


def _sum(constraint: ConstraintSet) -> SumSet:
    """A set as a Minkowski sum: itself if it is one, else a sum of one part."""
    if not isinstance(constraint, ConstraintSet):
        raise ConstraintError(f"expected a constraint set (hwfault.LpBall, a chip's covering set, ...), "
                              f"got {type(constraint).__name__}")
    return constraint if isinstance(constraint, SumSet) else SumSet((constraint,))


def _setup(model: nn.Module, data, selection: Selection | None, clean: EvalResult | None):
    sel = selection if selection is not None else select(model)
    base = clean if clean is not None else evaluate(model, data)
    return sel, base


def _verify(c: ConstraintSet, parts) -> None:
    if isinstance(c, SumSet):
        check_parts(c, parts)
    elif not c.contains(parts[0]):
        norm = f" (norm {c.norm(parts[0]):.6g})" if hasattr(c, "norm") else ""
        raise RuntimeError(f"internal error: corruption left the constraint set {c.to_dict()}{norm}")


def clean_and_gradient(model, data, sel: Selection) -> tuple[EvalResult, tuple[torch.Tensor, int]]:
    """The fault-free scores on ``data`` and ``(g, nonfinite)`` there, from one forward and backward
    pass: what a sweep's clean row and its gradient methods share."""
    r, grads = loss_and_grad(model, data, sel.params)
    return r, finite_gradient(sel.flatten(grads).cpu())  # the search's arithmetic runs on the CPU


def clean_gradient(model, data, sel: Selection, probe=None) -> torch.Tensor:
    """The flat gradient of the loss at the fault-free weights, on ``probe`` (default ``data``)."""
    return _gradient(model, _probe_data(data, probe), sel)[0]


def _gradient(model, pdata, sel: Selection) -> tuple[torch.Tensor, int]:
    return clean_and_gradient(model, pdata, sel)[1]


def _maximize(c: ConstraintSet, g: torch.Tensor) -> list[torch.Tensor]:
    """The linear maximiser as one tensor per part (an L_p ball keeps the gradient's dtype, as Eq. 10)."""
    return c.maximize_parts(g.double()) if isinstance(c, SumSet) else [c.maximize(g)]


def _one(parts) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else total(parts)


def random(model: nn.Module, data, constraint: ConstraintSet, *, epsilons: Sequence[float],
           selection: Selection | None = None, trials: int = 10, seed: int = 0, antithetic: bool = False,
           clean: EvalResult | None = None, map_trials=None) -> CorruptionResult:
    """Random corruption (Eq. 5), ``trials`` draws per eps.

    Trial t uses the same random direction at every eps (common random numbers, seeded from
    ``(seed, t)``), so curves over eps are comparable. ``antithetic=True`` pairs each direction with
    its negation, which cancels the first-order term of the loss change exactly in the mean
    (a variance reduction for measuring the second-order behaviour of Theorem 1).

    Trials run single-threaded (:func:`random_trial`: the same numbers in any process);
    ``map_trials(trials, advance)``, when given, runs them elsewhere (Dask workers: ``hwfault sweep
    --workers``) and returns their rows in trial order.
    """
    trials = validate.trials("--trials", trials)
    seed = validate.seed(seed)
    eps_list = validate.epsilons(epsilons)
    sel, base = _setup(model, data, selection, clean)
    with progress.task("random corruption", trials * len(eps_list)) as advance:
        if map_trials is not None:
            rows = map_trials(trials, advance)
        else:
            with single_thread():  # one direction at a time (drawn from (seed, t)), never all of them at once
                rows = [random_trial(model, data, constraint, selection=sel, epsilons=eps_list, seed=seed, trial=t,
                                     antithetic=antithetic, advance=advance) for t in range(trials)]
    points = []
    for i, e in enumerate(eps_list):
        acc, loss = np.asarray([r[i][0] for r in rows]), np.asarray([r[i][1] for r in rows])
        change = loss - base.loss
        points.append(CorruptionPoint("random", e, float(acc.mean()), float(loss.mean()), float(change.mean()), {
            "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
            "accuracy_std": float(acc.std(ddof=1)) if trials > 1 else 0.0,
            "loss_change_std": float(change.std(ddof=1)) if trials > 1 else 0.0,
            "trials": trials, "antithetic": antithetic, "trial_accuracies": [float(v) for v in acc],
            **mean_extra([r[i][2] for r in rows]),
        }))
    return CorruptionResult("random", tuple(points))


def random_trial(model: nn.Module, data, constraint: ConstraintSet, *, selection: Selection,
                 epsilons: Sequence[float], seed: int, trial: int, antithetic: bool = False,
                 advance=None) -> list[tuple[float, float, dict]]:
    """Random corruption trial ``trial`` at every eps: ``[(accuracy, loss, task metrics)]``, one per
    eps, a pure function of (seed, trial) (bit-identical in any process when run single-threaded)."""
    k, dtype = selection.numel, selection.params[0].dtype
    unit = constraint.at(1.0)
    j, sign = (trial // 2, -1.0 if trial % 2 else 1.0) if antithetic else (trial, 1.0)
    gen = torch.Generator().manual_seed(trial_seed(seed, j))
    parts = ([sign * p.random(k, gen, dtype=torch.float64) for p in unit.parts] if isinstance(unit, SumSet)
             else [sign * unit.random(k, gen, dtype=torch.float64)])
    out = []
    for e in epsilons:
        scaled = [(d * e).to(dtype) for d in parts]
        _verify(constraint.at(e), scaled)
        with perturbed(selection, _one(scaled)):
            r = evaluate(model, data)
        out.append((r.accuracy, r.loss, task_extra(r)))
        if advance:
            advance(1)
    return out


def _probe_data(data, probe):
    return data if probe is None else probe


def gradient(model: nn.Module, data, constraint: ConstraintSet, *, epsilons: Sequence[float],
             selection: Selection | None = None, probe=None, clean: EvalResult | None = None,
             grad: tuple[torch.Tensor, int] | None = None) -> CorruptionResult:
    """One-step gradient-based corruption (Eq. 10): a = argmax_{a in S} a.g with g taken on ``probe``.

    Each point reports ``first_order`` = a.g, the first-order estimate of the loss change (for an L_p
    ball: eps ||top_n(g)||_q, Eq. 11, with ``grad_norm_q`` = ||top_n(g)||_q), on the probe data, and
    ``gradient_nonfinite`` when some gradient entries were NaN/Inf (they are left out of the search).
    ``grad``: ``(g, nonfinite)`` on the probe, when the caller has it (:func:`clean_and_gradient`).
    """
    eps_list = validate.epsilons(epsilons)
    sel, base = _setup(model, data, selection, clean)
    pdata = _probe_data(data, probe)
    with progress.task("gradient corruption", len(eps_list) + 1) as advance:
        g, nonfinite = _gradient(model, pdata, sel) if grad is None else grad
        advance(1)
        points = []
        for e in eps_list:
            c = constraint.at(e)
            parts = _maximize(c, g)
            _verify(c, parts)
            a = _one(parts)
            with perturbed(sel, a):
                r = evaluate(model, data)
            extra = {**task_extra(r), "first_order": float(torch.dot(a.double(), g.double()))}
            if isinstance(c, LpBall):
                extra["grad_norm_q"] = c.first_order(g) / e if e else 0.0
            if nonfinite:
                extra["gradient_nonfinite"] = nonfinite
            points.append(CorruptionPoint("gradient", e, r.accuracy, r.loss, r.loss - base.loss, extra))
            advance(1)
    return CorruptionResult("gradient", tuple(points))


def _ball_step(c: LpBall, eta: float):
    """The ascent step in an L_p ball: the Eq. 10 direction of a ball of radius eta, then the exact
    projection back onto the ball."""
    step_set = c.with_eps(eta)
    return lambda parts, g, j: [c.project(parts[0] + step_set.maximize(g))]


def _ascend(model, pdata, sel: Selection, start, update, *, steps: int, advance=None):
    """The best iterate of projected ascent from ``start`` (values are evaluations on ``pdata``)."""
    def value_and_grad(parts):
        with perturbed(sel, _one(parts)):
            r, grads = loss_and_grad(model, pdata, sel.params)
        return r, sel.flatten(grads).cpu()

    seen = 0

    def counted():
        nonlocal seen
        for it in iterates(start, value_and_grad, update, steps=steps):
            seen += 1
            if advance:
                advance(1)
            yield it

    best = best_iterate(counted())
    if advance and seen < steps + 1:
        advance(steps + 1 - seen)
    return best


def multistep(model: nn.Module, data, constraint: ConstraintSet, *, epsilons: Sequence[float],
              selection: Selection | None = None, probe=None, steps: int = 10, step_size: float | None = None,
              clean: EvalResult | None = None, grad: tuple[torch.Tensor, int] | None = None) -> CorruptionResult:
    """Multi-step corruption: projected gradient ascent in weight space.

    a_0 = the one-step solution (Eq. 10); a_{j+1} = Proj_S(a_j + d_j) with d_j the Eq. 10 direction
    of grad L(w + a_j) at budget ``step_size`` (default 1.5 eps / steps, as in a reimplementation of
    Zhang et al. 2021); for a set other than a ball, d_j is ``step_size / eps`` times the set's own
    maximiser (default 1.5 / steps). The best iterate on the probe data (lowest accuracy, then highest
    loss) is returned, so the result is never weaker than the one-step corruption there.
    """
    steps = validate.integer("--steps", steps, lo=1)
    if step_size is not None:
        validate.positive("--step-size", step_size)
    eps_list = validate.epsilons(epsilons)
    sel, base = _setup(model, data, selection, clean)
    pdata = _probe_data(data, probe)
    same = pdata is data
    points = []
    with progress.task("multi-step corruption", len(eps_list) * (steps + 1) + 1) as advance:
        g0 = _gradient(model, pdata, sel)[0] if grad is None else grad[0]
        advance(1)
        for e in eps_list:
            c = constraint.at(e)
            eta = step_size if step_size is not None else 1.5 * e / steps
            update = _ball_step(c, eta) if isinstance(c, LpBall) else \
                set_step(_sum(c).parts, (step_size / e if e else 0.0) if step_size is not None else 1.5 / steps)
            best = _ascend(model, pdata, sel, _maximize(c, g0), update, steps=steps, advance=advance)
            _verify(c, best.point)
            if same:
                r = best.value
            else:
                with perturbed(sel, _one(best.point)):
                    r = evaluate(model, data)
            points.append(CorruptionPoint("multistep", e, r.accuracy, r.loss, r.loss - base.loss, {
                **task_extra(r), "steps": steps, "step_size": eta, "best_step": best.step,
                "probe_accuracy": best.value.accuracy, "probe_loss": best.value.loss,
            }))
    return CorruptionResult("multistep", tuple(points))


METHODS = {"random": random, "gradient": gradient, "multistep": multistep}


# ----------------------------------------------------------------------------- the worst cases of a set as it is

def one_step(model: nn.Module, data, cset: ConstraintSet, *, selection: Selection, clean: EvalResult,
             probe=None, grad: torch.Tensor | None = None) -> WorstCase:
    """The linear maximisation over the set (each part's maximiser) at the fault-free weights
    (``grad``: the flat gradient there, when the caller has it already)."""
    s = _sum(cset)
    g = _gradient(model, _probe_data(data, probe), selection)[0] if grad is None else grad
    parts = [p.to(torch.float64) for p in s.maximize_parts(g.double())]
    check_parts(s, parts)
    r = evaluate_parts(model, data, selection, parts)
    first = float(torch.dot(total(parts).double(), g.double()))
    return WorstCase("one_step", r.accuracy, r.loss, r.loss - clean.loss, tuple(parts),
                     {**task_extra(r), "first_order": first, "nonfinite": r.nonfinite})


def multi_step(model: nn.Module, data, cset: ConstraintSet, *, selection: Selection, clean: EvalResult,
               init: WorstCase, steps: int = 10, step_frac: float | None = None, probe=None,
               advance=None) -> WorstCase:
    """Projected ascent from ``init`` (the one-step point), each continuous part projected onto its own
    set and discrete parts re-solved greedily at each iterate; the best iterate on the probe data.
    ``advance(1)`` is called per iterate (``steps + 1`` in all), for a caller's progress bar."""
    s = _sum(cset)
    pdata = _probe_data(data, probe)
    best = _ascend(model, pdata, selection, list(init.parts), set_step(s.parts, 1.5 / steps if step_frac is None
                                                                        else step_frac), steps=steps,
                   advance=advance)
    check_parts(s, best.point)
    r = best.value if probe is None else evaluate_parts(model, data, selection, best.point)
    return WorstCase("multi_step", r.accuracy, r.loss, r.loss - clean.loss, tuple(best.point),
                     {**task_extra(r), "steps": steps, "best_step": best.step, "nonfinite": r.nonfinite})
