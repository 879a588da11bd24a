"""Chip realisations: one sampled faulty chip, to run in the Monte-Carlo analyses or in a user's own loop.

A realisation of chip trial t is a pure function of (seed, t): its generator is seeded from both,
the persistent faults (programming noise, drift, stuck cells, persistent bit flips) are drawn once
when the chip is programmed, and the transient ones (read noise, transient flips) are redrawn for
every inference. hwfault's analyses redraw them per batch of :data:`READ_BATCH` inputs; a model
realised with :func:`realised` or :func:`faulty_copy` redraws them at every forward call.

    with hw.realised(model, "rram-4bit", seed=0, trial=3) as chip_model:   # in place, restored on exit
        my_eval_loop(chip_model)
    copy = hw.faulty_copy(model, "int8-sram-0.5v", seed=0, trial=3)          # a separate faulty module

Trial t here is the chip that ``hwfault estimate --seed S`` evaluates as its Monte-Carlo trial t.
"""

from __future__ import annotations

import contextlib
import copy as _copy
from collections.abc import Iterator

import torch
from torch import nn

from ..evaluation import as_tensors, logits
from ..faults import Chip
from ..params import perturbed
from ..rng import generator
from ..spec import load_chip

READ_BATCH = 64  # inputs per draw of the transient faults in the analyses


def transient_logits(model: nn.Module, x: torch.Tensor, chip: Chip, programmed: torch.Tensor, gen: torch.Generator,
                     *, relative_to: torch.Tensor | None = None, log: list | None = None) -> torch.Tensor:
    """Logits of a programmed chip whose transient faults are redrawn for every batch of READ_BATCH
    inputs. ``relative_to``: the values the model's device weights hold now (default: its float
    weights), so the perturbation applied is the read values minus those."""
    ref = chip.view.w.double() if relative_to is None else relative_to
    outs = []
    # activation faults draw per batch in their hooks; the weights are read anew per batch only when
    # some weight fault is transient (else the programmed chip holds for every batch)
    fixed = None if chip.redrawn else (programmed - ref).float()
    with chip.forward_hooks(model, gen, log), perturbed(chip.selection, fixed):
        for i in range(0, len(x), READ_BATCH):
            with perturbed(chip.selection, None if fixed is not None else (chip.read(programmed, gen) - ref).float()):
                outs.append(logits(model, (x[i:i + READ_BATCH], None)))
    return torch.cat(outs)


def chip_logits(chip: Chip, model: nn.Module, data, gen: torch.Generator) -> torch.Tensor:
    """One Monte-Carlo chip's logits: program it (persistent faults), then run the data through it
    (transient faults redrawn per batch)."""
    programmed = chip.program(gen)
    x, _ = as_tensors(data)
    if not chip.transient:
        with perturbed(chip.selection, chip.delta(programmed)):
            return logits(model, data)
    return transient_logits(model, x, chip, programmed, gen)


def _chip(model: nn.Module, chip) -> Chip:
    """``chip`` bound to ``model``'s own parameters (a Chip built for another module is rebuilt)."""
    if isinstance(chip, Chip):
        if hasattr(chip, "rebind"):  # a protected chip keeps the protections it was given (hwfault.faults.protection)
            return chip.rebind(model)
        return Chip.build(chip.spec, model, faults=chip.faults)
    return Chip.build(load_chip(chip), model)


def _redraw_hook(dev: Chip, programmed: torch.Tensor, gen: torch.Generator):
    """A forward pre-hook that sets the device weights to a fresh read of the programmed chip (the
    transient faults redrawn) before every forward call; returns (hook, the programmed weights)."""
    at_programmed = [p.detach().clone() for p in dev.selection.params]

    def redraw(module, args):
        step = dev.selection.split((dev.read(programmed, gen) - programmed).float())
        with torch.no_grad():
            for p, base, d in zip(dev.selection.params, at_programmed, step):
                p.copy_(base + d.to(p.device, p.dtype))

    return redraw, at_programmed


@contextlib.contextmanager
def realised(model: nn.Module, chip, *, seed: int = 0, trial: int = 0) -> Iterator[nn.Module]:
    """``model`` as chip realisation ``trial`` of ``chip`` (a preset name, TOML path, ChipSpec or Chip),
    in place for the duration of the block. Persistent faults are programmed once; transient faults are
    redrawn at every forward call (a forward pre-hook). On exit, also after an exception, the hook is
    removed and every weight is restored bit-exactly."""
    dev = _chip(model, chip)
    gen = generator(seed, trial)
    programmed = dev.program(gen)
    with perturbed(dev.selection, dev.delta(programmed)), dev.forward_hooks(model, gen):
        handle, at_programmed = None, None
        if dev.redrawn:  # (activation faults redraw in their own hooks)
            hook, at_programmed = _redraw_hook(dev, programmed, gen)
            handle = model.register_forward_pre_hook(hook)
        try:
            yield model
        finally:
            if handle is not None:
                handle.remove()
                with torch.no_grad():  # back to the programmed values, which perturbed() then undoes
                    for p, v in zip(dev.selection.params, at_programmed):
                        p.copy_(v)


def faulty_copy(model: nn.Module, chip, *, seed: int = 0, trial: int = 0) -> nn.Module:
    """A deep copy of ``model`` that is chip realisation ``trial`` of ``chip`` (``model`` is untouched):
    the persistent faults are in its weights; transient faults are redrawn at every forward call."""
    twin = _copy.deepcopy(model)
    dev = _chip(twin, chip)
    gen = generator(seed, trial)
    programmed = dev.program(gen)
    with torch.no_grad():
        for p, d in zip(dev.selection.params, dev.selection.split(dev.delta(programmed))):
            p.add_(d.to(p.device, p.dtype))
    if dev.redrawn:
        twin.register_forward_pre_hook(_redraw_hook(dev, programmed, gen)[0])
    if dev.forward_faults or getattr(dev, "guards", ()):  # activation faults, Ranger, checksums: their hooks stay on the copy
        hooks = dev.forward_hooks(twin, gen)
        hooks.__enter__()
        twin.__dict__["_hwfault_forward_hooks"] = hooks
    return twin
