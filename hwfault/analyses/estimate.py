"""How a model fares on a chip: the bracket from Monte-Carlo (typical) to the worst case.

``estimate(model, data, chip)`` returns, for the chip's faults applied to the parameters that live
on the device:

- ``clean``: the fault-free float32 model, and ``quantized``: the model stored in the chip's format;
- ``random``: Monte-Carlo over chips (persistent faults drawn once per trial; read noise and
  transient flips redrawn for every inference, i.e. every evaluation batch), with mean, a t interval,
  the 1st percentile and the minimum;
- ``worst_case``: one-step, multi-step and (for discrete faults) bit search inside the covering set
  that holds a chip's realisation with probability ``coverage``;
- ``faults``: the same per fault alone;
- ``severity``: random mean and worst case with every fault's severity scaled (BER, sigma, ...).

For any trial, read noise is drawn from the trial's own generator, so a trial is reproducible from
(seed, trial id) alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import progress, stats, validate
from ..constraints import DiscreteSet, SumSet
from ..rng import generator
from ..runtime import single_thread
from ..evaluation import EvalResult, as_tensors, differentiable, logits, score
from ..faults import Chip
from ..faults.models.activation import ActivationFormat, installed
from ..params import perturbed
from ..search.bitsearch import bit_search
from ..search.methods import clean_gradient, multi_step, one_step
from ..search.results import WorstCase, evaluate_parts, task_extra
from ..inputs import analysis, resolve_data, resolve_model, resolve_probe
from ..tasks import current, using
from . import distributed
from .realise import chip_logits

SEARCH_INPUTS = 64   # evaluation inputs the worst-case searches run on (evenly spaced)
BIT_ROUNDS = 4       # bit-search rounds in an estimate (each: a gradient, the candidates, on the probe)
BIT_TENSORS = 3      # candidates the bit search evaluates per round (of the largest linear gain)
FINE_BUDGET = 64     # worst_cases(bit_rounds=None): flip budgets up to this get one flip per round

METRIC_KEYS = ("perplexity", "token_accuracy", "mse", "mae", "metric")

class _Mapping:
    """Read access by key to a typed result (``result["accuracy_mean"]``), as to its JSON."""

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def keys(self):
        return self.to_dict().keys()


@dataclass(frozen=True)
class MonteCarlo(_Mapping):
    """Accuracy over ``trials`` sampled chips (trial t from (seed, t)), with a t interval clipped to [0, 1]."""

    accuracies: tuple[float, ...]
    losses: tuple[float, ...]
    nonfinite: int
    metrics: tuple[float, ...] = ()       # the task's headline metric per trial (when it is not accuracy)
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    @property
    def trials(self) -> int:
        return len(self.accuracies)

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.accuracies))

    def to_dict(self) -> dict:
        a = np.asarray(self.accuracies)
        lo, hi = stats.t_interval(a, 0.95, domain=(0.0, 1.0))
        finite = [v for v in self.losses if math.isfinite(v)]
        return {"trials": self.trials, "accuracy_mean": float(a.mean()), "accuracy_ci95": [float(lo), float(hi)],
                "accuracy_p01": float(np.percentile(a, 1, method="lower")), "accuracy_min": float(a.min()),
                "accuracy_max": float(a.max()), "accuracy_std": float(a.std(ddof=1)) if self.trials > 1 else 0.0,
                "loss_mean": float(np.mean(finite)) if finite else math.nan, "trials_nonfinite": int(self.nonfinite),
                "accuracies": [float(v) for v in a], **self._metric_stats()}

    def _metric_stats(self) -> dict:
        """For a task whose headline is not accuracy (perplexity, mse): its mean, t interval, the worst
        1% (the 99th percentile of a lower-is-better metric) and the worst trial."""
        if self.metric_name == "accuracy" or not self.metrics:
            return {}
        m, name = np.asarray(self.metrics, dtype=float), self.metric_name
        lo, hi = stats.t_interval(m, 0.95) if np.all(np.isfinite(m)) else (math.nan, math.nan)
        q = 1 if self.higher_is_better else 99
        return {"metric_name": name, f"{name}_mean": float(m.mean()), f"{name}_ci95": [float(lo), float(hi)],
                f"{name}_p{q:02d}": float(np.percentile(m, q, method="lower" if q == 1 else "higher")),
                f"{name}_worst": float(m.min() if self.higher_is_better else m.max()),
                f"{name}_best": float(m.max() if self.higher_is_better else m.min()),
                f"{name}s": [float(v) for v in m]}

    @property
    def metric_mean(self) -> float:
        return float(np.mean(self.metrics)) if self.metrics else self.accuracy_mean

    def brief(self) -> dict:
        d = self.to_dict()
        keys = ["trials", "accuracy_mean", "accuracy_ci95", "accuracy_p01", "accuracy_min"]
        if "metric_name" in d:
            n = d["metric_name"]
            keys += [f"{n}_mean", f"{n}_ci95", f"{n}_worst"]
        return {k: d[k] for k in keys}


@dataclass(frozen=True)
class WorstCases(_Mapping):
    """The worst cases inside a covering set: one step, multi-step and (for discrete parts) the bit
    search; or, for a model without gradients, why there are none."""

    one_step: WorstCase | None = None
    multi_step: WorstCase | None = None
    bit_search: WorstCase | None = None
    set: dict = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict:
        if self.skipped:
            return {"skipped": self.skipped}
        out = {"one_step": self.one_step.to_dict(), "multi_step": self.multi_step.to_dict(), "set": self.set}
        if self.bit_search is not None:
            out["bit_search"] = self.bit_search.to_dict()
        return out

    def brief(self) -> dict:
        if self.skipped:
            return {"skipped": self.skipped}
        out = {k: {"accuracy": w.accuracy, "loss_change": w.loss_change,
                   **{m: v for m, v in w.extra.items() if m in METRIC_KEYS}}
               for k, w in (("one_step", self.one_step), ("multi_step", self.multi_step), ("bit_search", self.bit_search))
               if w is not None}
        if self.bit_search is not None:
            out["bit_search"]["flips"] = self.bit_search.extra["flips"]
        return out


def run_trial(chip: Chip, model, data, gen: torch.Generator) -> EvalResult:
    """One Monte-Carlo trial: program a chip, run the data through it (transient faults redrawn per batch)."""
    return score(chip_logits(chip, model, data, gen), as_tensors(data)[1])


def trial_row(chip: Chip, model, data, seed: int, t: int) -> tuple[float, float, float, bool]:
    """Monte-Carlo trial t as ``(accuracy, loss, metric, nonfinite)``: a pure function of (seed, t)."""
    r = run_trial(chip, model, data, generator(seed, t))
    return r.accuracy, r.loss, r.metric, r.nonfinite > 0


def monte_carlo(chip: Chip, model, data, *, trials: int, seed: int, label: str = "Monte-Carlo",
                remote: Callable | None = None) -> MonteCarlo:
    """Accuracy statistics over ``trials`` chips (trial t seeded from (seed, t)).

    Trials run single-threaded, so trial t gives the same numbers in any process; ``remote(trials,
    advance)``, when given, runs them elsewhere (Dask workers) and returns their rows in trial order."""
    with progress.task(label, trials) as advance:
        if remote is not None:
            rows = remote(trials, advance)
        else:
            rows = []
            with single_thread():
                for t in range(trials):
                    rows.append(trial_row(chip, model, data, seed, t))
                    advance(1)
    task = current()
    return MonteCarlo(tuple(r[0] for r in rows), tuple(r[1] for r in rows), sum(bool(r[3]) for r in rows),
                      tuple(r[2] for r in rows) if task.metric_name != "accuracy" else (),
                      task.metric_name, task.higher_is_better)


@dataclass(frozen=True)
class _Job:
    """What a Dask worker rebuilds an estimate's Monte-Carlo from (shipped to every worker once)."""

    key: str
    model: object  # a name or path (loaded on the worker), or the module itself
    data: object   # likewise
    chip: dict     # the validated chip spec
    task: object
    device: str | None = None  # the caller's device type (None: the CPU)


def _chunk(job: _Job, variant: tuple, seed: int, trials: list[int]) -> list[tuple[int, tuple]]:
    """Monte-Carlo trials on a worker: ``[(t, row)]`` for the chip ``variant`` (``("all", None)``, a
    fault ``("alone", i)``, or every fault ``("scaled", factor)``)."""
    from ..spec import ChipSpec

    def build():
        model, data = distributed.load(job.model, job.data, device=job.device)
        return model, data, Chip.build(ChipSpec.model_validate(job.chip), model), {}

    with using(job.task), single_thread():
        model, data, dev, chips = distributed.built(job.key, build)
        if variant not in chips:
            kind, arg = variant
            chips[variant] = (dev if kind == "all" else dev.with_faults([dev.faults[arg]]) if kind == "alone"
                              else dev.with_faults([f.scaled(arg) for f in dev.faults]))
        return [(t, trial_row(chips[variant], model, data, seed, t)) for t in trials]


def _remote(runner, job, variant: tuple, seed: int) -> Callable | None:
    if runner is None:
        return None
    return lambda trials, advance: runner.trials(_chunk, trials, job, variant, seed, advance=advance)


def worst_cases(chip: Chip, model, data, *, coverage: float, clean: EvalResult, steps: int, probe=None,
                grad=None, bit_rounds: int | None = 40, bit_tensors: int | None = None,
                bit_candidates: int = 1, guards=()) -> WorstCases:
    """One-step, multi-step and (for discrete parts) bit-search worst cases in the covering set.

    The searches run on ``probe`` (default ``data``); every point they return is scored on ``data``.
    ``grad``: the fault-free gradient on the probe, when the caller has it; ``bit_rounds`` and
    ``bit_tensors``: the bit search's rounds and the candidates it evaluates per round;
    ``bit_candidates``: with one flip per round (``bit_rounds`` >= the budget), the best flips of each
    tensor by linear gain evaluated each round (the linear gain misranks large flips).
    ``bit_rounds=None``: one flip per round when the flip budget is at most ``FINE_BUDGET``, else
    ``BIT_ROUNDS`` rounds of ``BIT_TENSORS`` candidates (one per tensor). ``guards``: range
    restrictions (Ranger) hooked on the model for every search and evaluation, after the activation
    faults' worst-case changes."""
    if not differentiable(model):
        return WorstCases(skipped=f"{type(model).__name__}: the worst cases need gradients; Monte-Carlo only")
    cset = chip.constraint(coverage)
    if not cset.parts:  # only faults of the forward pass (activations): the weights stay as stored
        at = WorstCase("one_step", clean.accuracy, clean.loss, 0.0, (), {"first_order": 0.0, "nonfinite": 0})
        os_, ms = at, WorstCase("multi_step", clean.accuracy, clean.loss, 0.0, (), {"steps": 0, "nonfinite": 0})
        return _with_activations(WorstCases(os_, ms, None, {"coverage": coverage, **cset.to_dict()}), chip, model,
                                 data, clean, coverage, guards)
    bits = any(isinstance(s, DiscreteSet) and getattr(s, "n", 0) > 0 for s in cset.parts)
    if bit_rounds is None:
        n = sum(getattr(s, "n", 0) for s in cset.parts if isinstance(s, DiscreteSet))
        bit_rounds, bit_tensors, bit_candidates = (max(n, 1), bit_tensors, bit_candidates) if n <= FINE_BUDGET \
            else (BIT_ROUNDS, BIT_TENSORS, 1)
    with progress.task("worst case: one step", steps + 2 + bits) as advance, \
            installed(tuple(guards), model, ActivationFormat(chip.activation_format), generator(0, 0)):
        os_ = one_step(model, data, cset, selection=chip.selection, clean=clean, probe=probe, grad=grad)
        advance(1, description="worst case: multi-step")
        ms = multi_step(model, data, cset, selection=chip.selection, clean=clean, init=os_, steps=steps, probe=probe,
                        advance=advance)
        bs = None
        if bits:
            advance(0, description="worst case: bit search")
            bs = bit_search(model, data, cset, selection=chip.selection, clean=clean, base=os_, probe=probe,
                            history_data=probe, keep_best=True, max_rounds=bit_rounds, tensors=bit_tensors,
                            candidates=bit_candidates)
            if probe is not None:  # rounds compared on the probe; the point found, scored on the data
                r = evaluate_parts(model, data, chip.selection, bs.parts)
                bs = WorstCase("bit_search", r.accuracy, r.loss, r.loss - clean.loss, bs.parts,
                               {**bs.extra, **task_extra(r), "nonfinite": r.nonfinite,
                                "probe_accuracy": bs.accuracy})
            advance(1)
        nf = _nonfinite_case(model, data, cset, chip, clean, grad, probe)
    if nf is not None:  # a stored value one fault from NaN/Inf: every search's answer is at least as bad
        os_, ms = _worse(os_, nf), _worse(ms, nf)
        bs = None if bs is None else _worse(bs, WorstCase(nf.method, nf.accuracy, nf.loss, nf.loss_change, nf.parts,
                                                          {**nf.extra, "flips": 1}))
    return _with_activations(WorstCases(os_, ms, bs, {"coverage": coverage, **cset.to_dict()}), chip, model, data,
                             clean, coverage, guards)


def _with_activations(wc: WorstCases, chip: Chip, model, data, clean: EvalResult, coverage: float,
                      guards=()) -> WorstCases:
    """Each worst case with the activation faults' one-step worst point on top (at its weights),
    scored on ``data`` (:mod:`.activation_worst`); unchanged for a chip without activation faults."""
    if not chip.forward_faults:
        return wc
    from . import activation_worst
    from ..params import perturbed
    from ..search.results import total

    out, seen = [], {}
    with progress.task("worst case: activations", 2 + (wc.bit_search is not None)) as advance:
        for w in (wc.one_step, wc.multi_step, wc.bit_search):
            if w is None:
                out.append(None)
                continue
            key = tuple(id(p) for p in w.parts)  # the same weight point: the same activation worst case
            if key not in seen:
                with perturbed(chip.selection, total(w.parts) if w.parts else None):
                    seen[key] = activation_worst.one_step(chip, model, data, coverage, guards)
            r, n = seen[key]
            advance(1)
            if r is None:
                out.append(w)
                continue
            out.append(WorstCase(w.method, r.accuracy, r.loss, r.loss - clean.loss, w.parts,
                                 {**w.extra, **task_extra(r), "nonfinite": r.nonfinite, "activation_faults": n,
                                  "weights_only_accuracy": w.accuracy}))
    return WorstCases(out[0], out[1], out[2], {**wc.set, "activation_faults": n})


def _nonfinite_case(model, data, cset, chip: Chip, clean: EvalResult, grad, probe) -> WorstCase | None:
    """The covering set's point that makes one stored value non-finite (an FP8 element flipped to its
    NaN code, a shared scale read as NaN, an fp32 exponent flipped to Inf), scored on ``data``; None
    when the set has none. The gradient searches cannot rank it (its loss change is not a number),
    yet Monte-Carlo draws it: leaving it out would put the worst case above Monte-Carlo's minimum."""
    parts = list(cset.parts) if isinstance(cset, SumSet) else [cset]
    if not any(isinstance(p, DiscreteSet) for p in parts):
        return None
    g = None
    for i, p in enumerate(parts):
        if not isinstance(p, DiscreteSet):
            continue
        if g is None:
            g = (grad if grad is not None else clean_gradient(model, data, chip.selection, probe=probe)).double()
        point = p.nonfinite_point(g)
        if point is not None:
            pts = [torch.zeros_like(g) for _ in parts]
            pts[i] = point
            r = evaluate_parts(model, data, chip.selection, pts)
            return WorstCase("nonfinite", r.accuracy, r.loss, r.loss - clean.loss, tuple(pts),
                             {**task_extra(r), "nonfinite": r.nonfinite, "nonfinite_candidate": True,
                              "first_order": None})
    return None


def _worse(found: WorstCase, nf: WorstCase) -> WorstCase:
    """``nf`` in ``found``'s place (named as it, with what the search itself found) when it scores lower."""
    worse = nf.accuracy < found.accuracy or (nf.accuracy == found.accuracy and not math.isfinite(nf.loss)
                                             and math.isfinite(found.loss))
    if not worse:
        return found
    return WorstCase(found.method, nf.accuracy, nf.loss, nf.loss_change, nf.parts,
                     {**found.extra, **nf.extra, "searched_accuracy": found.accuracy})


@dataclass(frozen=True)
class EstimateResult:
    model: str
    data: str
    chip: dict
    clean: dict
    quantized: dict
    random: MonteCarlo
    worst_case: WorstCases
    faults: tuple[dict, ...]
    severity: dict
    seconds: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "chip": self.chip, "clean": self.clean,
                "quantized": self.quantized, "random": self.random.to_dict(), "worst_case": self.worst_case.to_dict(),
                "faults": list(self.faults), "severity": self.severity, **self.settings,
                "seconds": round(self.seconds, 2)}


@analysis
@distributed.on_dask
def estimate(model, data, chip, *, coverage: float | None = None, trials: int = 100, seed: int = 0,
             steps: int = 10, probe: str | None = None, per_fault: bool = True,
             severities: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), severity_trials: int | None = None,
             certified: str | None = "ibp", search_inputs: int | None = SEARCH_INPUTS, severity_steps: int = 0,
             bit_rounds: int = BIT_ROUNDS, bit_tensors: int | None = BIT_TENSORS, runner=None) -> EstimateResult:
    """The bracket for ``model`` on ``chip`` (a preset name, a TOML path or a ChipSpec).

    ``workers=N`` runs the Monte-Carlo chips (also those of the per-fault breakdown and the severity
    curve) on a local Dask cluster of N processes, ``scheduler=ADDRESS`` on an existing one, with
    the same result as a local run (:mod:`hwfault.analyses.distributed`).

    What it costs, in fault-free evaluations E of the data: the Monte-Carlo chips one E each; the
    worst-case searches run on ``search_inputs`` of the evaluation inputs (evenly spaced; default
    64, None = all; a ``probe`` split replaces them), and each point found is scored on all of them
    (one E): the one-step gradient, ``steps`` ascent steps, ``bit_rounds`` bit-search rounds of
    ``bit_tensors`` candidates. The severity curve takes ``severity_trials`` chips per factor
    (default trials // 10, at least 1) and the one-step worst case from the same fault-free gradient;
    its multi-step worst case takes ``severity_steps`` steps (default 0: not computed, null). The
    factor 1 reuses the nominal results."""
    from ..spec import ChipSpec, load_chip

    t0 = time.perf_counter()
    trials = validate.trials("--trials", trials)
    seed = validate.seed(seed)
    steps = validate.integer("--steps", steps, lo=1)
    if severity_trials is not None:
        validate.trials("severity_trials", severity_trials)
    spec = chip if isinstance(chip, ChipSpec) else load_chip(chip)
    cov = spec.coverage if coverage is None else validate.probability("--coverage", coverage)
    module, mlabel = resolve_model(model)
    dset, dlabel = resolve_data(data)
    pdata, plabel = resolve_probe(data, dset, probe)
    pdata = None if probe is None else pdata
    if search_inputs is not None:
        validate.integer("--search-inputs", search_inputs, lo=1)
    validate.integer("severity_steps", severity_steps, lo=0)
    if pdata is None and search_inputs is not None:
        pdata, plabel = _search_subset(dset, search_inputs, plabel)
    dev = Chip.build(spec, module)
    job = _ship(runner, model, module, data, dset, spec)
    with progress.task("estimate", len(PARTS)) as step:  # one row naming the part running, its own bar below
        parts = _Parts(step)
        parts.begin("clean")
        with progress.task("clean and stored-format evaluations", 2) as advance:
            tick = time.perf_counter()
            clean = logits(module, dset)
            clean_seconds = time.perf_counter() - tick
            advance(1)
            _, y = as_tensors(dset)
            base = score(clean, y)
            with perturbed(dev.selection, dev.delta(dev.view.w_q.double())):
                quant = score(logits(module, dset), y)
            advance(1)

        parts.begin("monte_carlo")
        random = monte_carlo(dev, module, dset, trials=trials, seed=seed,
                             remote=_remote(runner, job, ("all", None), seed))
        grads = differentiable(module)  # an ONNX model runs in onnxruntime: no gradients

        g0 = None  # the fault-free gradient on the probe: every one-step worst case of this chip's model starts there

        def wc_of(chip_) -> WorstCases:
            nonlocal g0
            if grads and g0 is None:
                g0 = clean_gradient(module, dset, dev.selection, probe=pdata)
            return worst_cases(chip_, module, dset, coverage=cov, clean=base, steps=steps, probe=pdata, grad=g0,
                               bit_rounds=bit_rounds, bit_tensors=bit_tensors)

        parts.begin("worst_case")
        worst = wc_of(dev)

        parts.begin("per_fault")
        faults = []
        if per_fault and len(dev.faults) > 1:
            with progress.task("per fault", len(dev.faults)) as advance:
                for i, f in enumerate(dev.faults):
                    advance(0, description=f"per fault: {f.kind} alone")
                    alone = dev.with_faults([f])
                    mc = monte_carlo(alone, module, dset, trials=max(10, trials // 4), seed=seed,
                                     label=f"Monte-Carlo ({f.kind} alone)",
                                     remote=_remote(runner, job, ("alone", i), seed))
                    faults.append({"fault": f.describe(), "random": mc.brief(), "worst_case": wc_of(alone).brief()})
                    advance(1)
        elif per_fault and dev.faults:
            faults.append({"fault": dev.faults[0].describe(), "random": random.brief(), "worst_case": worst.brief()})

        parts.begin("severity")
        sev = {"factors": [], "random_mean": [], "one_step": [], "multi_step": [], "nominal": {}}
        if severities and dev.faults:
            st = severity_trials or max(1, trials // 10)
            sev["nominal"] = {f.kind: f.severity for f in dev.faults}
            sev["severity_name"] = {f.kind: f.severity_name for f in dev.faults}
            with progress.task("severity", len(severities)) as advance:
                for s in severities:
                    advance(0, description=f"severity x{s:g}")
                    scaled = dev.with_faults([f.scaled(s) for f in dev.faults])
                    mc = random if s == 1.0 else monte_carlo(
                        scaled, module, dset, trials=st, seed=seed, label=f"Monte-Carlo (severity x{s:g})",
                        remote=_remote(runner, job, ("scaled", s), seed))
                    sev["factors"].append(s)
                    sev["random_mean"].append(mc.accuracy_mean)
                    if mc.metrics:
                        sev.setdefault(f"random_{mc.metric_name}", []).append(mc.metric_mean)
                    if not grads or worst.one_step is None:
                        sev["one_step"].append(None)
                        sev["multi_step"].append(None)
                    else:
                        cset = scaled.constraint(cov)
                        os_ = worst.one_step if s == 1.0 else one_step(module, dset, cset, selection=dev.selection,
                                                                        clean=base, probe=pdata, grad=g0)
                        ms = None
                        if severity_steps:
                            ms = multi_step(module, dset, cset, selection=dev.selection, clean=base, init=os_,
                                            steps=severity_steps, probe=pdata)
                        sev["one_step"].append(os_.accuracy)
                        sev["multi_step"].append(None if ms is None else ms.accuracy)
                        if mc.metrics:
                            sev.setdefault(f"one_step_{mc.metric_name}", []).append(os_.extra.get(mc.metric_name))
                            sev.setdefault(f"multi_step_{mc.metric_name}", []).append(
                                None if ms is None else ms.extra.get(mc.metric_name))
                    advance(1)

        parts.begin("certified")
        cert = certified_floor(module, dset, dev, cov, method=certified) if certified else {
            "accuracy": None, "method": None, "reason": "not requested"}
        parts.end()

    return EstimateResult(
        mlabel, dlabel, {"name": spec.name, "coverage": cov, **dev.describe()},
        base.row(), quant.row(), random, worst, tuple(faults), sev, time.perf_counter() - t0,
        {"task": current().describe(), "seed": seed, "steps": steps, "probe": plabel, "certified": cert,
         "search": {"inputs": None if pdata is None else len(as_tensors(pdata)[0]), "bit_rounds": bit_rounds,
                    "bit_tensors": bit_tensors, "severity_trials": severity_trials or max(1, trials // 10),
                    "severity_steps": severity_steps},
         "seconds_by_part": {k: round(v, 3) for k, v in parts.seconds.items()},
         "clean_evaluation_seconds": round(clean_seconds, 4)})


PARTS = ("clean", "monte_carlo", "worst_case", "per_fault", "severity", "certified")


def _search_subset(dset, n: int, label):
    """At most ``n`` of the evaluation inputs, evenly spaced, for the searches (all when fewer)."""
    x, y = as_tensors(dset)
    if len(x) <= n:
        return None, label
    idx = torch.linspace(0, len(x) - 1, n).round().long()
    return (x[idx], None if y is None else y[idx]), f"{n} of the {len(x)} evaluation inputs (evenly spaced)"


class _Parts:
    """The seconds of each part of an estimate (``seconds_by_part``), and the outer progress row that
    names the part running (``estimate: worst case``, 3/6)."""

    def __init__(self, advance):
        self.advance, self.seconds, self.name, self.since = advance, {}, None, time.perf_counter()

    def begin(self, name: str) -> None:
        self.end()
        self.name, self.since = name, time.perf_counter()
        self.advance(0, description=f"estimate: {name.replace('_', ' ')}")

    def end(self) -> None:
        if self.name is not None:
            self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - self.since
            self.name = None
            self.advance(1)


def _ship(runner, model, module, data, dset, spec):
    """The job of an estimate's Monte-Carlo on every worker (None for a local run): the model and
    data by name or path when they were given so (the workers load them), else pickled."""
    if runner is None:
        return None
    return runner.ship(_Job(distributed.new_key(), distributed.source(model, module), distributed.source(data, dset),
                            spec.to_dict(), current(), distributed.device_type(module)))


def certified_floor(model, data, chip: Chip, coverage: float, method: str = "ibp") -> dict:
    """The certified accuracy over the chip's covering set (the floor of the bracket), or why there is none.

    ``method``: ``ibp`` (default: interval bounds, a second or two), ``crown``, ``auto`` or ``bab``
    (tighter, slower on large sets; auto and bab stop at 30 s); see :mod:`hwfault.certify`."""
    from ..errors import HwfaultError

    task = current()
    if task.name != "classification":
        return {"accuracy": None, "method": None, "reason": no_bound_reason(task)}
    if not differentiable(model):
        return {"accuracy": None, "method": None, "reason": f"{type(model).__name__}: certification needs the torch model"}
    try:
        from ..certification import certify_set

        pt = certify_set(model, data, chip.constraint(coverage), selection=chip.selection, method=method)
    except HwfaultError as e:
        return {"accuracy": None, "method": None, "reason": str(e)}
    return {"accuracy": pt.certified_accuracy, "method": pt.method, "stable": pt.certified_stable,
            "seconds": round(pt.seconds, 2)}


def no_bound_reason(task) -> str:
    """Why there is no certified bound for a task other than classification."""
    return (f"task {task.name}: the certified bounds cover classification margins (a (batch, classes) top-1 that "
            f"provably stays top-1); a bound on {task.metric_name} is not implemented, so only the Monte-Carlo and "
            f"worst-case estimates apply")
