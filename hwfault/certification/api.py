"""The public API: certified accuracy over a grid of eps (:func:`certify`), for one set
(:func:`certify_set`) and for intN rounding (:func:`quantisation_safety`).

Methods (one sound bound each): ``ibp``, ``crown`` (:mod:`.graph`), ``bab``: CROWN, then an attack
(:mod:`.attack`: an input with a counterexample is not branched on, and the share left gives an upper
bound on robust accuracy, ``attack_upper_accuracy``), then branch and bound (:mod:`.bab`) for the
correct inputs left; ``auto``: IBP for all inputs, CROWN for the rest, then branch and bound, within
one time budget.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import progress, validate
from ..constraints import ConstraintSet
from ..errors import ConstraintError, DataError
from ..evaluation import as_tensors, check_labels, logits
from ..params import Selection
from ..search.results import ByEps
from .attack import _falsify
from .bab import _bab
from .graph import _graph, _Graph
from .propagate import _lower_all, _margin_spec, check_method
from .sets import RELATIVE, PerturbationSet, _parse_norm, _selection, quantisation_set

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CertifyPoint:
    """Certification at one eps (``eps`` None for a set that is not an eps-ball).

    ``certified_accuracy``: share of inputs classified correctly whose margin lower bound is > 0
    against every other class; ``certified_stable``: share whose predicted class is certified
    unchanged (correct or not); ``mean_margin_lower``: mean over inputs of the smallest lower bound
    of f_label - f_j."""

    eps: float | None
    method: str
    certified_accuracy: float
    certified_stable: float
    clean_accuracy: float
    mean_margin_lower: float
    seconds: float
    n: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"eps": self.eps, "method": self.method, "certified_accuracy": self.certified_accuracy,
                "certified_stable": self.certified_stable, "clean_accuracy": self.clean_accuracy,
                "mean_margin_lower": self.mean_margin_lower, "seconds": self.seconds, "n": self.n, **self.extra}


@dataclass(frozen=True)
class CertifyResult(ByEps):
    """Certified accuracy indexed by eps (``result[eps]``), in the order the epsilons were given."""

    norm: str
    relative: str | None
    params: tuple[str, ...]
    k: int
    method: str
    points: tuple[CertifyPoint, ...]

    def to_dict(self) -> dict:
        return {"norm": self.norm, "relative": self.relative, "params": list(self.params), "k": self.k,
                "method": self.method, "points": [p.to_dict() for p in self.points]}


def _model(model: nn.Module | str) -> nn.Module:
    if isinstance(model, str):
        from ..inputs import load_model

        return load_model(model, requires_grad=False)
    from ..devices import device_of

    if device_of(model).type != "cpu":  # the bounds are float64 CPU arithmetic: a CPU copy of the model
        import copy

        return copy.deepcopy(model).cpu()
    return model


def _resolve(model, data):
    model = _model(model)
    if isinstance(data, str):
        from ..inputs import resolve_data

        data, _ = resolve_data(data, "test")
    x, y = as_tensors(data)
    if len(x) == 0:
        raise DataError("certify: expected at least one input, got an empty data set")
    return model, x, torch.as_tensor(y).long()


def _certify_one(graph: _Graph, model: nn.Module, x, y, pred, pset: PerturbationSet, method: str, *,
                 intermediate: str, batch_size: int, time_budget: float, eps: float | None,
                 on_progress: Progress | None) -> CertifyPoint:
    t0 = time.perf_counter()
    w = graph.weights(pset)
    n = len(x)
    K = graph.nodes[graph.output].shape[0]
    C = torch.cat([_margin_spec(pred, K), _margin_spec(y, K)], dim=1)           # (n, 2K, K)
    total = n * (2 if method == "auto" else 1)
    state = {"done": 0, "total": total}

    def tick(m: int) -> None:
        state["done"] += m
        if on_progress:
            on_progress(state["done"], state["total"])

    def stable_of(lb):
        lp = lb[:, :K].clone()
        lp[torch.arange(n), pred] = math.inf
        return lp.min(1).values

    extra: dict = {}
    deadline = t0 + time_budget if time_budget is not None else None
    if method in ("ibp", "crown", "bab"):
        lb, _ = _lower_all(graph, w, x, C, "crown" if method == "bab" else method, intermediate, batch_size, tick)
        label = method
    else:
        lb, _ = _lower_all(graph, w, x, C, "ibp", intermediate, batch_size, tick)
        ibp_stable = stable_of(lb) > 0
        extra["ibp_certified_accuracy"] = float(((ibp_stable) & (pred == y)).double().mean())
        todo = torch.nonzero(~ibp_stable).reshape(-1)
        tick(n - len(todo))
        if len(todo):
            lc, done = _lower_all(graph, w, x[todo], C[todo], "crown", intermediate, batch_size, tick, deadline)
            lb[todo] = torch.maximum(lb[todo], lc)
            extra["crown_inputs"] = done
            extra["crown_skipped"] = len(todo) - done
        else:
            extra["crown_inputs"], extra["crown_skipped"] = 0, 0
        label = "auto(ibp+crown)" if extra["crown_inputs"] else "auto(ibp)"
    stable = stable_of(lb) > 0
    ll = lb[:, K:].clone()
    ll[torch.arange(n), y] = math.inf
    margin = ll.min(1).values
    correct = pred == y
    if method == "bab" or (method == "auto" and extra["crown_inputs"] and not extra["crown_skipped"]):
        # branch and bound for the correct inputs left, closest to certified first, in the budget
        if method == "bab":
            deadline = time.perf_counter() + time_budget if time_budget is not None else None
        cand = torch.nonzero(correct & ~stable).reshape(-1)
        t1 = time.perf_counter()
        # an attack first: an input with a counterexample cannot be certified, so it is not branched on
        bad = _falsify(model, x[cand], y[cand], pset, deadline=deadline)
        extra["falsified"] = int(bad.sum())
        extra["attack_upper_accuracy"] = (int(correct.sum()) - int(bad.sum())) / n
        cand = cand[~bad]
        cand = cand[torch.argsort(margin[cand], descending=True, stable=True)]
        state["total"] = total + len(cand)
        before = state["done"]
        got = _bab(graph, w, x[cand], C[cand, K:], y[cand], deadline=deadline, on_input=tick) if len(cand) \
            else cand.bool()
        tick(before + len(cand) - state["done"])                 # the inputs the search did not reach
        won = cand[got]
        stable[won] = True
        margin[won] = margin[won].clamp(min=0.0)
        extra.update(bab_inputs=len(cand), bab_certified=len(won), bab_seconds=round(time.perf_counter() - t1, 4))
        label = "crown+bab" if method == "bab" else "auto(ibp+crown+bab)"
    return CertifyPoint(eps, label, float((stable & correct).double().mean()), float(stable.double().mean()),
                        float(correct.double().mean()), float(margin.mean()),
                        round(time.perf_counter() - t0, 4), n, extra)


@contextlib.contextmanager
def _bar(description: str, n: int, on_progress: Progress | None):
    """A bar over inputs for one certification (its total grows when branch and bound starts), shown
    while progress is enabled, feeding the caller's ``on_progress`` too."""
    with progress.task(description, n) as advance:
        seen = [0]

        def tick(done: int, total: int) -> None:
            advance(done - seen[0], total=total)
            seen[0] = done
            if on_progress:
                on_progress(done, total)

        yield tick


def certify(model: nn.Module | str, data, *, eps: float | Sequence[float], norm: str | float = "inf",
            relative: str | None = None, params: str | Sequence[str] | Selection | None = "*",
            method: str = "auto", intermediate: str = "crown", batch_size: int = 128, time_budget: float = 30.0,
            on_progress: Progress | None = None) -> CertifyResult:
    """Certified accuracy of ``model`` on ``data`` under weight perturbations of size ``eps``.

    ``norm``: 'inf' (per-element box) or '2' (per-tensor L2 ball); ``relative``: None (absolute),
    'element' or 'tensor' (see :meth:`PerturbationSet.ball`); ``params``: globs understood by
    :func:`hwfault.params.select` or a Selection ('*' = every parameter: weights, biases, norms).
    ``method``: 'ibp', 'crown', 'bab' (CROWN, then branch and bound for the correct inputs left, for
    ``time_budget`` seconds) or 'auto' (IBP for all inputs, then CROWN for the inputs IBP does not
    certify, then branch and bound, all within ``time_budget`` seconds per eps). With 'bab' and 'auto',
    ``mean_margin_lower`` counts an input certified by branching as 0 (its bound is the least over its
    branches, > 0). ``on_progress(done, total)`` is called per chunk; ``total`` grows when branching starts.
    """
    eps_list = validate.epsilons(eps)
    p = _parse_norm(norm)
    if relative not in RELATIVE:
        raise ConstraintError(f"certify: expected relative None, 'tensor' or 'element', got '{relative}'")
    check_method(method, intermediate, time_budget)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConstraintError(f"certify: expected batch_size >= 1, got {batch_size}")
    model, x, y = _resolve(model, data)
    sel = _selection(model, params)
    graph = _graph(model, x)
    out = logits(model, (x, y))
    check_labels(out, y)
    pred = out.argmax(1)
    points = []
    for i, e in enumerate(eps_list):
        pset = PerturbationSet.ball(model, e, norm=p, relative=relative, params=sel)
        with _bar(f"certify eps={e:g} ({i + 1}/{len(eps_list)})", len(x), on_progress) as tick:
            points.append(_certify_one(graph, model, x, y, pred, pset, method, intermediate=intermediate,
                                       batch_size=batch_size, time_budget=time_budget, eps=e, on_progress=tick))
    return CertifyResult(p, relative, tuple(sel.names), sel.numel, method, tuple(points))


def certify_set(model: nn.Module | str, data, perturbation: PerturbationSet | ConstraintSet, *,
                selection: Selection | None = None, method: str = "auto", intermediate: str = "crown",
                batch_size: int = 128, time_budget: float = 30.0,
                on_progress: Progress | None = None, label: str = "certify") -> CertifyPoint:
    """Certify one perturbation set: a :class:`PerturbationSet`, or an hwfault constraint set (a chip's
    covering set, a Box, an Ellipsoid, an LpBall) over ``selection``. ``label`` names the progress bar."""
    check_method(method, intermediate, time_budget)
    model, x, y = _resolve(model, data)
    if not isinstance(perturbation, PerturbationSet):
        if selection is None:
            raise ConstraintError("certify: a constraint set needs the selection it is laid out over")
        perturbation = PerturbationSet.from_constraint(selection, perturbation)
    graph = _graph(model, x)
    out = logits(model, (x, y))
    check_labels(out, y)
    pred = out.argmax(1)
    with _bar(label, len(x), on_progress) as tick:
        pt = _certify_one(graph, model, x, y, pred, perturbation, method, intermediate=intermediate,
                          batch_size=batch_size, time_budget=time_budget, eps=perturbation.description.get("eps"),
                          on_progress=tick)
    return CertifyPoint(pt.eps, pt.method, pt.certified_accuracy, pt.certified_stable, pt.clean_accuracy,
                        pt.mean_margin_lower, pt.seconds, pt.n, {**pt.extra, "set": perturbation.to_dict()})


def quantisation_safety(model: nn.Module | str, data, bits: int | None = None, *, per_channel: bool = False,
                        params: str | Sequence[str] | Selection | None = None, method: str = "auto",
                        batch_size: int = 128, time_budget: float = 30.0,
                        on_progress: Progress | None = None, format=None) -> CertifyPoint:
    """Quantisation safety: ``certified_stable`` is the share of inputs whose prediction is certified
    unchanged by any rounding of the selected weights inside the quantisation box (half a step per
    element, :func:`quantisation_set`: the intN grid of ``bits``, or any stored ``format``, block-wise);
    ``certified_accuracy`` also requires a correct prediction."""
    m = _model(model)
    pset = quantisation_set(m, bits, per_channel=per_channel, params=params, format=format)
    return certify_set(m, data, pset, method=method, batch_size=batch_size, time_budget=time_budget,
                       on_progress=on_progress, label=f"certify {pset.description['format']} rounding")
