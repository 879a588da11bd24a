"""The per-input drivers of IBP and CROWN: the margin specification, bounds for all inputs in chunks
(under an optional deadline), and :func:`margin_bounds`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConstraintError, did_you_mean
from .graph import _graph, _Graph
from .sets import DTYPE, PerturbationSet, _Weights

METHODS = ("ibp", "crown", "auto", "bab")
INTERMEDIATE = ("crown", "ibp")


def _margin_spec(target: torch.Tensor, classes: int) -> torch.Tensor:
    """(b, K, K): row j is e_target - e_j (the row j = target is zero)."""
    eye = torch.eye(classes, dtype=DTYPE)
    return eye[target].unsqueeze(1) - eye.unsqueeze(0)


def check_method(method: str, intermediate: str = "crown", time_budget: float | None = None) -> None:
    """Raise a one-line :class:`ConstraintError` for an unknown method or intermediate-bound method,
    or a time budget that is not a finite number of seconds >= 0."""
    if method not in METHODS:
        raise ConstraintError(f"certify: unknown method '{method}'{did_you_mean(str(method), METHODS)}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and math.isfinite(time_budget)
                                        and time_budget >= 0):
        raise ConstraintError(f"certify: expected a time budget >= 0 seconds, got {time_budget}")
    if intermediate not in INTERMEDIATE:
        raise ConstraintError(f"certify: unknown intermediate bounds '{intermediate}' (choose from: crown, ibp)")


def _unstable_counts(graph: _Graph, w: _Weights, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per input, the number of pre-activation neurons that interval bounds leave unstable."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 4 * batch_size):
            bounds = graph.ibp(x[i:i + 4 * batch_size].to(DTYPE), w)
            n = torch.zeros(len(bounds[0][0]), dtype=torch.long)
            for k in graph.preact:
                l, u = bounds[k]
                n += ((l < 0) & (u > 0)).reshape(len(l), -1).sum(1)
            out.append(n)
    return torch.cat(out)


def _lower_all(graph: _Graph, w: _Weights, x: torch.Tensor, C: torch.Tensor, method: str, intermediate: str,
               batch_size: int, on_chunk: Callable[[int], None] | None = None,
               deadline: float | None = None) -> tuple[torch.Tensor, int]:
    """Lower bounds for all inputs in chunks; stops before a chunk once ``deadline`` has passed
    (the rows not done stay -inf). Returns (bounds, inputs done). For CROWN the inputs are processed
    in order of their number of unstable neurons, which keeps the padded row counts of a chunk small."""
    out = torch.full(C.shape[:2], -math.inf, dtype=DTYPE)
    order = torch.arange(len(x))
    if deadline is not None:  # under a time budget: small chunks, the inputs likeliest to certify first
        batch_size = min(batch_size, 32)
    if method == "crown" and intermediate == "crown" and graph.preact and len(x) > batch_size:
        order = torch.argsort(_unstable_counts(graph, w, x, batch_size), descending=deadline is None, stable=True)
    done = 0
    for i in range(0, len(x), batch_size):
        if deadline is not None and time.perf_counter() > deadline:
            break
        idx = order[i:i + batch_size]
        with torch.no_grad():
            out[idx] = graph.lower(x[idx].to(DTYPE), C[idx], w, method, intermediate)
        done += len(idx)
        if on_chunk:
            on_chunk(len(idx))
    return out, done


def margin_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pset: PerturbationSet, method: str = "crown",
                  *, intermediate: str = "crown", batch_size: int = 128) -> torch.Tensor:
    """Lower bounds (N, K) float64 on f_y(x) - f_j(x) over every perturbation in ``pset``; the entry
    of class y itself is +inf. ``method``: 'ibp', 'crown' or 'auto' (the larger of both)."""
    check_method(method, intermediate)
    if method == "bab":
        raise ConstraintError("margin_bounds: 'bab' decides each input by branching and gives no single bound "
                              "per class; use certify(), or method 'crown'")
    graph = _graph(model, x)
    w = graph.weights(pset)
    K = graph.nodes[graph.output].shape[0]
    y = torch.as_tensor(y).long()
    C = _margin_spec(y, K)
    methods = ("ibp", "crown") if method == "auto" else (method,)
    lb = None
    for m in methods:
        b, _ = _lower_all(graph, w, x, C, m, intermediate, batch_size)
        lb = b if lb is None else torch.maximum(lb, b)
    lb[torch.arange(len(y)), y] = math.inf
    return lb
