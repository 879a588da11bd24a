"""Analyses over the corruption core: accuracy-vs-eps sweeps and per-component/per-layer probes.

These are what ``hwfault sweep`` and ``hwfault probe`` call; each takes a model (zoo name, path or
``nn.Module``) and data (name, ``.npz`` path or dataset) and returns a frozen result with
``to_dict()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .. import validate
from ..search import methods as corruption
from ..search.results import CorruptionResult
from ..constraints import LpBall, parse_norm
from ..errors import ConstraintError, did_you_mean
from ..evaluation import evaluate
from ..params import select
from ..inputs import analysis, resolve_data, resolve_model, resolve_probe
from ..runtime import single_thread
from ..tasks import current, using
from . import distributed

METHOD_NAMES = tuple(corruption.METHODS)


def norm_label(p: float) -> str | float:
    return "inf" if math.isinf(p) else (int(p) if float(p).is_integer() else p)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not names:
        raise ConstraintError("expected at least one method")
    for m in names:
        if m not in corruption.METHODS:
            raise ConstraintError(f"unknown method '{m}'{did_you_mean(m, corruption.METHODS)}")
    return names


def _as_float64(module: nn.Module | None, data):
    """A float64 copy of the model (the caller's module is left alone) and float64 inputs."""
    import copy

    from ..evaluation import as_tensors

    x, y = as_tensors(data)
    return (copy.deepcopy(module).double() if module is not None else None), (x.double(), y)


@dataclass(frozen=True)
class SweepResult:
    """Accuracy and loss under corruption, per method and eps."""

    model: str
    data: str
    norm: float
    n: int | None
    k: int
    params: tuple[str, ...]
    probe: str
    clean: dict
    results: tuple[CorruptionResult, ...]
    seconds: float
    settings: dict = field(default_factory=dict)

    def method(self, name: str) -> CorruptionResult:
        for r in self.results:
            if r.method == name:
                return r
        raise KeyError(name)

    def slopes(self) -> dict[str, float]:
        """Theorem 1 measured: the log-log slope of loss change vs eps per method (least squares over
        the eps with a positive loss change; a method needs three). At small eps it is about 1 for the
        gradient-based corruption and about 2 for random corruption."""
        out = {}
        for r in self.results:
            pts = [(p.eps, p.loss_change) for p in r.points
                   if p.eps > 0 and math.isfinite(p.loss_change) and p.loss_change > 0]
            if len(pts) >= 3:
                x, y = np.log([e for e, _ in pts]), np.log([c for _, c in pts])
                out[r.method] = float(np.polyfit(x, y, 1)[0])
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.model, "data": self.data, "norm": norm_label(self.norm),
            "n": self.n if self.n is not None else "all", "k": self.k, "params": list(self.params),
            "probe": self.probe, "clean": self.clean, **self.settings,
            "results": [pt for r in self.results for pt in r.to_dict()], "slopes": self.slopes(),
            "seconds": round(self.seconds, 3),
        }


@analysis
@distributed.on_dask
def sweep(model, data, *, epsilons: Sequence[float], norm: float | str = 2, n: int | None = None,
          params: str | Sequence[str] | None = None, types=None, layers=None,
          methods: str | Sequence[str] = METHOD_NAMES, trials: int = 10, seed: int = 0,
          probe: str | None = None, steps: int = 10, step_size: float | None = None,
          antithetic: bool = False, float64: bool = False, runner=None) -> SweepResult:
    """Run the chosen corruption methods over ``epsilons`` on the selected parameters.

    ``float64=True`` evaluates a float64 copy of the model on float64 inputs: at very small eps the
    second-order loss change of random corruption (~eps^2) is below float32 round-off.
    ``workers=N`` runs the random method's trials on a local Dask cluster of N processes,
    ``scheduler=ADDRESS`` on an existing one, with the same result as a local run
    (:mod:`hwfault.analyses.distributed`).
    """
    t0 = time.perf_counter()
    p = parse_norm(norm)
    names = parse_methods(methods)
    module, mlabel = resolve_model(model)
    dset, dlabel = resolve_data(data)
    if float64:
        module, dset = _as_float64(module, dset)
    ball = LpBall(p=p, eps=1.0, n=n)
    eps = validate.epsilons(epsilons)
    sel = select(module, params, types=types, layers=layers)
    pdata, plabel = resolve_probe(data, dset, probe)
    if float64 and probe is not None:
        pdata = _as_float64(None, pdata)[1]
    grad = None
    if probe is None and any(m in ("gradient", "multistep") for m in names):
        base, grad = corruption.clean_and_gradient(module, dset, sel)  # one forward and backward: the clean row and g
    else:
        base = evaluate(module, dset)
    results = []
    for m in names:
        kw: dict = {"selection": sel, "clean": base}
        if grad is not None and m in ("gradient", "multistep"):
            kw["grad"] = grad
        if m == "random":
            kw.update(trials=trials, seed=seed, antithetic=antithetic,
                      map_trials=_remote(runner, model, module, data, dset, float64, (params, types, layers), ball, eps,
                                         seed, antithetic))
        else:
            kw["probe"] = None if probe is None else pdata
        if m == "multistep":
            kw.update(steps=steps, step_size=step_size)
        results.append(corruption.METHODS[m](module, dset, ball, epsilons=eps, **kw))
    return SweepResult(mlabel, dlabel, p, n, sel.numel, sel.names, plabel, base.row(), tuple(results),
                       time.perf_counter() - t0,
                       {"task": current().describe(), "trials": trials, "seed": seed, "steps": steps, "methods": names,
                        "dtype": "float64" if float64 else "float32"})


@dataclass(frozen=True)
class _Job:
    """What a Dask worker rebuilds a sweep's random trials from (shipped to every worker once)."""

    key: str
    model: object      # a name or path (loaded on the worker), or the module itself (already float64 if asked)
    data: object       # likewise
    float64: bool
    select: tuple      # (params, types, layers)
    ball: LpBall
    epsilons: tuple
    task: object
    device: str | None = None  # the caller's device type (None: the CPU)


def _chunk(job: _Job, seed: int, antithetic: bool, trials: list[int]) -> list[tuple[int, list]]:
    """Random corruption trials on a worker: ``[(t, rows per eps)]``."""

    def build():
        model, data = distributed.load(job.model, job.data, device=job.device)
        if job.float64:  # what came by name is converted here; what was shipped already is
            m64, d64 = _as_float64(model if isinstance(job.model, str) else None, data)
            model, data = (m64 if isinstance(job.model, str) else model), (d64 if isinstance(job.data, str) else data)
        params, types, layers = job.select
        return model, data, select(model, params, types=types, layers=layers)

    with using(job.task), single_thread():
        model, data, sel = distributed.built(job.key, build)
        return [(t, corruption.random_trial(model, data, job.ball, selection=sel, epsilons=job.epsilons, seed=seed,
                                            trial=t, antithetic=antithetic)) for t in trials]


def _remote(runner, model, module, data, dset, float64, sel_args, ball, eps, seed, antithetic):
    """The random method's ``map_trials`` on the runner (None for a local run)."""
    if runner is None:
        return None
    job = runner.ship(_Job(distributed.new_key(), distributed.source(model, module), distributed.source(data, dset),
                           float64, tuple(sel_args), ball, tuple(eps), current(), distributed.device_type(module)))
    return lambda trials, advance: runner.trials(_chunk, trials, job, seed, antithetic, advance=advance,
                                                 per_trial=len(eps))


@dataclass(frozen=True)
class ProbeResult:
    """Gradient-based corruption restricted to each group (component type or layer)."""

    model: str
    data: str
    by: str
    norm: float
    n: int | None
    probe: str
    clean: dict
    rows: tuple[dict, ...]
    seconds: float

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(r["group"] for r in self.rows))

    @property
    def epsilons(self) -> list[float]:
        return list(dict.fromkeys(r["eps"] for r in self.rows))

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "by": self.by, "norm": norm_label(self.norm),
                "n": self.n if self.n is not None else "all", "probe": self.probe, "clean": self.clean,
                "groups": list(self.rows), "seconds": round(self.seconds, 3)}


@analysis
def probe(model, data, *, epsilons: Sequence[float], by: str = "component", norm: float | str = "inf",
          n: int | None = None, params=None, types=None, layers=None, probe: str | None = None) -> ProbeResult:
    """Vulnerability probe (Sun et al. 2021, Fig. 4): the one-step corruption restricted to each group.

    Within a group the budget is ``min(n, group size)`` parameters.
    """
    t0 = time.perf_counter()
    p = parse_norm(norm)
    module, mlabel = resolve_model(model)
    dset, dlabel = resolve_data(data)
    eps = validate.epsilons(epsilons)
    ball = LpBall(p=p, eps=1.0, n=n)
    groups = select(module, params, types=types, layers=layers).groups(by)
    pdata, plabel = resolve_probe(data, dset, probe)
    base = evaluate(module, dset)
    rows = []
    for gname, gsel in groups.items():
        res = corruption.gradient(module, dset, ball, epsilons=eps, selection=gsel,
                                  probe=None if probe is None else pdata, clean=base)
        for pt in res:
            rows.append({"group": gname, "params": list(gsel.names), "numel": gsel.numel,
                         "n_effective": min(n, gsel.numel) if n else gsel.numel, "eps": pt.eps,
                         "accuracy": pt.accuracy, "loss": pt.loss, "loss_change": pt.loss_change,
                         **{k: v for k, v in pt.extra.items() if k != "grad_norm_q"}})
    return ProbeResult(mlabel, dlabel, by, p, n, plabel, base.row(),
                       tuple(rows), time.perf_counter() - t0)
