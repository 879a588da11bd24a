"""Protections on a chip: which stored bits are redundant (ECC, TMR), which values are bounded
(Ranger on layer outputs, clip-weights on the weights read), which products are checked (checksums).

A protection transforms a chip's realisations and reports what it costs. :func:`protected` applies
the ``[[protection]]`` entries of a spec (:mod:`hwfault.spec.protection`) to a built
:class:`~hwfault.faults.chip.Chip` and returns a :class:`ProtectedChip`, which every analysis runs as
a chip: its bit flips honour the protected bits (:mod:`.bits`: drawn as without protection, then
corrected, detected or passed by the redundancy), its reads are bounded, its forward passes carry
the guards' hooks after the faults' (:mod:`.guards`), and its covering set leaves out what the
protection removes (the protected bits' flips beyond their residual, the values the bounds cut).

The ``ranked`` choice needs the loss gradient at the stored weights and Ranger needs inputs to
profile: both come from ``data`` (for ``hwfault protect``: the training split); a protection that
needs data and gets none is a one-line error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ...constraints import BitSet, CandidateSet, SumSet
from ...errors import HwfaultError
from ..base import FaultModel
from ..chip import Chip
from .bits import ADVERSARY_SHARE, ProtectedBits, bit_scores, budget_bits, choose
from .guards import Checksum, Ranger, WeightBounds, checksum_guard, profile_ranges

__all__ = ["ProtectedChip", "ProtectedResidual", "protected", "protect_bits", "ranking_gradient",
           "ProtectedBits", "Ranger", "Checksum", "WeightBounds"]


@dataclass(frozen=True)
class ProtectedResidual(FaultModel):
    """The silent residual of a bit-flip fault on the protected bits: a part of the covering set only
    (its flips are drawn by the fault itself, :meth:`ProtectedBits.survivors`)."""

    fault: FaultModel = None
    kind = "bitflip-protected"

    def sample(self, view, values, gen):
        return values

    def constraint(self, view, coverage):
        pb, f = view.protected, self.fault
        counted = f.count is not None
        rate = f.count / max(view.k * view.bits, 1) if counted else f.ber
        n = pb.residual_budget(rate, coverage, counted=counted)
        return BitSet(pb.only(view.bit_deltas()), n, tuple(f"bit{b}" for b in range(view.bits)),
                      base=view.w_q.double(), encode=lambda v: view.encode(v.float()), bits=view.bits)

    def describe(self):
        return {"kind": self.kind}


@dataclass(eq=False)
class ProtectedChip(Chip):
    """A chip with protections: ``guards`` (hooks after the faults' on forward passes), ``bounds``
    (clip-weights) and the protected bits on its view (``view.protected``)."""

    guards: tuple = ()
    bounds: WeightBounds | None = None
    entries: tuple = ()

    def with_faults(self, faults) -> ProtectedChip:
        return dataclasses.replace(self, faults=tuple(faults))

    @property
    def transient(self) -> tuple:
        return super().transient + tuple(self.guards)

    def forward_hooks(self, model: nn.Module, gen: torch.Generator, *args, **kwargs):
        if not self.guards:
            return super().forward_hooks(model, gen, *args, **kwargs)
        return self._hooks(model, gen, args, kwargs)

    @contextlib.contextmanager
    def _hooks(self, model, gen, args, kwargs):
        from ..models.activation import ActivationFormat, installed

        with super().forward_hooks(model, gen, *args, **kwargs), \
                installed(self.guards, model, ActivationFormat(self.activation_format), gen):
            checks = [g for g in self.guards if isinstance(g, Checksum)]
            handles = [model.register_forward_hook(lambda m, a, out, g=g: g.finish(out)) for g in checks]
            try:
                yield model
            finally:
                for h in handles:
                    h.remove()
                for g in checks:
                    g.flags.clear()

    def program(self, gen):
        values = super().program(gen)
        return values if self.bounds is None else self.bounds.apply(values)

    def program_sparse(self, gen):
        out = super().program_sparse(gen)
        if out is None or self.bounds is None:
            return out
        idx, values = out
        values = self.bounds.apply(values, idx)
        hit = values != self.view.w_q[idx].double()
        return idx[hit], values[hit]

    def read(self, programmed, gen):
        values = super().read(programmed, gen)
        return values if self.bounds is None or values is programmed else self.bounds.apply(values)

    def parts(self):
        named = super().parts()
        if self.view.protected is None:
            return named
        out = []
        for name, f in named:
            out.append((name, f))
            if name == "bitflip" and getattr(f, "target", "elements") == "elements":
                out.append(("bitflip-protected", ProtectedResidual(fault=f)))
        return out

    def constraint(self, coverage: float | None = None) -> SumSet:
        """The covering set. The parts of the unprotected chip keep their coverage c_b = c^(1/m); a
        fault with protected bits splits its miss probability 1 - c_b: its residual part misses with
        probability at most (1 - c_b) / 100, the unprotected bits' part with the rest, so that both
        hold together with probability >= c_b (a union bound) and a residual that is almost never
        there (TMR at a low rate) takes no budget."""
        c = self.spec.coverage if coverage is None else coverage
        parts = self.parts()
        m = sum(1 for name, _ in parts if name not in ("quantization", "bitflip-protected"))
        cb = c ** (1.0 / m) if m else c
        share = (1 - cb) / 100
        sets = []
        for i, (name, f) in enumerate(parts):
            has_residual = i + 1 < len(parts) and parts[i + 1][0] == "bitflip-protected"
            ci = 1 - share if name == "bitflip-protected" else cb + share if has_residual else cb
            sets.append(f.constraint(self.view, ci))
        s = SumSet(tuple(sets), tuple(n for n, _ in parts))
        if self.bounds is None:
            return s
        base = self.view.w_q.double()
        def bounded(p):  # float64: the bounded changes land exactly on the bounds
            b = getattr(p, "base", None)
            return dataclasses.replace(p, deltas=self.bounds.deltas(base if b is None else b, p.deltas))

        parts = tuple(bounded(p) if isinstance(p, CandidateSet) else p for p in s.parts)
        return SumSet(parts, s.names)

    def rebind(self, model: nn.Module) -> ProtectedChip:
        """The same protected chip on another module of the same architecture (a copy): the protected
        bits, bounds and Ranger's ranges as they are, the checksums' sums on that module."""
        base = Chip.build(self.spec.model_copy(update={"protection": []}), model, faults=self.faults)
        view = base.view if self.view.protected is None else base.view.with_protected(self.view.protected)
        guards = tuple(checksum_guard(model, base, g.types, g.params, g.rtol, g.poison) if isinstance(g, Checksum) else g
                       for g in self.guards)
        return ProtectedChip(self.spec, base.selection, view, self.faults, guards, self.bounds, self.entries)

    def describe(self) -> dict:
        out = super().describe()
        prot = []
        if self.view.protected is not None:
            prot.append(self.view.protected.describe())
        if self.bounds is not None:
            prot.append(self.bounds.describe())
        prot += [g.describe() for g in self.guards]
        return {**out, "protection": prot}


def ranking_gradient(chip: Chip, model: nn.Module, data, at: torch.Tensor | None = None) -> torch.Tensor:
    """The flat loss gradient at the chip's fault-free stored weights, on ``data`` (float64, CPU); or,
    with ``at`` (a flat change of the float weights, e.g. a worst-case point's), at that point."""
    from ...evaluation import finite_gradient, loss_and_grad
    from ...params import perturbed

    sel = chip.selection
    with perturbed(sel, chip.delta(chip.view.w_q.double()) if at is None else at):
        _, grads = loss_and_grad(model, data, sel.params)
    return finite_gradient(sel.flatten(grads).cpu())[0].double()


def protect_bits(chip: Chip, scheme: str, budget, strategy: str, *, grad: torch.Tensor | None = None,
                 seed: int = 0, adversary: torch.Tensor | None = None,
                 adversary_share: float = ADVERSARY_SHARE) -> ProtectedBits:
    """The protected bits of a budget (a share of the stored weight bits, or a count) by strategy.
    ``adversary`` (ranked only): the loss gradient at a worst-case point; then ``adversary_share`` of
    the budget goes to the bits of the largest first-order damage there, among those the stored
    weights' ranking (``grad``) did not take (:mod:`.bits`)."""
    from ...rng import generator

    if scheme not in ("ecc", "tmr"):
        raise HwfaultError(f"unknown bit protection '{scheme}' (choose from: ecc, tmr)")
    view = chip.view
    total = view.k * view.bits
    n = budget_bits(budget, total)
    scores = bit_scores(view, strategy, grad, generator(seed, 0x5eed) if strategy == "random" else None)
    if strategy != "ranked" or adversary is None:
        return ProtectedBits(scheme, choose(scores, n), view.bits, total, strategy, budget)
    first = choose(scores, n - round(adversary_share * n))
    rest = bit_scores(view, strategy, adversary)
    rest[first] = -math.inf
    both = torch.cat([first, choose(rest, n - first.numel())]).sort().values
    return ProtectedBits(scheme, both, view.bits, total, strategy, budget)


def protected(chip: Chip, model: nn.Module, entries, *, data=None, grad: torch.Tensor | None = None,
              adversary: torch.Tensor | None = None) -> ProtectedChip:
    """``chip`` with the protections ``entries`` (``[[protection]]`` configs) applied, in a fixed order:
    the bits' redundancy, the weight bounds, then the guards (checksums before Ranger, both hooked after
    the faults). ``data``: what the ranked choice takes its gradient on and Ranger profiles on;
    ``grad``: that gradient, when the caller has it already; ``adversary``: the gradient at the
    unprotected chip's worst-case point, when the caller has it (``hwfault protect``): the ranked
    choice then gives it its share of the budget (:func:`protect_bits`)."""
    entries = tuple(entries)
    view, bounds, guards = chip.view, None, []
    name = getattr(chip.spec, "name", "chip")

    def need(what: str):
        if data is None:
            raise HwfaultError(f"chip '{name}': the {what} protection needs data to {'rank the bits on' if what != 'ranger' else 'profile its bounds on'} "
                               f"(hwfault protect --chip ..., or Chip.build(spec, model, data=...))")

    for e in entries:
        if e.kind in ("ecc", "tmr"):
            if e.strategy == "ranked" and grad is None:
                need(e.kind)
                grad = ranking_gradient(chip, model, data)
            view = view.with_protected(protect_bits(chip, e.kind, e.budget, e.strategy, grad=grad, seed=e.seed,
                                                    adversary=adversary))
        elif e.kind == "clip-weights":
            bounds = WeightBounds.of(chip.view, e.mode)
    for e in entries:
        if e.kind == "checksum":
            guards.append(checksum_guard(model, chip, e.types, e.params, e.rtol))
    for e in entries:
        if e.kind == "ranger":
            need("ranger")
            guards.append(Ranger(_profile(chip, model, data, e), e.mode, tuple(e.types), tuple(e.params)))
    return ProtectedChip(chip.spec, chip.selection, view, chip.faults, tuple(guards), bounds, entries)


def _profile(chip: Chip, model: nn.Module, data, e) -> dict:
    """Ranger's bounds: each layer's output range at the fault-free stored weights, on at most
    ``e.inputs`` inputs of ``data`` (evenly spaced)."""
    from ...evaluation import as_tensors
    from ...params import perturbed

    x, y = as_tensors(data)
    if len(x) > e.inputs:
        idx = torch.linspace(0, len(x) - 1, e.inputs).round().long()
        x, y = x[idx], None if y is None else y[idx]
    with perturbed(chip.selection, chip.delta(chip.view.w_q.double())):
        return profile_ranges(model, (x, y), e.types, e.params)
