"""Helpers on the values a :class:`~.incremental.ForwardCache` keeps: their sizes, signatures, and
views restricted to some inputs."""

from __future__ import annotations

import torch
from torch import nn


class Rows:
    """The cache's values restricted to the inputs ``rows`` (indices along dimension 0; None: all)."""

    def __init__(self, env: dict, batch: set, rows: torch.Tensor | None = None):
        self.env, self.batch, self.rows = env, batch, rows

    def __contains__(self, node) -> bool:
        return node in self.env

    def __getitem__(self, node):
        v = self.env[node]
        return v if self.rows is None or node not in self.batch else v.index_select(0, self.rows)


def sig(v) -> tuple:
    """A value's type and shape (its value for a plain number), to compare runs on two batch sizes."""
    if isinstance(v, torch.Tensor):
        return ("t", tuple(v.shape))
    if isinstance(v, (tuple, list)):
        return ("s", tuple(sig(u) for u in v))
    if v is None or isinstance(v, (bool, int, float, str)):
        return ("v", v)
    return ("o", type(v).__name__)


def fetch(mod: nn.Module, target: str):
    obj = mod
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def channelwise(node, value, changed_inputs: list) -> bool:
    """Whether channel c of ``value`` depends only on channel c of the changed inputs: every changed
    input has the output's rank and channel count (a flatten keeps channels when only size-1
    dimensions follow them; max-pooling with indices, or a flatten from another dimension, does not)."""
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return False
    if node.target in (torch.flatten, "flatten"):
        x = changed_inputs[0] if changed_inputs else None
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return isinstance(x, torch.Tensor) and start == 1 and value.ndim == 2 and x.ndim > 2 \
            and all(d == 1 for d in x.shape[2:])
    for x in changed_inputs:
        if not isinstance(x, torch.Tensor) or x.ndim != value.ndim or x.shape[1] != value.shape[1]:
            return False
    return True


def scaled(v, m: int, n: int) -> float:
    """Bytes of a value measured on ``m`` inputs, scaled to ``n`` (tensors whose first dimension is
    the batch grow with it; anything else is counted once)."""
    if isinstance(v, torch.Tensor):
        b = v.numel() * v.element_size()
        return b * n / m if v.ndim and v.shape[0] == m and m else float(b)
    if isinstance(v, (tuple, list)):
        return sum(scaled(u, m, n) for u in v)
    if isinstance(v, dict):
        return sum(scaled(u, m, n) for u in v.values())
    return 0.0


def cache_bytes(cache) -> int:
    """The bytes a cache holds (every cached tensor, including those inside tuples)."""
    total, seen = 0, set()

    def add(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += key[1]
        elif isinstance(v, (tuple, list)):
            for u in v:
                add(u)
        elif isinstance(v, dict):
            for u in v.values():
                add(u)

    for v in cache.env.values():
        add(v)
    return total
