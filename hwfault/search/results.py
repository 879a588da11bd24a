"""What the searches return (points and results indexed by eps, worst cases kept as their parts), and
the operations on such a point: its total, its re-check against the set, its evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluation import evaluate
from ..params import perturbed


@dataclass(frozen=True)
class CorruptionPoint:
    """Result of one method at one eps."""

    method: str
    eps: float
    accuracy: float
    loss: float
    loss_change: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "eps": self.eps, "accuracy": self.accuracy, "loss": self.loss,
                "loss_change": self.loss_change, **self.extra}


class ByEps:
    """Results held in ``points`` (each with an ``eps``), indexed by eps: ``result[eps]``, iteration in
    the order the epsilons were given, and ``epsilons``."""

    points: tuple

    def __getitem__(self, eps: float):
        for pt in self.points:
            if pt.eps == eps or (pt.eps is not None and math.isclose(pt.eps, eps, rel_tol=1e-12, abs_tol=0.0)):
                return pt
        raise KeyError(eps)

    def __iter__(self):
        return iter(self.points)

    @property
    def epsilons(self) -> list[float]:
        return [p.eps for p in self.points]


@dataclass(frozen=True)
class CorruptionResult(ByEps):
    """A method's results indexed by eps (``result[eps]``), in the order the epsilons were given."""

    method: str
    points: tuple[CorruptionPoint, ...]

    def to_dict(self) -> list[dict]:
        return [p.to_dict() for p in self.points]


@dataclass(frozen=True)
class WorstCase:
    method: str
    accuracy: float
    loss: float
    loss_change: float
    parts: tuple[torch.Tensor, ...] = field(repr=False, default=())
    extra: dict = field(default_factory=dict)

    @property
    def delta(self) -> torch.Tensor:
        return torch.stack([p.double() for p in self.parts]).sum(0)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "loss_change": self.loss_change, **self.extra}


def task_extra(r) -> dict:
    """What a point carries beyond accuracy and loss: the task's metrics (perplexity, token accuracy,
    mse, ... and the headline ``metric``; none for classification)."""
    return {k: v for k, v in r.row().items() if k not in ("accuracy", "loss")}


def mean_extra(rows: list[dict]) -> dict:
    """The per-key mean of task metrics over trials (None where a trial has none)."""
    out = {}
    for k in (rows[0] if rows else {}):
        vals = [r[k] for r in rows]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def total(parts) -> torch.Tensor:
    """The perturbation a point of a Minkowski sum stands for: the sum of its parts (float32)."""
    return torch.stack([p.double() for p in parts]).sum(0).float()


def check_parts(cset, parts) -> None:
    """Never trust a search: every part of the returned point must lie in its set."""
    if not cset.contains_parts(list(parts)):
        bad = [n or type(s).__name__ for n, s, a in zip(cset.names or [""] * len(cset.parts), cset.parts, parts)
               if not s.contains(a)]
        raise RuntimeError(f"internal error: a perturbation left its set (parts {bad})")


def evaluate_parts(model, data, selection, parts):
    """The model's scores with the point's perturbation applied (and undone)."""
    with perturbed(selection, total(parts)):
        return evaluate(model, data)
