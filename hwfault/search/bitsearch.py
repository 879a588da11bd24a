"""Progressive bit search over the discrete parts of a covering set (bit flips, stuck-at cells), in
the style of the bit-flip attack (Rakin et al. 2019): rank candidates by gradient per tensor,
evaluate the best candidate of each tensor, apply the one that hurts most, re-evaluate, until the
budget is spent. Every returned perturbation is re-checked part by part with ``contains``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import progress
from ..constraints import CandidateSet, SumSet
from ..evaluation import EvalResult, evaluate, loss_and_grad
from ..params import Selection, perturbed
from .ascent import stronger, strongest
from .results import WorstCase, check_parts, evaluate_parts, task_extra, total


def _applied(parts: list, i: int, el: torch.Tensor, values: torch.Tensor) -> list:
    """``parts`` with part ``i`` set to ``values`` at elements ``el`` (a copy of that part only)."""
    out = list(parts)
    out[i] = parts[i].clone()
    out[i][el] = values
    return out


def reached(r: EvalResult, until: float) -> bool:
    """Whether an evaluation reached the target value ``until`` of the task's headline metric (accuracy
    down to it; perplexity or MSE up to it)."""
    return r.metric <= until if r.higher_is_better else r.metric >= until


def bit_search(model: nn.Module, data, cset: SumSet, *, selection: Selection, clean: EvalResult,
               base: WorstCase | None = None, max_rounds: int = 40, until: float | None = None,
               probe=None, history_data=None, keep_best: bool = False, candidates: int = 1,
               tensors: int | None = None) -> WorstCase:
    """Progressive search over the discrete parts of ``cset``; continuous parts stay at ``base``.

    With ``keep_best``, ``base`` (the one-step point) is a candidate too and the strongest of it and
    every round's state is returned (``best_round`` 0 = ``base``), so the search is never weaker
    than one step — as multi-step, which starts there.

    Each round takes the gradient at the current weights, and for every tensor the best unused
    candidates by linear gain (``chunk`` of them: the budget spread over ``max_rounds`` rounds, at
    least one), evaluates the loss with each tensor's chunk applied, and keeps the chunk that raises
    the loss most. Stops when every budget is spent, no candidate gains, or accuracy <= ``until``.
    With single flips per round (``until`` set), the ``candidates`` best flips of each tensor are
    evaluated separately. ``tensors``: evaluate only that many candidates per round, those of the
    largest linear gain (default: every tensor's). ``history`` records the accuracy after each round
    and the flips so far.
    """
    pdata = data if probe is None else probe
    hdata = data if history_data is None else history_data
    disc = [i for i, s in enumerate(cset.parts) if isinstance(s, CandidateSet)]
    parts = [torch.zeros(selection.numel, dtype=torch.float64) if i in disc or base is None else base.parts[i].double()
             for i in range(len(cset.parts))]
    used = {i: torch.zeros(selection.numel, dtype=torch.bool) for i in disc}
    spent = {i: 0 for i in disc}
    budget = sum(cset.parts[i].n for i in disc)
    chunk = max(1, math.ceil(budget / max_rounds)) if until is None else 1
    segs = selection.segments()
    history: list[float] = []
    flips: list[int] = []
    r_now = evaluate_parts(model, hdata, selection, parts)
    best = (r_now, list(parts), 0, 0)
    if keep_best and base is not None:
        best = (evaluate_parts(model, hdata, selection, base.parts), list(base.parts), 0, 0)
    with progress.task("bit search", budget) as advance:
        while any(spent[i] < cset.parts[i].n for i in disc):
            if until is not None and reached(r_now, until):
                break
            with perturbed(selection, total(parts)):
                _, grads = loss_and_grad(model, pdata, selection.params)
            g = selection.flatten(grads).double().cpu()
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
                            cands.append((i, e.reshape(1), choice[e].reshape(1), float(top[e])))
                        continue
                    el = torch.topk(seg_best, m).indices + a
                    cands.append((i, el, choice[el], float(top[el].sum())))
            if not cands:
                break
            if tensors is not None and len(cands) > tensors:
                cands = sorted(cands, key=lambda c: -c[3])[:tensors]
            cands = [c[:3] for c in cands]
            scored = []  # (result, part, elements, choices): one candidate's perturbation alive at a time
            for i, el, ch in cands:
                trial = _applied(parts, i, el, cset.parts[i].deltas.double()[el, ch])
                with perturbed(selection, total(trial)):
                    r = evaluate(model, pdata)
                del trial
                scored.append((r, i, el, ch))
            r, i, el, ch = strongest(scored, key=lambda t: t[0])
            parts = _applied(parts, i, el, cset.parts[i].deltas.double()[el, ch])
            used[i][el] = True
            spent[i] += el.numel()
            advance(el.numel())
            r_now = r if hdata is pdata else evaluate_parts(model, hdata, selection, parts)
            history.append(r_now.metric)
            flips.append(sum(spent.values()))
            if stronger(r_now, best[0]):
                best = (r_now, list(parts), len(history), flips[-1])
    if not keep_best:
        best = (r_now, parts, len(history), sum(spent.values()))
    r, parts, best_round, _ = best
    n_flips = sum(int(torch.count_nonzero(parts[i])) for i in disc)  # changed weights (bits or cells)
    check_parts(cset, parts)
    return WorstCase("bit_search", r.accuracy, r.loss, r.loss - clean.loss, tuple(parts),
                     {**task_extra(r), "flips": n_flips, "budget": budget, "best_round": best_round, "history": history,
                      "flips_history": flips, "nonfinite": r.nonfinite})
