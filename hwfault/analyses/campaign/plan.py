"""Planning a campaign: how many trials, in which strata (Leveugle et al., DATE 2009).

n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), with N the fault population, e the margin of error,
t the two-sided normal quantile of the confidence (1.96 at 95%, 2.576 at 99%; using the one-sided
quantile undersizes the sample) and p the expected proportion (0.5 when unknown, the worst case).
For an effectively infinite population, n = t^2 p (1 - p) / e^2: about 9,604 at 95%/1% and about
16,590 at 99%/1%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from scipy import stats

from ...errors import ConstraintError, LimitError
from ...faults import Chip
from ...faults.base import DeviceView
from ...validate import MAX_CAMPAIGN_TRIALS


def sample_size(margin: float, confidence: float, population: int | None = None, p: float = 0.5) -> int:
    """Trials needed for a proportion within +-``margin`` at ``confidence`` (``population=None``: infinite)."""
    if not (0 < margin < 1):
        raise ConstraintError(f"expected --margin in (0, 1), got {margin}")
    if not (0 < confidence < 1):
        raise ConstraintError(f"expected --confidence in (0, 1), got {confidence}")
    if not (0 < p < 1):
        raise ConstraintError(f"expected p in (0, 1), got {p}")
    t = float(stats.norm.ppf(0.5 + confidence / 2))
    n_inf = t * t * p * (1 - p) / (margin * margin)
    if population is None:
        return math.ceil(n_inf)
    if population < 1:
        raise ConstraintError(f"expected a fault population >= 1, got {population}")
    n = population / (1 + margin * margin * (population - 1) / (t * t * p * (1 - p)))
    return min(population, math.ceil(n))


def proportional_allocation(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` trials over strata in proportion to their sizes (largest remainders), each >= 0."""
    whole = sum(sizes.values())
    if whole == 0:
        return {k: 0 for k in sizes}
    raw = {k: total * v / whole for k, v in sizes.items()}
    out = {k: int(math.floor(r)) for k, r in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return out


@dataclass(frozen=True)
class Stratum:
    name: str
    params: tuple[str, ...]
    sites: int            # weights
    population: int | None
    trials: int
    first: int            # first trial id

    def to_dict(self) -> dict:
        return {"name": self.name, "params": list(self.params), "sites": self.sites,
                "population": self.population, "trials": self.trials, "first_trial": self.first}


@dataclass(frozen=True)
class Plan:
    planned_trials: int
    strata: tuple[Stratum, ...]
    population: int | None
    mode: str
    margin: float | None = None
    confidence: float | None = None

    def stratum_of(self, trial: int) -> Stratum:
        for s in self.strata:
            if s.first <= trial < s.first + s.trials:
                return s
        raise IndexError(trial)

    def to_dict(self) -> dict:
        return {"planned_trials": self.planned_trials, "population": self.population, "mode": self.mode,
                "margin": self.margin, "confidence": self.confidence, "strata": [s.to_dict() for s in self.strata]}


ACTIVATION_STRATUM = "activation:"  # the name prefix of a per-layer stratum of activation faults


def single_activation_flip(chip: Chip):
    """The chip's one fault if it is a single persistent activation bit flip per trial (the classic
    neuron injection: one cell of one layer output, the same for every input), else None."""
    fl = chip.faults
    if len(fl) == 1 and fl[0].kind == "activation-bitflip" and fl[0].count == 1 and fl[0].mode == "persistent":
        return fl[0]
    return None


def activation_stratum(chip: Chip, layers) -> Chip:
    """The chip with its activation faults restricted to the layers of one stratum."""
    return chip.with_faults([replace(f, params=tuple(layers)) if f.forward else f for f in chip.faults])


def _population(chip: Chip, sizes: dict | None = None) -> tuple[int | None, str]:
    """Finite population (sites x bits) for single-fault campaigns; None (infinite) for patterns.
    ``sizes``: neurons per input of each struck layer, for a single activation flip per trial."""
    fl = chip.faults
    if len(fl) == 1 and fl[0].kind == "bitflip" and getattr(fl[0], "count", None) == 1:
        return chip.view.k * chip.view.bits, "single bit flip per trial"
    if sizes is not None and single_activation_flip(chip) is not None:
        from ...faults.models.activation import ActivationFormat

        return sum(sizes.values()) * ActivationFormat(chip.activation_format).bits, \
            "single activation bit flip per trial (neurons x bits; one cell for every input)"
    return None, "fault patterns drawn from the chip's distributions"


def sub_chip(chip: Chip, names: Iterable[str]) -> Chip:
    """The chip restricted to some of its parameter tensors (one stratum)."""
    wanted = set(names)
    sel = chip.selection.subset(i for i, n in enumerate(chip.selection.names) if n in wanted)
    return Chip(chip.spec, sel, DeviceView.build(sel, chip.view.fmt), chip.faults)


def make_plan(chip: Chip, *, trials: int | None = None, margin: float | None = None, confidence: float = 0.95,
              by: str | None = None, sizes=None) -> Plan:
    """Trials per stratum: given, or sized by Leveugle et al. for ``margin`` at ``confidence``.
    ``sizes()``: neurons per input of each layer that a single activation flip strikes (its
    population is neurons x bits, and ``by="layer"`` makes one stratum per struck layer)."""
    if trials is None and margin is None:
        raise ConstraintError("expected --trials N or --margin E (with --confidence C)")
    if trials is not None and trials < 1:
        raise ConstraintError(f"expected --trials >= 1, got {trials}")
    if by not in (None, "layer"):
        raise ConstraintError(f"expected --by layer, got '{by}'")
    act = single_activation_flip(chip) is not None and sizes is not None
    layer_sizes = sizes() if act else None
    groups = ([(n, (n,)) for n in chip.selection.names] if by == "layer" else [("all", chip.selection.names)])
    if act and by == "layer":
        groups = [(ACTIVATION_STRATUM + n, (n,)) for n in layer_sizes]
    strata, first = [], 0
    pop_all, mode = _population(chip, layer_sizes)
    for name, names in groups:
        if act:
            sc = activation_stratum(chip, names) if by == "layer" else chip
            part = {k: v for k, v in layer_sizes.items() if by != "layer" or k in names}
            pop, _ = _population(sc, part)
            sites = sum(part.values())
        else:
            sc = sub_chip(chip, names) if by == "layer" else chip
            pop, _ = _population(sc)
            sites = sc.view.k
        n = trials if trials is not None else sample_size(margin, confidence, pop)
        strata.append(Stratum(name, tuple(names), sites, pop, n, first))
        first += n
    return Plan(first, tuple(strata), pop_all, mode + (", one stratum per layer" if by == "layer" else ""),
                margin, confidence if margin is not None else None)


def check_plan(plan: Plan) -> None:
    """A one-line LimitError for a plan beyond :data:`~hwfault.validate.MAX_CAMPAIGN_TRIALS`, before any
    work (trial ids are generated lazily, so anything below it starts in constant memory)."""
    if plan.planned_trials > MAX_CAMPAIGN_TRIALS:
        how = (f"--margin {plan.margin:g} at {plan.confidence:g} confidence" if plan.margin is not None
               else "--trials")
        raise LimitError(f"the plan needs {plan.planned_trials:,} trials ({how}), beyond the ceiling of "
                         f"{MAX_CAMPAIGN_TRIALS:,}; widen --margin or lower --trials "
                         f"(--dry-run shows the plan and its estimated time)")
