"""Branch and bound on ReLU phases over CROWN, for the correct inputs CROWN leaves uncertified.

Wang et al. 2021, without the beta multipliers: a branch clamps one unstable pre-activation to >= 0
or <= 0, which makes that ReLU exact and tightens every bound after it; an input is certified once
every branch is. Branching picks the neuron whose relaxation costs the worst margin most (BaBSR);
each input gets at most 256 branches, within a time budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from .graph import _Graph
from .ops import Activation
from .sets import DTYPE, _Weights


def _bab(graph: _Graph, w: _Weights, x: torch.Tensor, C: torch.Tensor, skip: torch.Tensor, *,
         deadline: float | None, max_domains: int = 256, batch_size: int = 128, patience: int | None = 20,
         on_input: Callable[[int], None] | None = None) -> torch.Tensor:
    """Branch and bound on ReLU phases over CROWN (Wang et al. 2021 without the beta multipliers): an
    input is certified when, on every branch, the lower bounds of C . f(x) are > 0, except the row
    ``skip[i]`` of each input (its label's own zero row). Branches split the unstable neuron whose
    relaxation costs the worst margin most (|lam| times the chord's intercept, as in BaBSR) into its
    active (pre-activation >= 0) and inactive (<= 0) halves; the inputs are taken in order and each gets
    at most ``max_domains`` branches. Give the inputs likeliest to certify first: the search stops at the
    deadline, or once ``patience`` inputs in a row have failed. Returns a bool per input (False where
    the search failed or stopped). ``on_input(k)`` is called with the number of inputs decided."""
    n = len(x)
    relu = [k for k, r in sorted(graph.preact.items()) if r]
    acts = {k: [i for i, nd in enumerate(graph.nodes) if isinstance(nd.op, Activation) and nd.inputs == (k,)]
            for k in relu}
    size = {k: math.prod(graph.nodes[k].shape) for k in relu}
    where = [(k, j) for k in relu for j in range(size[k])]          # flat neuron index -> (node, neuron)
    certified = torch.zeros(n, dtype=torch.bool)
    if not relu or n == 0:
        return certified
    inp = torch.arange(n)
    lo = {k: torch.full((n, size[k]), -math.inf, dtype=DTYPE) for k in relu}
    hi = {k: torch.full((n, size[k]), math.inf, dtype=DTYPE) for k in relu}
    open_ = torch.ones(n, dtype=torch.bool)            # inputs still being decided
    created = torch.ones(n, dtype=torch.long)
    streak = 0
    B = min(4, batch_size)                            # grows to about a second per wave
    while len(inp) and not (deadline is not None and time.perf_counter() > deadline):
        t_wave = time.perf_counter()
        B = min(B, len(inp))
        bi = inp[:B]
        rec: dict = {}
        with torch.no_grad():
            lb = graph.lower(x[bi].to(DTYPE), C[bi], w, "crown", splits={k: (lo[k][:B], hi[k][:B]) for k in relu},
                             record=rec)
        lb[torch.arange(B), skip[bi]] = math.inf
        worst, row = lb.min(1)
        todo = ~(worst > 0)
        # the branching neuron of each unresolved branch
        scores = []
        for k in relu:
            l, u = (t.reshape(B, -1) for t in rec["bounds"][k])
            lam_w = sum(rec[a].reshape(B, lb.shape[1], -1)[torch.arange(B), row] for a in acts[k] if a in rec)
            unstable = (l < 0) & (u > 0)
            gap = torch.where(unstable, -l * u / torch.where(unstable, u - l, 1.0), 0.0)
            scores.append(torch.where(unstable, torch.as_tensor(lam_w).abs() * gap + 1e-12 * gap, -1.0))
        score = torch.cat(scores, 1)
        best, pick = score.max(1)
        stuck = todo & (best < 0)                                                    # nothing left to split
        fail = torch.zeros(n, dtype=torch.bool)
        fail[bi[stuck]] = True
        split = todo & ~stuck
        si = torch.nonzero(split).reshape(-1)
        created += torch.bincount(bi[si], minlength=n)
        fail |= (created > max_domains) & open_
        # children: inactive (hi = 0) then active (lo = 0) copies of each split branch, starting from the
        # bounds computed for it (valid on the parent, so on both halves: the children only get tighter)
        c_inp = bi[si].repeat(2)
        c_lo = {k: rec["bounds"][k][0].reshape(B, -1)[si].repeat(2, 1) for k in relu}
        c_hi = {k: rec["bounds"][k][1].reshape(B, -1)[si].repeat(2, 1) for k in relu}
        m = len(si)
        for r, p in enumerate(pick[si].tolist()):
            k, j = where[p]
            c_hi[k][r, j] = 0.0
            c_lo[k][m + r, j] = 0.0
        inp = torch.cat([inp[B:], c_inp])
        lo = {k: torch.cat([lo[k][B:], c_lo[k]]) for k in relu}
        hi = {k: torch.cat([hi[k][B:], c_hi[k]]) for k in relu}
        open_ &= ~fail
        keep = open_[inp]
        order = torch.argsort(inp[keep], stable=True)                                # inputs in order, depth-first
        inp = inp[keep][order]
        lo = {k: v[keep][order] for k, v in lo.items()}
        hi = {k: v[keep][order] for k, v in hi.items()}
        done = open_ & (torch.bincount(inp, minlength=n) == 0)
        certified |= done
        decided = torch.nonzero(done | fail).reshape(-1).tolist()
        if on_input is not None and decided:
            on_input(len(decided))
        open_ &= ~done
        # about a second per wave, so that the deadline is kept to within a wave
        B = max(1, min(batch_size, 2 * B, int(B / max(time.perf_counter() - t_wave, 1e-3))))
        for i in decided:                      # in input order: a run of failures ends the search
            streak = 0 if certified[i] else streak + 1
        if patience is not None and streak >= patience:
            break
    return certified
