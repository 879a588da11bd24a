"""Worst-case search inside a chip's covering set (a Minkowski sum of per-fault sets).

- :func:`one_step`: the linear maximisation over the composite set — the sum of each part's
  maximiser of a.g (Eq. 10 generalised: sign vertex for boxes, sigma^2 g / ||sigma g|| for
  ellipsoids, greedy best candidates for discrete sets);
- :func:`multi_step`: projected ascent from the one-step point, each continuous part projected onto
  its own set, discrete parts re-solved greedily at each iterate; the best iterate is kept;
- :func:`bit_search`: for discrete parts (bit flips, stuck-at cells), a progressive search in the
  style of the bit-flip attack (Rakin et al. 2019): rank candidates by gradient per tensor, evaluate
  the best candidate of each tensor, apply the one that hurts most, re-evaluate, until the budget
  is spent.

Every returned perturbation is re-checked part by part with ``contains``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import progress
from ..constraints import CandidateSet, SumSet
from ..evaluation import EvalResult, evaluate, finite_gradient, loss_and_grad
from ..params import Selection, perturbed
from .results import WorstCase


def _worse(a: EvalResult, b: EvalResult) -> bool:
    la = a.loss if not math.isnan(a.loss) else math.inf
    lb = b.loss if not math.isnan(b.loss) else math.inf
    return (a.accuracy, -la) < (b.accuracy, -lb)


def _total(parts) -> torch.Tensor:
    return torch.stack([p.double() for p in parts]).sum(0).float()


def _check(cset: SumSet, parts) -> None:
    if not cset.contains_parts(list(parts)):
        bad = [n for n, s, a in zip(cset.names, cset.parts, parts) if not s.contains(a)]
        raise RuntimeError(f"internal error: worst-case perturbation left its set (parts {bad})")


def _eval(model, data, sel, parts) -> EvalResult:
    with perturbed(sel, _total(parts)):
        return evaluate(model, data)


def one_step(model: nn.Module, data, cset: SumSet, *, selection: Selection, clean: EvalResult,
             probe=None) -> WorstCase:
    """Linear maximisation over the composite set at the fault-free weights."""
    pdata = data if probe is None else probe
    _, grads = loss_and_grad(model, pdata, selection.params)
    g, _ = finite_gradient(selection.flatten(grads))
    parts = [p.to(torch.float64) for p in cset.maximize_parts(g.double())]
    _check(cset, parts)
    r = _eval(model, data, selection, parts)
    first = float(torch.dot(_total(parts).double(), g.double()))
    return WorstCase("one_step", r.accuracy, r.loss, r.loss - clean.loss, tuple(parts),
                     {"first_order": first, "nonfinite": r.nonfinite})


def multi_step(model: nn.Module, data, cset: SumSet, *, selection: Selection, clean: EvalResult,
               init: WorstCase, steps: int = 10, step_frac: float | None = None, probe=None) -> WorstCase:
    """Projected ascent from ``init`` (the one-step point); keeps the best iterate on the probe data."""
    pdata = data if probe is None else probe
    eta = 1.5 / steps if step_frac is None else step_frac
    parts = list(init.parts)
    best_parts, best_r, best_step = parts, None, 0
    for j in range(steps + 1):
        with perturbed(selection, _total(parts)):
            r, grads = loss_and_grad(model, pdata, selection.params)
        if best_r is None or _worse(r, best_r):
            best_parts, best_r, best_step = parts, r, j
        if j == steps:
            break
        g = selection.flatten(grads).double()
        if not bool(torch.isfinite(g).all()):
            break
        parts = [s.maximize(g).double() if isinstance(s, CandidateSet) else s.project(a + eta * s.maximize(g)).double()
                 for s, a in zip(cset.parts, parts)]
    _check(cset, best_parts)
    r = best_r if probe is None else _eval(model, data, selection, best_parts)
    return WorstCase("multi_step", r.accuracy, r.loss, r.loss - clean.loss, tuple(best_parts),
                     {"steps": steps, "best_step": best_step, "nonfinite": r.nonfinite})


def _segments(selection: Selection) -> list[tuple[int, int]]:
    out, i = [], 0
    for p in selection.params:
        out.append((i, i + p.numel()))
        i += p.numel()
    return out


def bit_search(model: nn.Module, data, cset: SumSet, *, selection: Selection, clean: EvalResult,
               base: WorstCase | None = None, max_rounds: int = 40, until: float | None = None,
               probe=None, history_data=None, keep_best: bool = False, candidates: int = 1) -> WorstCase:
    """Progressive search over the discrete parts of ``cset``; continuous parts stay at ``base``.

    With ``keep_best``, ``base`` (the one-step point) is a candidate too and the strongest of it and
    every round's state is returned (``best_round`` 0 = ``base``), so the search is never weaker
    than one step — as multi-step, which starts there.

    Each round takes the gradient at the current weights, and for every tensor the best unused
    candidates by linear gain (``chunk`` of them: the budget spread over ``max_rounds`` rounds, at
    least one), evaluates the loss with each tensor's chunk applied, and keeps the chunk that raises
    the loss most. Stops when every budget is spent, no candidate gains, or accuracy <= ``until``.
    With single flips per round (``until`` set), the ``candidates`` best flips of each tensor are
    evaluated separately. ``history`` records the accuracy after each round and the flips so far.
    """
    pdata = data if probe is None else probe
    hdata = data if history_data is None else history_data
    disc = [i for i, s in enumerate(cset.parts) if isinstance(s, CandidateSet)]
    parts = [torch.zeros(selection.numel, dtype=torch.float64) if i in disc or base is None else base.parts[i].double()
             for i in range(len(cset.parts))]
    used = {i: torch.zeros(selection.numel, dtype=torch.bool) for i in disc}
    spent = {i: 0 for i in disc}
    total = sum(cset.parts[i].n for i in disc)
    chunk = max(1, math.ceil(total / max_rounds)) if until is None else 1
    segs = _segments(selection)
    history: list[float] = []
    flips: list[int] = []
    r_now = _eval(model, hdata, selection, parts)
    best = (r_now, list(parts), 0, 0)
    if keep_best and base is not None:
        best = (_eval(model, hdata, selection, base.parts), list(base.parts), 0, 0)
    with progress.task("bit search", total) as advance:
        while any(spent[i] < cset.parts[i].n for i in disc):
            if until is not None and r_now.accuracy <= until:
                break
            with perturbed(selection, _total(parts)):
                _, grads = loss_and_grad(model, pdata, selection.params)
            g = selection.flatten(grads).double()
            if not bool(torch.isfinite(g).all()):
                break
            cands = []
            for i in disc:
                s = cset.parts[i]
                left = s.n - spent[i]
                if left <= 0:
                    continue
                gain = g[:, None] * s._finite()
                top, choice = gain.max(dim=1)
                top = torch.where(used[i], torch.full_like(top, -math.inf), top)
                for a, b in segs:
                    seg_best = top[a:b]
                    m = min(chunk, left, int((seg_best > 0).sum()))
                    if m <= 0:
                        continue
                    if chunk == 1:
                        for e in torch.topk(seg_best, min(candidates, int((seg_best > 0).sum()))).indices + a:
                            cands.append((i, e.reshape(1), choice[e].reshape(1)))
                        continue
                    el = torch.topk(seg_best, m).indices + a
                    cands.append((i, el, choice[el]))
            if not cands:
                break
            scored = []
            for i, el, ch in cands:
                trial = list(parts)
                trial[i] = parts[i].clone()
                trial[i][el] = cset.parts[i].deltas.double()[el, ch]
                with perturbed(selection, _total(trial)):
                    r = evaluate(model, pdata)
                scored.append((r, i, el, trial))
            r, i, el, trial = min(scored, key=lambda t: (t[0].accuracy, -(t[0].loss if not math.isnan(t[0].loss) else math.inf)))
            parts = trial
            used[i][el] = True
            spent[i] += el.numel()
            advance(el.numel())
            r_now = r if hdata is pdata else _eval(model, hdata, selection, parts)
            history.append(r_now.accuracy)
            flips.append(sum(spent.values()))
            if _worse(r_now, best[0]):
                best = (r_now, list(parts), len(history), flips[-1])
    if not keep_best:
        best = (r_now, parts, len(history), sum(spent.values()))
    r, parts, best_round, _ = best
    n_flips = sum(int(torch.count_nonzero(parts[i])) for i in disc)  # changed weights (bits or cells)
    _check(cset, parts)
    return WorstCase("bit_search", r.accuracy, r.loss, r.loss - clean.loss, tuple(parts),
                     {"flips": n_flips, "budget": total, "best_round": best_round, "history": history,
                      "flips_history": flips, "nonfinite": r.nonfinite})
