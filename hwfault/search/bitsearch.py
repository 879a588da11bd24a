"""Progressive bit search over the discrete parts of a covering set (bit flips, stuck-at cells,
flipped shared scales), in the style of the bit-flip attack (Rakin et al. 2019): rank candidates by
gradient per tensor, evaluate the best candidate of each tensor, apply the one that hurts most,
re-evaluate, until the budget is spent. A shared scale is ranked by the first-order damage of the
whole block it scales (:meth:`~hwfault.constraints.BlockScaleSet.unit_gains`). Every returned
perturbation is re-checked part by part with ``contains``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import progress
from ..constraints import DiscreteSet, SumSet
from ..evaluation import EvalResult, evaluate, loss_and_grad
from ..params import Selection, perturbed
from .ascent import stronger, strongest
from .results import WorstCase, check_parts, evaluate_parts, task_extra, total


def _owners(s: DiscreteSet, selection: Selection) -> list[torch.Tensor]:
    """The units of ``s`` in each selected tensor (their indices), tensor by tensor."""
    offsets = torch.tensor(selection.offsets, dtype=torch.long)
    tensor = torch.searchsorted(offsets, s.unit_anchor(), right=True) - 1
    return [torch.nonzero(tensor == t).reshape(-1) for t in range(len(selection.params))]


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
    disc = [i for i, s in enumerate(cset.parts) if isinstance(s, DiscreteSet) and getattr(s, "n", 0) > 0]
    parts = [torch.zeros(selection.numel, dtype=torch.float64) if i in disc or base is None else base.parts[i].double()
             for i in range(len(cset.parts))]
    owners = {i: _owners(cset.parts[i], selection) for i in disc}
    chosen = {i: (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) for i in disc}
    used = {i: torch.zeros(sum(o.numel() for o in owners[i]), dtype=torch.bool) for i in disc}  # (every unit has a tensor)
    spent = {i: 0 for i in disc}
    budget = sum(cset.parts[i].n for i in disc)
    chunk = max(1, math.ceil(budget / max_rounds)) if until is None else 1
    history: list[float] = []
    flips: list[int] = []

    def with_units(i: int, el: torch.Tensor, ch: torch.Tensor) -> list:
        u, c = chosen[i]
        out = list(parts)
        out[i] = cset.parts[i].point(torch.cat([u, el]), torch.cat([c, ch]))
        return out

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
                top, choice = s.unit_gains(g)
                top = torch.where(used[i], torch.full_like(top, -math.inf), top)
                for units in owners[i]:
                    seg_best = top[units]
                    m = min(chunk, left, int((seg_best > 0).sum()))
                    if m <= 0:
                        continue
                    if chunk == 1:
                        for e in units[torch.topk(seg_best, min(candidates, int((seg_best > 0).sum()))).indices]:
                            cands.append((i, e.reshape(1), choice[e].reshape(1), float(top[e])))
                        continue
                    el = units[torch.topk(seg_best, m).indices]
                    cands.append((i, el, choice[el], float(top[el].sum())))
            if not cands:
                break
            if tensors is not None and len(cands) > tensors:
                cands = sorted(cands, key=lambda c: -c[3])[:tensors]
            cands = [c[:3] for c in cands]
            scored = []  # (result, part, units, choices): one candidate's perturbation alive at a time
            for i, el, ch in cands:
                trial = with_units(i, el, ch)
                with perturbed(selection, total(trial)):
                    r = evaluate(model, pdata)
                del trial
                scored.append((r, i, el, ch))
            r, i, el, ch = strongest(scored, key=lambda t: t[0])
            parts = with_units(i, el, ch)
            chosen[i] = (torch.cat([chosen[i][0], el]), torch.cat([chosen[i][1], ch]))
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
    n_flips = sum(_changed(cset.parts[i], parts[i]) for i in disc)  # changed weights (bits, cells) or scales
    check_parts(cset, parts)
    return WorstCase("bit_search", r.accuracy, r.loss, r.loss - clean.loss, tuple(parts),
                     {**task_extra(r), "flips": n_flips, "budget": budget, "best_round": best_round, "history": history,
                      "flips_history": flips, "nonfinite": r.nonfinite})


def _changed(s: DiscreteSet, part: torch.Tensor) -> int:
    """How many units ``part`` changes: weights for element faults, shared scales for scale faults."""
    if hasattr(s, "site"):
        return int(torch.unique(s.site[(part != 0) & (s.site >= 0)]).numel())
    return int(torch.count_nonzero(part))
