"""Running a fault-injection campaign: trials in chunks, locally or on Dask, journaled in SQLite.

A trial is a pure function of (campaign seed, trial id): its generator is seeded from both, its
stratum follows from its id, and it runs single-threaded, so any process anywhere computes the
same row. Faults are injected in place into the model's parameters and restored bit-exactly after
every trial (also when the trial raises); nothing is deep-copied. Fault-free work is done once per
process: the golden outputs, and the cached activations from which a trial whose faults sit in one
layer recomputes only that layer and what follows (:mod:`hwfault.campaign.incremental`).

Inputs that a Lipschitz bound proves keep their top-1 class (classification, ``prove``, on by default)
are not evaluated (:mod:`hwfault.analyses.campaign.bound`): accuracy, SDC and DUE stay exact, and the
loss of a trial that skipped any input is recorded as not computed (None).

Metrics per trial (against the golden run of the fault-free chip, i.e. the weights stored in the
chip's format): accuracy and loss; ``sdc``, whether any input the golden run classifies correctly
changed its top-1 class (for ``lm``: any correctly predicted token changed; for ``regression``: any
output moved by more than the tolerance); ``sdc_rate``, the share of those inputs (tokens) that did;
``critical_sdc``, whether accuracy fell by more than ``critical`` (default 1 point; perplexity or MSE:
rose by more than that fraction); ``due``, whether any output was NaN/Inf. Rows of an ``lm`` campaign
also carry ``perplexity`` and ``token_accuracy``, of a ``regression`` one ``mse``.

The fault-free activation cache holds at most ``cache_mb`` megabytes (default ``"auto"``: what one
fault-free forward pass over the inputs holds at its peak, so that a campaign needs about twice a
clean evaluation's memory); values it does not keep are
recomputed, fault-free, from the nearest kept ones (:mod:`hwfault.analyses.campaign.incremental`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ... import progress
from ...rng import trial_seed
from ...runtime import single_thread
from ...errors import HwfaultError
from ...evaluation import Golden, as_output, as_tensors, logits as run_logits, model_input, score_against
from ...faults import Chip
from ...params import perturbed
from ... import stats
from ..distributed import chunk_size
from ..realise import transient_logits
from .incremental import SPARSE_MAX, cache_bytes, try_cache
from .journal import Journal
from .plan import ACTIVATION_STRATUM, Plan, Stratum, activation_stratum, check_plan, sub_chip

MAX_SITES = 16  # sites listed per trial row; the count is always exact
CACHE_MB = "auto"  # default budget of the fault-free activation cache: about 2x a clean evaluation in all


@dataclass(frozen=True)
class Recipe:
    """Everything a process needs to rebuild a campaign's context (picklable, hashable identity)."""

    model: str
    data: str
    chip: dict            # the validated chip spec, as a dict
    seed: int
    params: str | None = None
    by: str | None = None
    critical: float = 0.01
    task: object = "classification"   # a task name, or a (picklable) hwfault.Task
    tolerance: float | None = None    # regression's SDC tolerance
    output: str | int | None = None   # which output of the model is scored
    weights: str | None = None        # the state dict of a package.module:factory model
    cache_mb: float | str = CACHE_MB   # how it runs, not what it computes: not part of the identity
    device: str | None = None          # where it runs (hwfault.devices; None = cpu): not part of the identity either
    prove: bool = True                 # skip inputs proven unchanged (their loss is then not computed): not identity

    def identity(self) -> dict:
        ident = {"model": self.model, "model_sha": _file_sha(self.weights or self.model), "data": self.data,
                 "chip": self.chip, "seed": self.seed, "params": self.params, "by": self.by, "critical": self.critical}
        name = self.task if isinstance(self.task, str) else getattr(self.task, "name", type(self.task).__name__)
        extra = {"task": name if name != "classification" else None, "tolerance": self.tolerance,
                 "output": self.output, "weights": self.weights}
        ident.update({k: v for k, v in extra.items() if v is not None})  # old journals keep their identity
        return ident

    def get_task(self):
        from ...tasks import get_task

        return get_task(self.task, tolerance=self.tolerance)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _file_sha(model: str) -> str | None:
    from ...zoo import checkpoint_path

    p = checkpoint_path(model)
    if p is None:
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- trials


class Context:
    """Per-process state of a campaign: model, data, chip, golden run and activation cache."""

    def __init__(self, recipe: Recipe, model: nn.Module | None = None, data=None):
        from ...data import load_data
        from ...inputs import load_model
        from ...runtime import tune_allocator
        from ...spec import ChipSpec

        tune_allocator()  # trials reuse freed activation buffers instead of mapping fresh pages
        self.recipe = recipe
        self.task = recipe.get_task()
        self.model = model if model is not None else load_model(recipe.model, requires_grad=False,
                                                                output=recipe.output, weights=recipe.weights)
        if model is not None and recipe.output is not None and not hasattr(self.model, "output_names"):
            self.model.hwfault_output = recipe.output  # (an ONNX module chose its output when it was loaded)
        x, self.y = as_tensors(data if data is not None else load_data(recipe.data, task=self.task))
        self.x = model_input(x, self.task)
        if recipe.device is not None:  # model, inputs and targets on this process's device; faults are drawn on the CPU
            from ...devices import device_of, to_device, worker_device

            self.model = to_device(self.model, worker_device(recipe.device))
            dev = device_of(self.model)
            self.x, self.y = self.x.to(dev), (None if self.y is None else self.y.to(dev))
        spec = ChipSpec.model_validate(recipe.chip)
        self.chip = Chip.build(spec, self.model)
        if recipe.params:
            import fnmatch

            names = [n for n in self.chip.selection.names
                     if any(fnmatch.fnmatchcase(n, g.strip()) for g in recipe.params.split(","))]
            if not names:
                raise HwfaultError(f"--params {recipe.params} matches none of the chip's parameters "
                                   f"{list(self.chip.selection.names)}")
            self.chip = sub_chip(self.chip, names)
        self.strata: dict[str, Chip] = {}
        base = self.chip.delta(self.chip.view.w_q.double())
        self._base = base if bool(torch.any(base)) else None  # float32 chips store the weights exactly
        with single_thread(), perturbed(self.chip.selection, base):
            self.golden = Golden.of(run_logits(self.model, (self.x, self.y), task=self.task), self.y, task=self.task)
            self.cache = None if self.chip.transient else try_cache(
                self.model, self.x, budget_mb=recipe.cache_mb, params=self.chip.selection.names)
        self.golden_acc = self.golden.accuracy
        g = self.golden.logits
        self._prove = bool(recipe.prove and self.cache is not None and self.cache.gains is not None
                           and self.task.name == "classification" and not getattr(self.task, "topk", None)
                           and getattr(self.model, "hwfault_output", None) is None
                           and isinstance(g, torch.Tensor) and g.ndim == 2 and g.shape[0] == len(self.x))
        if self._prove:
            with single_thread():
                self.cache.gains.warm()  # the Lipschitz constants: part of the set-up, as the golden run
        self.proven = self.evaluated = 0  # inputs this process proved unchanged / evaluated, over its trials

    def cache_info(self) -> dict:
        """The activation cache in the result: its budget, what it keeps, and whether there is one."""
        c = self.cache
        if c is None:
            return {"used": False, "reason": "transient faults" if self.chip.transient else "model not traceable by torch.fx"}
        seen = self.proven + self.evaluated
        return {"used": True, "budget_mb": None if c.budget_bytes is None else round(c.budget_bytes / 2**20, 1),
                "kept_mb": round(cache_bytes(c) / 2**20, 1), "kept_values": len(c.env), "values": len(c.nodes),
                "prove": self._prove,  # and, of the inputs of the trials this process ran, the share proven unchanged
                "proven_share": round(self.proven / seen, 4) if seen else None}

    def chip_for(self, stratum: Stratum) -> Chip:
        if stratum.name == "all":
            return self.chip
        if stratum.name not in self.strata:
            self.strata[stratum.name] = (activation_stratum(self.chip, stratum.params) if stratum.name.startswith(
                ACTIVATION_STRATUM) else sub_chip(self.chip, stratum.params))
        return self.strata[stratum.name]

    def _sites(self, chip: Chip, changed: torch.Tensor) -> str:
        offs = chip.offsets
        out = []
        for el in changed[:MAX_SITES].tolist():
            t = int(np.searchsorted(offs, el, side="right") - 1)
            out.append(f"{chip.selection.names[t]}[{el - int(offs[t])}]")
        more = changed.numel() - len(out)
        return ",".join(out) + (f",+{more}" if more > 0 else "")

    def trial(self, trial: int, stratum: Stratum) -> dict:
        t0 = time.perf_counter()
        chip = self.chip_for(stratum)
        seed = trial_seed(self.recipe.seed, trial)
        gen = torch.Generator().manual_seed(seed)
        sparse = None if chip.transient else chip.program_sparse(gen)  # O(faults) when the faults allow it
        if sparse is None:
            programmed = chip.program(gen)
            changed = torch.nonzero(programmed != chip.stored).reshape(-1)
            sparse = changed, programmed[changed]
        changed, new = sparse
        rows, cells = None, []
        # faults on top of the stored (quantised) weights: the golden run is the fault-free chip
        with perturbed(self.chip.selection, self._base), perturbed(chip.selection, _sparse_delta(chip, changed, new)):
            if chip.transient:
                out = transient_logits(self.model, self.x, chip, programmed, gen, relative_to=programmed, log=cells)
            elif self.cache is not None:
                touched = _touched(chip, changed)
                out, rows = self._cached(touched, _sparse(chip, changed, new, touched)) if touched \
                    else (self.golden.logits, None)
            else:
                out = run_logits(self.model, (self.x, self.y), task=self.task)
        m = score_against(out, self.y, self.golden, critical=self.recipe.critical)
        if rows is not None:  # some inputs were proven unchanged, not evaluated: their loss is not known
            m["loss"] = None
            self.proven += len(self.x) - rows.numel()
        self.evaluated += len(self.x) if rows is None else rows.numel()
        sites = self._sites(chip, changed)
        if cells:  # persistent activation flips: layer[neuron].bitB, the same cell for every input
            act = ",".join(f"{n}[{e}].bit{b}" for n, e, b in cells[:MAX_SITES])
            sites = ",".join(x for x in (sites, act) if x)
        return {"trial": trial, "stratum": stratum.name, "seed": seed,
                "n_faults": int(changed.numel()) + len(cells), "faults": sites, "accuracy": m["accuracy"],
                "loss": m["loss"], "sdc": m["sdc"], "sdc_rate": m["sdc_rate"], "critical_sdc": m["critical_sdc"],
                "due": m["due"], "duration": time.perf_counter() - t0,
                **self.task.row_metrics(m["accuracy"], m["loss"])}

    def _cached(self, touched: frozenset, sparse) -> tuple:
        """A trial's outputs from the cache, and the inputs actually evaluated (None: all). With
        ``prove`` on, inputs that a bound proves keep their top-1 class take the golden outputs."""
        if not self._prove:
            return self._scored(self.cache.logits(touched, sparse)), None
        out, rows = self.cache.logits_proven(touched, sparse, self.golden.logits)
        if rows is None:
            return out, None
        full = self.golden.logits.clone()
        if rows.numel():
            full[rows] = out
        return full, rows

    def _scored(self, out):
        return as_output(out, getattr(self.model, "hwfault_output", None))


def _sparse_delta(chip: Chip, changed: torch.Tensor, new: torch.Tensor) -> list:
    """The faults (new stored values ``new`` at flat indices ``changed``) as one delta per parameter
    tensor, None for the tensors no fault touched."""
    offs = chip.offsets
    out: list = [None] * len(chip.selection.params)
    if changed.numel() == 0:
        return out
    d = (new - chip.view.w_q[changed].double()).float()
    seg = np.searchsorted(offs, changed.numpy(), side="right") - 1
    for t in np.unique(seg).tolist():
        a, b = int(offs[t]), int(offs[t + 1])
        here = torch.from_numpy(seg == t)
        delta = torch.zeros(b - a)
        delta[changed[here] - a] = d[here]
        out[t] = delta.view(chip.selection.params[t].shape)
    return out


def _sparse(chip: Chip, changed: torch.Tensor, new: torch.Tensor, touched: frozenset):
    """``(name, flat index within the tensor, delta)`` when the faults sit in one tensor (else None)."""
    if len(touched) != 1 or changed.numel() > SPARSE_MAX:
        return None
    (name,) = touched
    t = chip.selection.names.index(name)
    local = changed - int(chip.offsets[t])
    return name, local, (new - chip.view.w_q[changed].double()).float()


def _touched(chip: Chip, changed: torch.Tensor) -> frozenset:
    """Names of the parameter tensors that hold the changed elements."""
    seg = np.unique(np.searchsorted(chip.offsets, changed.numpy(), side="right") - 1)
    return frozenset(chip.selection.names[i] for i in seg)


_CONTEXTS: dict[str, Context] = {}


def context(recipe: Recipe, model: nn.Module | None = None, data=None) -> Context:
    """This process's context for ``recipe`` (built once; ``model``/``data``: in-process objects to use
    instead of loading the recipe's, for a campaign run from Python in one process)."""
    if recipe.key not in _CONTEXTS or (model is not None and _CONTEXTS[recipe.key].model is not model) \
            or _CONTEXTS[recipe.key].recipe.device != recipe.device \
            or _CONTEXTS[recipe.key].recipe.cache_mb != recipe.cache_mb \
            or _CONTEXTS[recipe.key].recipe.prove != recipe.prove:
        _CONTEXTS.clear()
        _CONTEXTS[recipe.key] = Context(recipe, model, data)
    return _CONTEXTS[recipe.key]


def run_chunk(recipe: Recipe, plan: Plan, trials: list[int]) -> list[dict]:
    """Run some trials (in this process); the unit of work of a Dask task."""
    ctx = context(recipe)
    with single_thread():
        return [ctx.trial(t, plan.stratum_of(t)) for t in trials]


# ----------------------------------------------------------------------------- the campaign


#: a finished campaign keeps its rows in memory up to this many trials (beyond, read them from the journal)
ROWS_IN_MEMORY = 200_000


@dataclass(frozen=True)
class CampaignResult:
    identity: dict
    plan: dict
    rows: tuple[dict, ...] = field(repr=False)
    golden_accuracy: float
    seconds: float
    trials_per_second: float
    totals: dict = field(default_factory=dict, repr=False)
    golden: dict | None = None  # the golden run's accuracy, loss and task metrics
    cache: dict | None = None   # the fault-free activation cache: budget and what it keeps

    def summary(self) -> dict:
        return self.totals or summarize(self.rows, self.golden_accuracy)

    def to_dict(self) -> dict:
        return {"campaign": self.identity, "plan": self.plan, "golden_accuracy": self.golden_accuracy,
                **({"golden": self.golden} if self.golden else {}), **({"cache": self.cache} if self.cache else {}),
                **self.summary(), "seconds": round(self.seconds, 2),
                "trials_per_second": round(self.trials_per_second, 2)}


class _Agg:
    """Streaming aggregates of trial rows (Welford's mean and variance): constant memory per stratum."""

    def __init__(self):
        self.n, self.mean, self.m2, self.min = 0, 0.0, 0.0, math.inf
        self.hits = {"sdc": 0, "critical_sdc": 0, "due": 0}
        self.sdc_inputs, self.first = 0.0, None
        self.loss_n, self.loss_sum = 0, 0.0

    def add(self, r: dict) -> None:
        self.n += 1
        a = float(r["accuracy"])
        d = a - self.mean
        self.mean += d / self.n
        self.m2 += d * (a - self.mean)
        self.min = min(self.min, a)
        for k in self.hits:
            self.hits[k] += int(r[k])
        self.sdc_inputs += float(r["sdc_rate"])
        if r.get("loss") is not None and math.isfinite(r["loss"]):
            self.loss_n += 1
            self.loss_sum += float(r["loss"])
        if self.first is None:
            self.first = r["trial"]

    def to_dict(self, confidence: float) -> dict:
        n = self.n
        out = {"trials": n, "accuracy_mean": self.mean if n else None,
               "accuracy_ci95": list(stats.t_interval_from(self.mean, math.sqrt(self.m2 / (n - 1)) if n > 1 else 0.0,
                                                           n, confidence, domain=(0.0, 1.0))) if n else None,
               "accuracy_min": self.min if n else None}
        for k, hits in self.hits.items():
            out[f"{k}_rate"] = hits / n if n else None
            out[f"{k}_ci95"] = list(stats.wilson(hits, n, confidence)) if n else None
        out["sdc_inputs_mean"] = self.sdc_inputs / n if n else None
        out["loss_mean"] = self.loss_sum / self.loss_n if self.loss_n else None  # over trials with a finite loss
        out["loss_trials"] = self.loss_n  # (trials that skipped proven inputs have none)
        return out


def summarize(rows: Iterable[dict], golden_accuracy: float, confidence: float = 0.95) -> dict:
    """Aggregates with intervals, overall and per stratum, in one streaming pass over ``rows``
    (rows may come straight from a journal cursor: nothing is held per trial). The accuracy
    interval is clipped to [0, 1]."""
    overall, strata = _Agg(), {}
    for r in rows:
        overall.add(r)
        strata.setdefault(r["stratum"], _Agg()).add(r)
    order = sorted(strata, key=lambda s: strata[s].first)
    return {"overall": overall.to_dict(confidence), "strata": {s: strata[s].to_dict(confidence) for s in order}}


def _missing(planned: int, done: list[tuple[int, int]]) -> Iterator[int]:
    """The trial ids in [0, planned) outside the sorted ranges ``done``, lazily."""
    t = 0
    for a, b in done:
        yield from range(t, min(a, planned))
        t = max(t, b)
    yield from range(t, planned)


def _chunks(ids: Iterator[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for t in ids:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_campaign(recipe: Recipe, plan: Plan, *, db: str | None = None, resume: bool = False, workers: int | None = None,
                 scheduler: str | None = None, chunk: int | None = None,
                 on_rows: Callable[[list[dict]], None] | None = None, runner=None) -> CampaignResult:
    """Run (or resume) a campaign; every chunk is committed to the journal before the next is counted.

    Trial ids are generated lazily and rows stream into the journal, so a campaign of any planned
    size (up to :data:`~hwfault.validate.MAX_CAMPAIGN_TRIALS`) runs in constant memory until it ends or
    is stopped; ``--resume`` continues it. A journal this call created is removed again if the
    campaign fails before its first trial is committed. ``runner``: an open
    :class:`~hwfault.analyses.distributed.Runner` to run on (instead of ``workers``/``scheduler``)."""
    t0 = time.perf_counter()
    check_plan(plan)
    identity = {**recipe.identity(), "plan": plan.to_dict()}
    ctx = context(recipe)  # validates the recipe (model, data, chip) before any journal exists
    journal = Journal(db if db else ":memory:")
    ok = False
    try:
        journal.bind(identity, resume=resume)
        done = journal.done_ranges()
        n_done = sum(b - a for a, b in done)
        todo = plan.planned_trials - n_done
        size = chunk or chunk_size(todo, runner.workers if runner is not None else workers)
        chunks = _chunks(_missing(plan.planned_trials, done), size)
        journal.set_meta("golden_accuracy", ctx.golden_acc)
        journal.set_meta("golden", ctx.golden.result.row())
        ok = True
        with progress.task("campaign", plan.planned_trials) as advance:
            advance(n_done)
            if runner is not None or workers or scheduler:
                _run_dask(recipe, plan, chunks, journal, advance, workers, scheduler, on_rows, runner)
            else:
                for c in chunks:
                    rows = run_chunk(recipe, plan, c)
                    journal.write(rows)
                    advance(len(rows))
                    if on_rows:
                        on_rows(rows)
        count = journal.count()
        totals = summarize(journal.iter_rows(), ctx.golden_acc)
        rows = tuple(with_metrics(journal.iter_rows(), ctx.task)) if count <= ROWS_IN_MEMORY else ()
    except BaseException:
        with contextlib.suppress(Exception):
            if not ok or journal.count() == 0:
                journal.discard()
        raise
    finally:
        journal.close()
    seconds = time.perf_counter() - t0
    return CampaignResult(identity, plan.to_dict(), rows, ctx.golden_acc, seconds,
                          todo / seconds if seconds else 0.0, totals, ctx.golden.result.row(), ctx.cache_info())


def with_metrics(rows: Iterable[dict], task) -> Iterator[dict]:
    """Journal rows with the task's metrics that follow from accuracy and loss (perplexity, mse)."""
    for r in rows:
        extra = task.row_metrics(r["accuracy"], r["loss"])
        yield {**r, **extra} if extra else r


def measure_trials(recipe: Recipe, plan: Plan, *, seconds: float = 1.0, max_trials: int = 20) -> dict:
    """Time a few trials of the plan (for ``--dry-run``): ``{"seconds_per_trial", "measured_trials",
    "estimated_seconds"}`` (the estimate for one process)."""
    ctx = context(recipe)
    n, t0 = 0, time.perf_counter()
    with single_thread():
        while n < min(max_trials, plan.planned_trials) and (n == 0 or time.perf_counter() - t0 < seconds):
            ctx.trial(n, plan.stratum_of(n))
            n += 1
    per = (time.perf_counter() - t0) / max(n, 1)
    return {"seconds_per_trial": per, "measured_trials": n, "estimated_seconds": per * plan.planned_trials}


def _run_dask(recipe, plan, chunks, journal, advance, workers, scheduler, on_rows, runner=None) -> None:
    from ..distributed import connect

    own = runner is None
    runner = runner or connect(workers, scheduler)
    try:
        for rows in runner.map(run_chunk, chunks, recipe, plan):
            journal.write(rows)
            advance(len(rows))
            if on_rows:
                on_rows(rows)
    finally:
        if own:
            runner.close()
