"""The bit-flip attack's headline metric: how many flipped bits take a quantised model to a target
accuracy (or, for a language model, a target perplexity: ``until_factor=10`` is ten times the
quantised model's), found by progressive bit search (Rakin et al., ICCV 2019), against random flips.

The model's conv and linear weights are stored in ``format`` (intN with symmetric scale, or a float
format); the search and the random baseline flip bits of those stored values (bit 0 = LSB), one
flip per weight at most.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import progress, validate
from ..constraints import BlockScaleSet, CandidateSet, SumSet
from ..rng import trial_seed
from ..errors import ConstraintError
from ..evaluation import evaluate
from ..faults.base import DeviceView
from ..blockformats import number_format
from ..params import perturbed, select
from ..inputs import analysis, resolve_data, resolve_model
from ..search.bitsearch import bit_search, reached
from ..tasks import current


def reached_point(res, until: float, like) -> bool:
    """Whether a worst case (accuracy, loss and task metrics) reached the target."""
    m = res.accuracy if like.metric_name == "accuracy" else res.extra.get(like.metric_name)
    if m is None:
        return not like.higher_is_better  # a non-finite perplexity is past any target
    return m <= until if like.higher_is_better else m >= until


@dataclass(frozen=True)
class BitsResult:
    model: str
    data: str
    format: str
    until: float
    clean: dict
    quantized: dict
    flips: int | None
    history: tuple[float, ...]
    flip_list: tuple[dict, ...]
    random_flips: float | None
    random_runs: tuple[int | None, ...]
    max_flips: int
    seconds: float
    until_factor: float | None = None
    task: dict | None = None
    target: str = "elements"

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "format": self.format, "until": self.until,
                "clean": self.clean, "quantized": self.quantized, "flips": self.flips,
                "random_flips": self.random_flips, "random_runs": list(self.random_runs),
                "history": list(self.history), "flip_list": list(self.flip_list), "max_flips": self.max_flips,
                "ratio": (self.random_flips / self.flips) if self.flips and self.random_flips else None,
                "until_factor": self.until_factor, "task": self.task, "target": self.target,
                "seconds": round(self.seconds, 2)}


def _random_flips(model, data, sel, units: int, bits: int, point, until, gen, limit) -> int | None:
    """Smallest m such that the first m flips of a random order (one bit of a distinct unit each: a
    weight, or a shared scale) take the task's metric to the target ``until``: doubling, then
    bisection on the same order. ``point(units, bits)`` is the flat change of those flips."""
    order = torch.randperm(units, generator=gen)[:limit]
    which = torch.randint(bits, (order.numel(),), generator=gen)

    def short(m: int) -> bool:  # m flips do not reach the target
        with perturbed(sel, point(order[:m], which[:m]).float()):
            return not reached(evaluate(model, data), until)

    hi = 1
    while short(hi):
        if hi >= order.numel():
            return None
        hi = min(2 * hi, order.numel())
    lo = hi // 2  # short(lo) (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if not short(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _flip_list(sel, part, point: torch.Tensor, sites) -> list[dict]:
    """The flips of a search's point: ``{"param", "index", "bit"}`` per flipped weight, or
    ``{"param", "block", "index", "bit", "target": "scale"}`` per flipped shared scale (``index``: the
    first weight of the block in its tensor, ``block``: the scale's position among its tensor's)."""
    out = []
    if sites is None:
        changed = torch.nonzero(point).reshape(-1)
        for el, (t, local) in zip(changed.tolist(), zip(*(v.tolist() for v in sel.locate(changed)))):
            bit = int(torch.nonzero(part.deltas[el] == point[el]).reshape(-1)[0])
            out.append({"param": sel.names[t], "index": local, "bit": bit})
        return out
    hit = torch.unique(part.site[(point != 0) & (part.site >= 0)])
    anchor = part.unit_anchor()
    t_of = sel.locate(anchor)[0]
    for s_ in hit.tolist():
        el = part.site == s_
        ratio = point[el] / part.base.double()[el]
        ratio = ratio[torch.isfinite(ratio)]
        bit = int(torch.argmin((part.factors[s_] - ratio[0]).abs())) if ratio.numel() else -1
        t, local = (int(v) for v in sel.locate(anchor[s_].reshape(1)))
        first_site = int(torch.nonzero(t_of == t).reshape(-1)[0])
        out.append({"param": sel.names[t], "block": s_ - first_site, "index": local, "bit": bit, "target": "scale"})
    return out


@analysis
def bits(model, data, *, format: str = "int8", per_channel: bool = False, until: float | None = None,
         until_factor: float | None = None, max_flips: int = 100, random_runs: int = 5, seed: int = 0, params=None,
         types="conv,linear", candidates: int = 5, group: int | None = None, target: str = "elements") -> BitsResult:
    """Worst-case flips (progressive bit search) and random flips needed to reach the target ``until``
    of the task's headline metric: an accuracy (default 0.11), or a perplexity / MSE. ``until_factor``
    sets the target relative to the quantised model instead (perplexity or MSE times the factor,
    accuracy divided by it); a task whose metric is not accuracy defaults to ``until_factor=10``.
    ``format``: any stored format (:func:`hwfault.blockformats.number_format`; ``group``: intN's group
    size). ``target``: flip the bits of the stored elements, or (``"scales"``) of the scales that
    blocks share (MX, NVFP4, group-wise intN, FP8's tensor scale): one flipped scale bit rescales its
    whole block, and the search ranks each scale by the first-order damage of that block."""
    t0 = time.perf_counter()
    task = current()
    if until is not None and until_factor is not None:
        raise ConstraintError("give --until or --until-factor, not both")
    if until_factor is not None:
        validate.positive("--until-factor", until_factor)
    elif until is None and task.metric_name == "accuracy":
        until = 0.11
    elif until is None:
        until_factor = 10.0
    if until is not None and task.metric_name == "accuracy" and not 0 <= until <= 1:
        raise ConstraintError(f"expected --until as an accuracy in [0, 1], got {until}")
    if until is not None and not math.isfinite(until):
        raise ConstraintError(f"expected a finite --until, got {until}")
    if max_flips < 1:
        raise ConstraintError(f"expected max flips >= 1, got {max_flips}")
    validate.trials("--runs", random_runs)
    validate.seed(seed)
    validate.integer("--max-flips", max_flips, lo=1, hi=10_000_000)
    if target not in ("elements", "scales"):
        raise ConstraintError(f"expected --target elements or scales, got '{target}'")
    fmt = number_format(format, per_channel=per_channel, group=group)
    module, mlabel = resolve_model(model)
    dset, dlabel = resolve_data(data)
    sel = select(module, params, types=types).weights_only()
    if not sel.params:
        raise ConstraintError("no weight tensor among the selected parameters")
    view = DeviceView.build(sel, fmt)
    sites = view.scale_sites if target == "scales" else None
    if target == "scales" and sites is None:
        raise ConstraintError(f"--target scales needs a format with shared scales (fp8_*, mx*, nvfp4, intN per "
                              f"group); {fmt.name} has none")
    clean = evaluate(module, dset)
    with perturbed(sel, (view.w_q - view.w).float()):
        quant = evaluate(module, dset)
        if until_factor is not None:
            until = quant.metric * until_factor if not quant.higher_is_better else quant.metric / until_factor
        if sites is None:
            deltas = view.bit_deltas().double()
            deltas = torch.where(torch.isfinite(deltas), deltas, torch.zeros_like(deltas))
            part = CandidateSet(deltas, max_flips)
            units, nbits = deltas.shape
        else:  # (a scale read as NaN/Inf counts as no change here, as an element's non-finite flip does)
            factors = sites.factors()
            part = BlockScaleSet(view.w_q.double(), sites.element_sites(view.k),
                                 torch.where(torch.isfinite(factors), factors, torch.zeros_like(factors)), max_flips)
            units, nbits = sites.count, sites.bits
        cset = SumSet((part,), ("bitflip" if sites is None else "bitflip-scales",))
        res = bit_search(module, dset, cset, selection=sel, clean=quant, until=until, candidates=candidates)
        flips = res.extra["flips"] if reached_point(res, until, quant) else None
        flip_list = _flip_list(sel, part, res.parts[0], sites)
        runs = []
        with progress.task("random flips", random_runs) as advance:
            for r in range(random_runs):
                gen = torch.Generator().manual_seed(trial_seed(seed, r))
                runs.append(_random_flips(module, dset, sel, units, nbits, part.point, until, gen, units))
                advance(1)
    # a run that never reached the target counts as infinitely many flips
    median = float(np.median([math.inf if r is None else r for r in runs])) if runs else math.inf
    median = None if math.isinf(median) else median
    return BitsResult(mlabel, dlabel, fmt.name, until, clean.row(), quant.row(), flips, tuple(res.extra["history"]),
                      tuple(flip_list), median, tuple(runs), max_flips, time.perf_counter() - t0,
                      until_factor, task.describe(), target)


