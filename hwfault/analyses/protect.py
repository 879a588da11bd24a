"""Protections chosen under a budget and evaluated: what each buys and what it costs.

``protect(model, data, chip, budgets=..., strategies=...)`` evaluates, on the same Monte-Carlo chips
(trial t from (seed, t) for every row, so rows differ only by their protection), rows of

- ``none``: the chip without its protections;
- ``spec``: the chip with its ``[[protection]]`` entries (when it has any);
- one row per budget and strategy: ECC or TMR (``scheme``) on that budget of the stored weight bits,
  chosen ``ranked`` (the worst-case ranking, gradient x bit damage at the stored weights and at the
  unprotected chip's worst-case point), ``random`` or ``magnitude``
  (:mod:`hwfault.faults.protection.bits`).

Each row has the Monte-Carlo accuracy (mean, 95% t interval, minimum), ``sdc_rate`` (the share of the
(chip, unit) pairs, units the fault-free chip handles correctly, whose output changed, with finite
outputs), ``due_rate`` (the share of (chip, unit) pairs with non-finite outputs: detected errors read
NaN), ``worst_case_accuracy`` (the lowest of the one-step, multi-step and bit-search worst cases inside
the protected chip's covering set, :func:`~hwfault.analyses.estimate.worst_cases`, pooled across
rows: see below; activation faults add each input's one-step worst point, and with Ranger every
search runs with its hooks and the activation flips are ranked and applied as Ranger leaves them;
none for checksum rows or the analog periphery, with the reason) and the cost
(``cost_bits``: storage; ``extra_ops`` per protection). A row with checksums also has
``detection_rate`` (the SDC units of the same chips without the checksums that the checksums flag),
``false_positive_rate`` (units flagged on the fault-free chip) and ``benign_flag_rate`` (units flagged
whose output the faults did not change).

**The worst cases are searches**, so each is an upper bound on its set's true minimum, and two rows'
searches may end in different places by chance (a protected chip's search finding a lower point than
the unprotected chip's, whose set holds it). Two things keep the comparison between rows sound:

- with a flip budget of at most ``FINE_BUDGET`` (64; the chips where protection can change the worst
  case), the bit search flips one bit per round and evaluates the ``BIT_CANDIDATES`` best flips of
  each tensor (``BIT_TENSORS`` of them), since the linear gain misranks large flips; larger budgets
  get the estimate's few rounds (there the worst case is at chance whatever is protected);
- **pooling** (``pool``): every row's points (one step, multi-step, bit search) are offered to every
  other row, with the flips of the bits that row protects taken out (TMR outvotes them, ECC corrects
  them); a point that then lies in the row's covering set (checked by the set) and scores lower
  replaces the row's own (``worst_case.pooled`` names where it came from). So every row's worst case
  is the best of all the searches' points inside its set, and a chip never reads better than one
  whose set it holds. Rows with guards (Ranger, checksums), bounds or activation faults keep their own.

The ranked choice takes its gradients on ``rank_inputs`` inputs of the training split (of the
evaluation data when the data have none, said in ``settings``): at the fault-free stored weights,
and (with the worst case on) at the unprotected chip's lowest worst-case point, which then chooses
``ADVERSARY_SHARE`` of each budget (:mod:`hwfault.faults.protection.bits`; ``ranked_worst_point`` in
the JSON names the point); a spec's ``[[protection]]`` ranked entry is chosen the same way here. Ranger
profiles on the training split too. The worst-case searches run on ``search_inputs`` of the
evaluation inputs, as in ``hwfault estimate``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import progress, stats, validate
from ..constraints import BitSet
from ..errors import HwfaultError
from ..evaluation import Golden, as_tensors, differentiable, logits, score
from ..faults import Chip
from ..faults.protection import ProtectedChip, protect_bits, ranking_gradient
from ..faults.protection.bits import ADVERSARY_SHARE
from ..faults.protection.guards import Checksum, Ranger
from ..inputs import analysis, resolve_data, resolve_model
from ..params import perturbed
from ..rng import generator
from ..runtime import single_thread
from ..search.methods import clean_gradient
from ..search.results import total
from ..tasks import current
from .estimate import SEARCH_INPUTS, _search_subset, worst_cases
from .realise import chip_logits

__all__ = ["protect", "ProtectResult", "STRATEGIES", "RANK_INPUTS"]

STRATEGIES = ("ranked", "random", "magnitude")
RANK_INPUTS = 512
#: the bit search (``bit_rounds=None``): budgets up to ``estimate.FINE_BUDGET`` flips get one flip per
#: round, choosing among the BIT_CANDIDATES best flips by linear gain of each tensor (BIT_TENSORS of them,
#: those of the largest gain, evaluated); larger budgets (where the worst case is at chance whatever is
#: protected) the estimate's few rounds
BIT_TENSORS, BIT_CANDIDATES = 24, 4


@dataclass(frozen=True)
class ProtectResult:
    model: str
    data: str
    chip: dict
    clean: dict
    stored: dict
    results: tuple[dict, ...]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "chip": self.chip, "clean": self.clean, "stored": self.stored,
                "results": list(self.results), **self.settings, "seconds": round(self.seconds, 2)}

    def row(self, strategy: str, budget=None) -> dict:
        for r in self.results:
            if r["strategy"] == strategy and (budget is None or r["budget"] == budget):
                return r
        raise KeyError((strategy, budget))


def _units(task, out: torch.Tensor, golden: Golden, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scored unit: changed from the golden reference, finite, and SDC (correct, changed, finite)."""
    changed = task.changed(out, golden.pred, y).cpu()
    fin = torch.isfinite(out).reshape(*changed.shape, -1).all(-1).cpu()
    return changed, fin, golden.correct.cpu() & changed & fin


@dataclass
class _MC:
    acc: list = field(default_factory=list)
    metric: list = field(default_factory=list)
    units: list = field(default_factory=list)  # per trial: (changed, finite, sdc)


def _monte_carlo(chip: Chip, module, dset, golden: Golden, *, trials: int, seed: int, label: str) -> _MC:
    task, (_, y) = current(), as_tensors(dset)
    mc = _MC()
    with progress.task(label, trials) as advance, single_thread():
        for t in range(trials):
            out = chip_logits(chip, module, dset, generator(seed, t))
            r = score(out, y)
            mc.acc.append(r.accuracy)
            mc.metric.append(r.metric)
            mc.units.append(_units(task, out, golden, y))
            advance(1)
    return mc


def _rates(mc: _MC, golden: Golden) -> dict:
    n_ok = int(golden.correct.sum())
    n_all = int(golden.correct.numel())
    sdc = sum(int(u[2].sum()) for u in mc.units)
    due = sum(int((~u[1]).sum()) for u in mc.units)
    a = np.asarray(mc.acc)
    lo, hi = stats.t_interval(a, 0.95, domain=(0.0, 1.0)) if len(a) > 1 else (float(a[0]), float(a[0]))
    out = {"trials": len(a), "accuracy_mean": float(a.mean()), "accuracy_ci95": [float(lo), float(hi)],
           "accuracy_min": float(a.min()), "sdc_rate": sdc / max(n_ok * len(a), 1),
           "due_rate": due / max(n_all * len(a), 1), "chips_with_due": float(np.mean([bool((~u[1]).any()) for u in mc.units]))}
    task = current()
    if task.metric_name != "accuracy":
        m = np.asarray(mc.metric, dtype=float)
        out[f"{task.metric_name}_mean"] = float(m.mean())
        out[f"{task.metric_name}_worst"] = float(m.min() if task.higher_is_better else m.max())
    return out


def _detection(mc: _MC, ref: _MC, flagged_clean: float) -> dict:
    """The checksum row's flags against the same chips without checksums (``ref``)."""
    det = sdc = benign = quiet = 0
    for (c1, f1, _), (c0, f0, s0) in zip(mc.units, ref.units):
        flagged = ~f1 & f0
        det += int((flagged & s0).sum())
        sdc += int(s0.sum())
        ok = ~c0 & f0
        benign += int((flagged & ok).sum())
        quiet += int(ok.sum())
    return {"detection_rate": det / sdc if sdc else None, "sdc_units_without_checksum": sdc,
            "false_positive_rate": flagged_clean, "benign_flag_rate": benign / quiet if quiet else None}


def _cost(chip: Chip, module, x1: torch.Tensor) -> dict:
    """What a chip's protections cost: storage bits in all, and each protection's own numbers."""
    parts = []
    if not isinstance(chip, ProtectedChip):
        return {"cost_bits": 0, "parts": parts}
    if chip.view.protected is not None:
        parts.append({"kind": chip.view.protected.scheme, **chip.view.protected.cost()})
    if chip.bounds is not None:
        parts.append({"kind": "clip-weights", **chip.bounds.cost(chip.view.k)})
    for g in chip.guards:
        if isinstance(g, Checksum):
            with perturbed(chip.selection, chip.delta(chip.view.w_q.double())):
                parts.append({"kind": "checksum", **g.cost(module, x1)})
        elif isinstance(g, Ranger):
            sizes = _sizes(module, list(g.bounds), x1)
            parts.append({"kind": "ranger", **g.cost(sizes)})
    return {"cost_bits": int(sum(p["cost_bits"] for p in parts)), "parts": parts}


def _sizes(module, names, x1) -> dict:
    from ..faults.models.activation import probe

    mods = dict(module.named_modules())
    return probe(module, [(n, mods[n]) for n in names], x1)


def _worst(chip: Chip, module, dset, *, cov, clean, steps, pdata, g0, bit_rounds, bit_tensors,
           bit_candidates=1) -> dict:
    """The lowest worst case inside the chip's covering set, or why there is none."""
    if not differentiable(module):
        return {"accuracy": None, "reason": "the model has no gradients"}
    from ..faults.models.activation import ActivationBitFlip, ActivationStuck

    bare = [f for f in chip.forward_faults if not isinstance(f, (ActivationBitFlip, ActivationStuck))]
    if bare:
        return {"accuracy": None, "reason": f"{bare[0].kind}: no covering set (Monte-Carlo only)"}
    if not [n for n, _ in chip.parts() if n != "quantization"] and not chip.forward_faults:
        return {"accuracy": None, "reason": "no faults with a covering set"}
    guards = tuple(getattr(chip, "guards", ()))
    if any(isinstance(g, Checksum) for g in guards):
        return {"accuracy": None, "reason": "checksums: a detected point is a DUE; the worst undetected point is not searched"}
    wc = worst_cases(chip, module, dset, coverage=cov, clean=clean, steps=steps, probe=pdata,
                     grad=None if guards else g0, bit_rounds=bit_rounds, bit_tensors=bit_tensors,
                     bit_candidates=bit_candidates, guards=guards)
    points = [(k, w) for k, w in (("one_step", wc.one_step), ("multi_step", wc.multi_step),
                                  ("bit_search", wc.bit_search)) if w is not None]
    found = {k: w.accuracy for k, w in points}
    out = {"accuracy": min(found.values()), **found}
    if wc.bit_search is not None:
        out["flips"] = wc.bit_search.extra.get("flips")
    out["budgets"] = {p.get("name", ""): p.get("n") for p in wc.set.get("parts", []) if "n" in p}
    if not guards and not chip.forward_faults and getattr(chip, "bounds", None) is None:
        out["_points"] = points  # the witnesses, for pooling across rows (removed before the row is kept)
    return out


def _flip_parts(chip: Chip, point, names) -> tuple[dict, torch.Tensor] | None:
    """A witness split into its non-flip parts by name and its weight-bit flips as (element, bit)
    pairs (k, 2); None when a changed weight is not one bit flip of its stored value."""
    other, flips = {}, torch.zeros(chip.selection.numel, dtype=torch.float64)
    for n, a in zip(names, point.parts):
        if n.startswith("bitflip"):
            flips = flips + a.double()
        else:
            other[n] = a
    el = torch.nonzero(flips).reshape(-1)
    d = chip.view.bit_deltas().double()[el]
    match = (d - flips[el, None]).abs() <= 1e-6 * d.abs() + 1e-30
    if not bool(match.any(dim=1).all()):
        return None
    return other, torch.stack([el, match.to(torch.int8).argmax(dim=1)], dim=1)


def _pooled(rows_chips: list, witnesses: list, module, dset, cov: float) -> list:
    """Per row, the lowest witness of any row's searches that lies in this row's covering set, once
    the flips of the bits this row protects are taken out (they are outvoted or corrected), as
    (accuracy, source) or None: each row's worst case is then the best of every search's points, so
    a chip whose set holds another's (fewer protected bits) never reads better than it."""
    from ..search.results import evaluate_parts

    out = []
    sets = [None if w is None else c.constraint(cov) for c, w in zip(rows_chips, witnesses)]
    for j, chip in enumerate(rows_chips):
        if witnesses[j] is None:
            out.append(None)
            continue
        cset = sets[j]
        names = tuple(cset.names)
        if names.count("bitflip") != 1 or not isinstance(cset.parts[names.index("bitflip")], BitSet):
            out.append(None)
            continue
        prot = chip.view.protected
        best = None
        for i, pts in enumerate(witnesses):
            if pts is None or i == j:
                continue
            src_names = tuple(sets[i].names)
            for method, w in pts:
                split = _flip_parts(rows_chips[i], w, src_names)
                if split is None:
                    continue
                other, fl = split
                keep = fl if prot is None or fl.numel() == 0 else \
                    fl[~prot.hit(fl[:, 0] * prot.nbits + fl[:, 1])]
                if set(other) - set(names):
                    continue
                flat = torch.zeros(chip.selection.numel, dtype=torch.float64)
                if keep.numel():
                    flat[keep[:, 0]] = chip.view.bit_deltas().double()[keep[:, 0], keep[:, 1]]
                parts = [flat if n == "bitflip" else torch.zeros_like(flat) if n.startswith("bitflip")
                         else other.get(n, torch.zeros_like(flat)) for n in names]
                if not cset.contains_parts(parts):
                    continue
                acc = w.accuracy if keep.shape[0] == fl.shape[0] else evaluate_parts(module, dset, chip.selection,
                                                                                       parts).accuracy
                if best is None or acc < best[0]:
                    best = (acc, {"row": i, "method": method, "dropped_flips": int(fl.shape[0] - keep.shape[0])})
        out.append(best)
    return out


def _rank_data(data_arg, dset, n: int, given=None):
    """The inputs the ranking and Ranger's profiling use: ``given``, else the training split (``n``
    evenly spaced of it for the ranking), else the evaluation data; and a label saying which."""
    from ..data import has_split, load_data

    if given is not None:
        train, label = resolve_data(given)[0], "the given ranking data"
    elif isinstance(data_arg, str) and has_split(data_arg, "train"):
        train, label = load_data(data_arg, "train"), "train split"
    else:
        train, label = dset, "evaluation data (no train split)"
    x, y = as_tensors(train)
    sub = (x, y)
    if len(x) > n:
        idx = torch.linspace(0, len(x) - 1, n).round().long()
        sub = (x[idx], None if y is None else y[idx])
        label = f"{n} of the {len(x)} inputs of the {label}"
    return train, sub, label


def _budget_value(b):
    return b if isinstance(b, int) and not isinstance(b, bool) else float(b)


@analysis
def protect(model, data, chip, *, budgets: Sequence = (0.005, 0.02), strategies: Sequence[str] = STRATEGIES,
            scheme: str | None = None, trials: int = 50, seed: int = 0, coverage: float | None = None,
            steps: int = 10, search_inputs: int | None = SEARCH_INPUTS, rank_inputs: int = RANK_INPUTS,
            worst_case: bool = True, bit_rounds: int | None = None, bit_tensors: int | None = BIT_TENSORS,
            bit_candidates: int = BIT_CANDIDATES, pool: bool = True, rank_data=None) -> ProtectResult:
    """Rows of protections (none, the spec's, and ``scheme`` on each budget by each strategy) on the
    same Monte-Carlo chips; see the module docstring. ``rank_data``: the inputs the ranked choice
    and Ranger's profiling use (default: the training split of data given by name)."""
    from ..spec import ChipSpec, load_chip

    t0 = time.perf_counter()
    trials = validate.trials("--trials", trials)
    seed = validate.seed(seed)
    steps = validate.integer("--steps", steps, lo=1)
    bit_candidates = validate.integer("bit_candidates", bit_candidates, lo=1)
    rank_inputs = validate.integer("rank_inputs", rank_inputs, lo=1)
    strategies = tuple(strategies)
    for s in strategies:
        if s not in STRATEGIES:
            from ..errors import did_you_mean

            raise HwfaultError(f"unknown strategy '{s}'{did_you_mean(s, STRATEGIES)}")
    spec = chip if isinstance(chip, ChipSpec) else load_chip(chip)
    bit_entry = next((p for p in spec.protection if p.kind in ("ecc", "tmr")), None)
    scheme = scheme or (bit_entry.kind if bit_entry is not None else "tmr")
    if scheme not in ("ecc", "tmr"):
        raise HwfaultError(f"expected --scheme ecc or tmr, got '{scheme}'")
    budgets = [_budget_value(b) for b in budgets]
    if not budgets and not spec.protection:
        raise HwfaultError(f"nothing to protect: give --budget, or a chip with [[protection]] ('{spec.name}' has none)")
    cov = spec.coverage if coverage is None else validate.probability("--coverage", coverage)
    module, mlabel = resolve_model(model)
    dset, dlabel = resolve_data(data)
    base_chip = Chip.build(spec.model_copy(update={"protection": []}), module)
    from ..faults.protection.bits import budget_bits

    total_bits = base_chip.view.k * base_chip.view.bits
    shares = {b: budget_bits(b, total_bits) for b in budgets}  # a bad budget fails here, before any work
    x, y = as_tensors(dset)
    task = current()
    clean = score(logits(module, dset), y)
    with perturbed(base_chip.selection, base_chip.delta(base_chip.view.w_q.double())):
        gold_out = logits(module, dset)
    golden = Golden.of(gold_out, y, task=task)
    stored = score(gold_out, y)
    train, rank_sub, rank_label = _rank_data(data, dset, rank_inputs, rank_data)
    need_grad = bool("ranked" in strategies and budgets) or (bit_entry is not None and bit_entry.strategy == "ranked")
    g_rank = ranking_gradient(base_chip, module, rank_sub) if need_grad and differentiable(module) else None
    if need_grad and g_rank is None:
        raise HwfaultError(f"{mlabel}: the ranked strategy needs gradients; choose random or magnitude")
    pdata, plabel = _search_subset(dset, search_inputs, "evaluation data") if search_inputs else (None, "all")
    g0 = clean_gradient(module, dset, base_chip.selection, probe=pdata) if worst_case and differentiable(module) else None
    wkw = dict(cov=cov, clean=clean, steps=steps, pdata=pdata, g0=g0, bit_rounds=bit_rounds, bit_tensors=bit_tensors,
               bit_candidates=bit_candidates)
    # the unprotected chip's worst case first: the ranked choice gives part of its budget to the bits
    # of the largest first-order damage at its lowest point (faults.protection.bits)
    wc_none = _worst(base_chip, module, dset, **wkw) if worst_case else None
    g_adv, adv_at = None, None
    if g_rank is not None and wc_none is not None and wc_none.get("_points"):
        method, w = min(wc_none["_points"], key=lambda t: t[1].accuracy)
        g_adv = ranking_gradient(base_chip, module, rank_sub, at=total(w.parts))
        adv_at = {"method": method, "accuracy": w.accuracy, "share": ADVERSARY_SHARE}

    rows_spec = [("none", None, base_chip)]
    if spec.protection:
        from ..faults.protection import protected

        rows_spec.append(("spec", bit_entry.budget if bit_entry is not None else None,
                          protected(base_chip, module, spec.protection, data=train, grad=g_rank, adversary=g_adv)))
    for b in budgets:
        for s in strategies:
            pb = protect_bits(base_chip, scheme, b, s, grad=g_rank, seed=seed, adversary=g_adv)
            rows_spec.append((s, b, ProtectedChip(base_chip.spec, base_chip.selection,
                                                  base_chip.view.with_protected(pb), base_chip.faults)))
    rows, mcs, witnesses = [], {}, []
    with progress.task("protect", len(rows_spec)) as step:
        for strategy, b, c in rows_spec:
            step(0, description=f"protect: {strategy}" + (f" at {b}" if b is not None else ""))
            mc = _monte_carlo(c, module, dset, golden, trials=trials, seed=seed, label=f"Monte-Carlo ({strategy})")
            mcs[strategy, b] = mc
            row = {"strategy": strategy, "budget": b,
                   "protection": scheme if strategy not in ("none", "spec") else
                   [p.kind for p in spec.protection] if strategy == "spec" else None,
                   "budget_bits": shares.get(b) if strategy not in ("none", "spec") else
                   (c.view.protected.n if c.view.protected is not None else 0),
                   **_rates(mc, golden)}
            row["budget_share"] = row["budget_bits"] / total_bits
            cost = _cost(c, module, x[:1])
            row["cost_bits"] = cost["cost_bits"]
            row["cost"] = cost["parts"]
            guards = getattr(c, "guards", ())
            if any(isinstance(g, Checksum) for g in guards):
                ref_chip = ProtectedChip(c.spec, c.selection, c.view, c.faults,
                                         tuple(g for g in guards if not isinstance(g, Checksum)), c.bounds, c.entries)
                ref = _monte_carlo(ref_chip, module, dset, golden, trials=trials, seed=seed, label="Monte-Carlo (no checksums)")
                clean_run = chip_logits(c.with_faults(()), module, dset, generator(seed, 0))
                _, fin, _ = _units(task, clean_run, golden, y)
                row.update(_detection(mc, ref, float((~fin).float().mean())))
            wc = {"accuracy": None, "reason": "not requested"} if not worst_case else \
                wc_none if strategy == "none" else _worst(c, module, dset, **wkw)
            witnesses.append(wc.pop("_points", None))
            row["worst_case_accuracy"] = wc["accuracy"]
            row["worst_case"] = wc
            rows.append(row)
            step(1)
    if worst_case and pool and sum(w is not None for w in witnesses) > 1:
        with progress.task("worst case: pooling the rows' points", 1) as step:
            for row, got in zip(rows, _pooled([c for _, _, c in rows_spec], witnesses, module, dset, cov)):
                if got is not None and got[0] < row["worst_case_accuracy"]:
                    src = rows[got[1]["row"]]
                    row["worst_case"]["pooled"] = {"accuracy": got[0], "method": got[1]["method"],
                                                   "from": {"strategy": src["strategy"], "budget": src["budget"]},
                                                   "dropped_flips": got[1]["dropped_flips"]}
                    row["worst_case"]["accuracy"] = row["worst_case_accuracy"] = got[0]
            step(1)
    # what the bits' redundancy acts on: the flips of stored element bits; said for the chip's other faults
    not_protected = [f.kind if f.kind != "bitflip" else "bitflip (scale bits)" for f in base_chip.faults
                     if not (f.kind == "bitflip" and getattr(f, "target", "elements") == "elements")]
    settings = {"task": task.describe(), "seed": seed, "trials": trials, "coverage": cov, "scheme": scheme,
                "not_protected": not_protected if (budgets or bit_entry is not None) else [],
                "strategies": list(strategies), "budgets": budgets, "ranked_on": rank_label,
                "ranked_worst_point": adv_at,
                "search": {"inputs": None if pdata is None else len(as_tensors(pdata)[0]), "steps": steps,
                           "bit_rounds": bit_rounds, "bit_tensors": bit_tensors, "bit_candidates": bit_candidates,
                           "pooled": bool(pool)},
                "stored_weight_bits": total_bits,
                "units": "inputs" if task.name != "lm" else "tokens"}
    return ProtectResult(mlabel, dlabel, {"name": spec.name, **base_chip.describe(),
                                          "protection": [p.model_dump(mode="json") for p in spec.protection]},
                         clean.row(), stored.row(), tuple(rows), settings, time.perf_counter() - t0)
