"""``hw.campaign``: what ``hwfault campaign`` runs, as one call.

    result = hw.campaign("digits-cnn", "digits", "int8-sram-0.5v", margin=0.01, db="j.sqlite")
    result.summary()["overall"]["sdc_rate"]

The model and data may be given as names or paths (needed to run on Dask: every worker rebuilds
them) or as in-process objects (an ``nn.Module`` and a dataset, for a local run).
"""

from __future__ import annotations

from torch import nn

from ... import validate
from ...devices import check_device
from ...errors import ConstraintError, HwfaultError
from ...faults import Chip
from ...inputs import load_model, resolve_task
from ...tasks import TASKS
from ...spec import load_chip
from ..distributed import check as check_runner, runner
from .plan import Plan, check_plan, make_plan
from .run import CACHE_MB, CampaignResult, Recipe, context, measure_trials, run_campaign

TASK_TYPES = tuple(TASKS.values())  # built-in tasks travel by name; a user's Task object as itself


def _recipe(model, data, chip, *, seed: int, params, by, critical: float, task=None, tolerance=None, output=None,
            weights=None, cache_mb: float | str = CACHE_MB, device=None, prove: bool = True):
    check_device(device)  # a missing GPU is one line before anything loads
    spec = load_chip(chip)
    t = resolve_task(task, model, tolerance)
    module = model if isinstance(model, nn.Module) else load_model(model, requires_grad=False, output=output,
                                                                   weights=weights)
    label = type(model).__name__ if isinstance(model, nn.Module) else str(model)
    dlabel = str(data) if isinstance(data, str) or hasattr(data, "__fspath__") else "<dataset>"
    cache_mb = check_cache_mb(cache_mb)
    tol = getattr(t, "tolerance", None) if t.name == "regression" else None
    return spec, module, Recipe(label, dlabel, spec.to_dict(), seed, params, by, critical,
                                t.name if type(t) in TASK_TYPES else t, tol, output,
                                None if weights is None else str(weights), cache_mb,
                                None if device is None else str(device), bool(prove))


def check_cache_mb(cache_mb) -> float | str:
    """``--cache-mb``: a positive number of megabytes or ``auto``."""
    if isinstance(cache_mb, str):
        if cache_mb.strip().lower() == "auto":
            return "auto"
        try:
            cache_mb = float(cache_mb)
        except ValueError:
            raise ConstraintError(f"expected --cache-mb as a number of megabytes or 'auto', got '{cache_mb}'") from None
    validate.positive("--cache-mb", cache_mb)
    return float(cache_mb)


def _objects(model, data):
    """The in-process model and data to hand to the context (None for what the recipe can load)."""
    obj_model = model if isinstance(model, nn.Module) else None
    obj_data = None if isinstance(data, str) or hasattr(data, "__fspath__") else data
    return obj_model, obj_data


def _sizes(spec, module, data):
    """For a single activation flip per trial: a function giving the neurons per input of each struck
    layer (from a fault-free forward of the data's first input); None for any other chip."""
    from .plan import single_activation_flip

    chip = Chip.build(spec, module)
    fault = single_activation_flip(chip)
    if fault is None:
        return None

    def sizes() -> dict:
        from ...evaluation import batches
        from ...faults.models.activation import layer_sizes
        from ...inputs import resolve_data

        dset, _ = resolve_data(data)
        return layer_sizes(module, fault, next(iter(batches(dset, 1)))[0])

    return sizes


def plan_campaign(model, data, chip, *, trials: int | None = None, margin: float | None = None,
                  confidence: float = 0.95, seed: int = 0, params: str | None = None, by: str | None = None,
                  measure: bool = True, task=None, tolerance: float | None = None, output=None, weights=None,
                  cache_mb: float | str = CACHE_MB, device=None, prove: bool = True) -> tuple[Plan, dict | None]:
    """The plan of a campaign (trials per stratum) and, with ``measure``, a few real trials timed:
    ``{"seconds_per_trial", "measured_trials", "estimated_seconds"}`` (what ``--dry-run`` prints)."""
    validate.seed(seed)
    validate.probability("--confidence", confidence)
    spec, module, recipe = _recipe(model, data, chip, seed=seed, params=params, by=by, critical=0.01, task=task,
                                   tolerance=tolerance, output=output, weights=weights, cache_mb=cache_mb,
                                   device=device, prove=prove)
    plan = make_plan(Chip.build(spec, module), trials=trials, margin=margin, confidence=confidence, by=by,
                     sizes=_sizes(spec, module, data))
    if not measure:
        return plan, None
    context(recipe, module, _objects(model, data)[1])
    return plan, measure_trials(recipe, plan)


def campaign(model, data, chip, *, trials: int | None = None, margin: float | None = None, confidence: float = 0.95,
             seed: int = 0, db: str | None = None, resume: bool = False, workers: int | None = None,
             scheduler: str | None = None, params: str | None = None, by: str | None = None, critical: float = 0.01,
             chunk: int | None = None, on_rows=None, task=None, tolerance: float | None = None, output=None,
             weights=None, cache_mb: float | str = CACHE_MB, device=None, prove: bool = True) -> CampaignResult:
    """A statistically sized, resumable fault-injection campaign of ``chip`` on ``model``.

    Size it with ``trials`` (per stratum) or ``margin`` at ``confidence`` (Leveugle et al. 2009);
    ``by="layer"`` makes one stratum per layer. ``db`` is the SQLite journal (committed per chunk of
    trials; ``resume=True`` runs only what is missing); ``workers`` runs a local Dask cluster and
    ``scheduler`` an existing one. Trial t is a pure function of (seed, t). ``task`` (default: the
    model's), ``tolerance``, ``output`` and ``weights`` as for every analysis; ``cache_mb`` bounds the
    fault-free activation cache (MB, or ``"auto"``: one forward pass's peak; values it does not keep
    are recomputed from the nearest kept ones). ``device`` (:mod:`hwfault.devices`; default the CPU)
    is where trials run: on Dask, ``cuda``/``auto`` give worker i ``cuda:(i % GPUs)``; the faults of
    trial t are drawn on the CPU, so they are the same on every device. ``prove`` (default on): inputs
    that a bound proves keep their top-1 class are not evaluated (:mod:`.bound`); accuracy, SDC and DUE
    stay exact, and such a trial's loss is recorded as not computed (None)."""
    check_runner(workers, scheduler)
    if resume and not db:
        raise HwfaultError("--resume needs --db")
    if trials is not None:
        validate.integer("--trials", trials, lo=1)
    validate.seed(seed)
    validate.probability("--confidence", confidence)
    obj_model, obj_data = _objects(model, data)
    if (workers or scheduler) and (obj_model is not None or obj_data is not None):
        raise ConstraintError("a campaign on Dask needs the model and data as names or files (every worker "
                              "rebuilds them); pass them so, or run without workers")
    spec, module, recipe = _recipe(model, data, chip, seed=seed, params=params, by=by, critical=critical, task=task,
                                   tolerance=tolerance, output=output, weights=weights, cache_mb=cache_mb,
                                   device=device, prove=prove)
    plan = make_plan(Chip.build(spec, module), trials=trials, margin=margin, confidence=confidence, by=by,
                     sizes=_sizes(spec, module, data))
    check_plan(plan)
    with runner(workers, scheduler) as rn:  # the cluster is up (or the scheduler answered) before the golden run
        context(recipe, obj_model if obj_model is not None else module, obj_data)
        return run_campaign(recipe, plan, db=db, resume=resume, chunk=chunk, on_rows=on_rows, runner=rn)
