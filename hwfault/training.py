"""The training loop, written once: the zoo's recipe and every hardening method run it.

:func:`train_epochs` shuffles with a seeded generator, and for each minibatch clears the
gradients, lets ``step(x, y)`` compute them (returning the minibatch loss), steps the optimizer and
the schedule, and calls ``after_step`` (e.g. weight clipping). :func:`deterministic` runs it on one
thread with deterministic algorithms, which makes a zoo checkpoint bit-identical when it is retrained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Single-threaded deterministic torch for reproducible training; restores the previous settings."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
                 gen: torch.Generator, optimizer: torch.optim.Optimizer, scheduler,
                 step: Callable[[torch.Tensor, torch.Tensor], float], after_step: Callable[[], None] | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``model`` in place for ``epochs`` over (x, y); returns one ``{"epoch", "loss"}`` row per
    epoch (the mean minibatch loss). The model is in train mode during the loop and in eval mode after."""
    history = []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            total += step(x[idx], y[idx]) * len(idx)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
        row = {"epoch": epoch + 1, "loss": total / len(x)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    return history
