"""Projected ascent, written once, and the one rule for which corruption is stronger.

Every multi-step search in hwfault is the same loop: evaluate at the current point, hand the
iterate to the caller, step along the gradient, project back into the set. What differs is only
the geometry (how a step is taken and projected) and what the caller keeps (the best iterate for
an attack, the whole trajectory for adversarial-parameter training, per input for the certificate's
falsifier). So the loop is a generator (:func:`iterates`) and the geometry is a function
(:func:`set_step` for hwfault's constraint sets), in the way foolbox writes PGD once and plugs in
``project`` and ``normalize``.

The loop stops after ``steps`` updates, when the gradient is not finite (a NaN loss gives no
direction), or when the caller stops iterating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..constraints import ConstraintSet, DiscreteSet


@dataclass(frozen=True)
class Iterate:
    """One point of the ascent: the step index, the point, what the objective returned there and the
    gradient taken there (None if the objective gives none)."""

    step: int
    point: Any
    value: Any
    grad: Any


def _finite(g) -> bool:
    if g is None:
        return False
    if isinstance(g, torch.Tensor):
        return bool(torch.isfinite(g).all())
    if isinstance(g, dict):
        return all(_finite(v) for v in g.values())
    if isinstance(g, (list, tuple)):
        return all(_finite(v) for v in g)
    return math.isfinite(g)


def iterates(start, value_and_grad: Callable[[Any], tuple[Any, Any]], update: Callable[[Any, Any, int], Any], *,
             steps: int, check_finite: bool = True) -> Iterator[Iterate]:
    """x_0 = ``start``; yields the iterate at x_j, then x_{j+1} = ``update(x_j, g_j, j)``, for j = 0..steps.

    ``value_and_grad(x)`` returns ``(value, gradient)``; the loop ends early on a non-finite gradient
    (``check_finite``) or when the caller stops consuming."""
    point = start
    for j in range(steps + 1):
        value, grad = value_and_grad(point)
        yield Iterate(j, point, value, grad)
        if j == steps or (check_finite and not _finite(grad)):
            return
        point = update(point, grad, j)


def stronger(a, b) -> bool:
    """True if evaluation ``a`` is a stronger corruption than ``b``: a worse headline metric (lower
    accuracy, higher perplexity or MSE), then higher loss (a NaN loss counts as +inf, the strongest)."""
    if hasattr(a, "rank") and hasattr(b, "rank"):
        return a.rank() < b.rank()
    la = a.loss if not math.isnan(a.loss) else math.inf
    lb = b.loss if not math.isnan(b.loss) else math.inf
    return (a.accuracy, -la) < (b.accuracy, -lb)


def strongest(items, key: Callable[[Any], Any] = lambda r: r):
    """The item whose evaluation (``key(item)``) is strongest; the earliest one on ties."""
    best = None
    for it in items:
        if best is None or stronger(key(it), key(best)):
            best = it
    return best


def best_iterate(its: Iterator[Iterate]) -> Iterate:
    """The strongest iterate by :func:`stronger` on its value (an evaluation), the earliest on ties."""
    return strongest(its, key=lambda it: it.value)


def set_step(sets: Sequence[ConstraintSet], frac: float | Sequence[float]) -> Callable:
    """The update of a point kept as one tensor per part of a Minkowski sum: a continuous part moves
    by ``frac`` times its linear maximiser (the Eq. 10 direction of the set, scaled) and is projected
    back; a discrete part (bit flips, stuck cells) is re-solved greedily at the new gradient."""
    fracs = [frac] * len(sets) if isinstance(frac, (int, float)) else list(frac)

    def update(parts, g, j):
        g = g.double() if isinstance(g, torch.Tensor) else g
        return [s.maximize(g).double() if isinstance(s, DiscreteSet)
                else s.project(a + f * s.maximize(g)).double() for s, a, f in zip(sets, parts, fracs)]

    return update
