"""The one place that runs a model over a data set and scores it, for every task.

Data are a :class:`~torch.utils.data.TensorDataset` (as :func:`hwfault.load_data` returns for the
shipped sets and ``.npz`` files), an :class:`hwfault.data.ArrayDataset` (memory-mapped ``.npy`` files
and shard directories), any map-style ``Dataset`` of ``(x, y)`` items, a ``DataLoader`` or an ``(x, y)``
pair of tensors. :func:`batches` streams them; :func:`evaluate` adds up per-batch statistics, so its
memory does not grow with the number of inputs.

What the output means is the task's (:mod:`hwfault.tasks`): classification (the default), ``lm``,
``regression`` or your own; each function takes ``task=`` and otherwise uses the current task.
Against a golden (fault-free) run, :func:`score_against` gives the fault-injection metrics: silent
data corruption (SDC, by the task's rule) and detected unrecoverable errors (DUE: non-finite
outputs). :func:`differentiable` says whether a model gives gradients (an ONNX file run in
onnxruntime does not).

Devices: each batch moves to the model's device (that of its first parameter, see
:mod:`hwfault.devices`) before the forward pass, and targets follow the outputs they are scored
against; scores come back as Python numbers, outputs stay on the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import tasks as _tasks
from .devices import device_of
from .errors import DataError, ModelError

DataLike = "TensorDataset | ArrayDataset | Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor]"
DEFAULT_BATCH = 1024


def _pair(item, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict) and "x" in item and "y" in item:
        item = (item["x"], item["y"])
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{where}: expected (x, y) items, got {type(item).__name__}"
                        + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    x, y = item[0], item[1]
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    y = y if isinstance(y, torch.Tensor) or y is None else torch.as_tensor(y)
    return x, y


def _model_input(x: torch.Tensor, task) -> torch.Tensor:
    """Inputs as the model takes them: floats as they are, integers as float32 unless the task feeds
    token ids (then int64)."""
    if x.is_floating_point():
        return x
    if x.dtype == torch.bool or not task.integer_inputs:
        return x.float()
    return x if x.dtype == torch.int64 else x.long()


model_input = _model_input


def batches(data, batch_size: int = DEFAULT_BATCH, *, task=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of any data (see the module docstring), inputs converted for the model."""
    from torch.utils.data import DataLoader, Dataset

    task = _tasks.get_task(task)
    if hasattr(data, "batch") and hasattr(data, "__len__") and not isinstance(data, DataLoader):
        it = (data.batch(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size))
    elif hasattr(data, "tensors") or isinstance(data, (tuple, list)):
        x, y = as_tensors(data)
        it = ((x[i:i + batch_size], None if y is None else y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    elif isinstance(data, DataLoader):
        it = (_pair(b, "DataLoader") for b in data)
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        it = (_pair(b, type(data).__name__) for b in loader)
    else:
        raise DataError(f"expected a data set name, an .npz/.npy path, a Dataset, a DataLoader or an (x, y) pair, "
                        f"got {type(data).__name__}")
    for xb, yb in it:  # (not x, y: the generators above read those)
        yield _model_input(xb, task), yb


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a TensorDataset or a pair, or all of any other data set read into memory."""
    if hasattr(data, "tensors"):
        x, y = data.tensors[:2]
        return x, y
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise DataError(f"expected an (x, y) pair, got a {type(data).__name__} of length {len(data)}")
        return data[0], data[1]
    xs, ys = [], []
    for x, y in batches(data, task=_RAW):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("the data set is empty")
    return torch.cat(xs), torch.cat(ys)


class _Raw(_tasks.Task):
    integer_inputs = True  # as_tensors keeps the data's own dtypes


_RAW = _Raw()


def length(data) -> int:
    """The number of inputs in any data."""
    if isinstance(data, (tuple, list)):
        return len(data[0])
    if hasattr(data, "dataset") and hasattr(data, "batch_size"):  # a DataLoader
        return len(data.dataset)
    return len(data)


@dataclass(frozen=True)
class EvalResult:
    """Scores of a model on a data set: ``accuracy`` (top-1; token accuracy for ``lm``; share within
    tolerance for ``regression``), ``loss`` (the task's: cross-entropy in nats, or MSE), ``n`` inputs,
    ``nonfinite`` inputs with NaN/Inf outputs, and the task's own ``metrics`` (perplexity, mse, ...)."""

    accuracy: float
    loss: float
    n: int
    nonfinite: int = 0
    task: str = "classification"
    metrics: dict = field(default_factory=dict)
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    @property
    def metric(self) -> float:
        """The task's headline metric (accuracy, perplexity, mse, ...)."""
        if self.metric_name == "accuracy":
            return self.accuracy
        v = self.metrics.get(self.metric_name)
        return math.inf if v is None and not self.higher_is_better else (-math.inf if v is None else v)

    def rank(self) -> tuple[float, float]:
        """Sort key: smaller is worse for the model (lower accuracy, higher perplexity; then higher loss)."""
        m = self.metric
        loss = self.loss if math.isfinite(self.loss) else math.inf
        m = m if not math.isnan(m) else -math.inf
        return (m if self.higher_is_better else -m, -loss)

    def row(self) -> dict:
        """What every result row carries: ``accuracy``, ``loss`` and the task's metrics."""
        out = {"accuracy": self.accuracy, "loss": self.loss, **self.metrics}
        if self.task != "classification":
            out["metric"] = self.metric
        return out

    def to_dict(self) -> dict:
        return {**self.row(), "n": self.n, "nonfinite": self.nonfinite}


def along(y: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    """Targets ``y`` on the device of the outputs ``out`` they are scored against."""
    return y if y is None or y.device == out.device else y.to(out.device)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dev = device_of(model)
    if x.device != dev:
        x = x.to(dev)
    try:
        out = model(x)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not x.is_floating_point() and x.numel() and ("index out of range" in msg or "out of bounds" in msg
                                                        or "indices element out of data bounds" in msg):
            raise DataError(f"token id {int(x.max())} in the data is beyond the model's vocabulary "
                            f"(its embedding raised: {msg[:120]})") from None
        hint = ("; a model of token ids needs --task lm (for other tasks integer inputs reach the model as float32)"
                if "'indices'" in msg and x.is_floating_point() else "")
        raise ModelError(f"model cannot run on data of shape {tuple(x.shape[1:])}: {msg[:200]}{hint}") from None
    return as_output(out, getattr(model, "hwfault_output", None))


def _keys(out) -> list:
    return list(out.keys())


def as_output(out, select: str | int | None = None) -> torch.Tensor:
    """The output tensor to score: a tensor; the ``select``-th element or ``select`` key of a tuple or
    dict (``--output``); else the first element of a tuple/list or the ``logits`` entry of a dict (as
    Hugging Face models return). A one-line ModelError for anything else."""
    is_map = isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")
                                       and not isinstance(out, torch.Tensor))
    if select is not None and not isinstance(out, torch.Tensor):
        if is_map:
            keys = _keys(out)
            key = select if select in keys else (keys[int(select)] if str(select).isdigit() and int(select) < len(keys)
                                                 else None)
            if key is None:
                raise ModelError(f"--output {select}: the model's outputs are {keys[:12]}")
            out = out[key]
        elif isinstance(out, (tuple, list)):
            if not str(select).isdigit() or int(select) >= len(out):
                raise ModelError(f"--output {select}: the model returns a {type(out).__name__} of {len(out)} "
                                 f"outputs; give an index 0..{len(out) - 1}")
            out = out[int(select)]
    elif is_map:
        keys = _keys(out)
        if "logits" not in keys:
            raise ModelError(f"the model returns a dict with keys {keys[:8]} (no 'logits'); pick the output to "
                             f"score with --output NAME (output= in Python)")
        out = out["logits"]
    elif select is not None and str(select) != "0":
        raise ModelError(f"--output {select}: the model returns a single tensor {tuple(out.shape)}, not several "
                         f"outputs to choose from")
    if isinstance(out, (tuple, list)):
        if not out:
            raise ModelError("expected the model to return an output tensor, got an empty sequence")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"expected the model to return a tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise ModelError(f"expected the model to return floating-point outputs, got {str(out.dtype).replace('torch.', '')} "
                         f"{tuple(out.shape)} (class indices, e.g. an argmax, cannot be scored or differentiated; "
                         f"pick another output with --output)")
    if out.ndim == 0:
        raise ModelError("expected the model to return a batch of outputs, got a scalar")
    return out


as_logits = as_output


def output_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's scored output on a batch (with its gradient graph, for training)."""
    return _forward(model, x)


def differentiable(model: nn.Module) -> bool:
    """Whether gradients flow through ``model`` (False for a model that runs outside torch, such as an
    ONNX file in onnxruntime, which declares ``differentiable = False``)."""
    return getattr(model, "differentiable", True) is not False


def accuracy_of(out: torch.Tensor, y: torch.Tensor | None, *, task=None) -> float | None:
    """The task's accuracy of outputs against targets (non-finite rows count as wrong); None without targets."""
    if y is None:
        return None
    return score(out, y, task=task).accuracy


@dataclass(frozen=True)
class Golden:
    """The fault-free run that faulty runs are scored against: its outputs, the task's reference
    (top-1 predictions; per-token predictions; the outputs themselves), which units count for SDC
    (correctly handled inputs or tokens), and its scores."""

    logits: torch.Tensor
    pred: torch.Tensor
    correct: torch.Tensor
    accuracy: float
    task: _tasks.Task = field(default=_tasks.CLASSIFICATION, repr=False)
    result: EvalResult | None = None

    @classmethod
    def of(cls, out: torch.Tensor, y: torch.Tensor, *, task=None) -> Golden:
        t = _tasks.get_task(task)
        y = along(y, out)
        r = score(out, y, task=t)
        ref, correct = t.reference(out, y)
        return cls(out, ref, correct, r.accuracy, t, r)


def score_against(out: torch.Tensor, y: torch.Tensor, golden: Golden, *, critical: float = 0.01) -> dict:
    """A faulty run's metrics against the golden run: ``accuracy``, ``loss`` (None when not finite),
    ``sdc`` (any unit the golden run handles correctly — an input, a token — changed by the task's
    rule or became non-finite), ``sdc_rate`` (the share of those units), ``critical_sdc`` (the headline
    metric worsened by more than ``critical``: accuracy points, or a relative increase of perplexity
    or MSE) and ``due`` (any output NaN/Inf)."""
    t = golden.task
    if out.device != golden.pred.device:
        out = out.to(golden.pred.device)
    y = along(y, out)
    r = score(out, y, task=t)
    flipped = golden.correct & t.changed(out, golden.pred, y)
    n_ok = int(golden.correct.sum())
    g = golden.result
    if t.higher_is_better:
        crit = g.metric - r.metric > critical
    else:
        crit = not (r.metric - g.metric <= critical * abs(g.metric))
    return {"accuracy": r.accuracy, "loss": r.loss if r.nonfinite == 0 and math.isfinite(r.loss) else None,
            "sdc": int(bool(flipped.any())), "sdc_rate": float(flipped.sum()) / max(n_ok, 1),
            "critical_sdc": int(bool(crit)), "due": int(r.nonfinite > 0)}


def check_labels(out: torch.Tensor, y: torch.Tensor, *, task=None) -> None:
    """A one-line error when the outputs do not fit the targets (e.g. a label beyond the model's outputs)."""
    _tasks.get_task(task).check(out, along(y, out))


def check_targets(sample_out: torch.Tensor, y: torch.Tensor, *, task=None) -> None:
    """A one-line error when outputs on a few inputs (``sample_out``) do not fit the targets ``y`` of
    the whole data set: the task's check on those inputs, and every integer label or token id among
    the model's outputs."""
    t = _tasks.get_task(task)
    t.check(sample_out, along(y[:len(sample_out)], sample_out))
    if not y.is_floating_point() and y.numel() and sample_out.ndim >= 2:
        valid = y[y >= 0]
        if valid.numel() and int(valid.max()) >= sample_out.shape[-1]:
            what = "token id" if sample_out.ndim == 3 else "label"
            raise ModelError(f"model has {sample_out.shape[-1]} outputs but the data have {what} {int(valid.max())}")


@torch.no_grad()
def logits(model: nn.Module, data, *, batch_size: int = DEFAULT_BATCH, task=None) -> torch.Tensor:
    """All outputs of ``model`` on ``data`` (eval mode is the caller's responsibility)."""
    outs = [_forward(model, x) for x, _ in batches(data, batch_size, task=_tasks.for_model(task, model))]
    if not outs:
        raise DataError("the data set is empty")
    return torch.cat(outs)


def _add(total: dict, s: dict) -> dict:
    for k, v in s.items():
        total[k] = total.get(k, 0) + v
    return total


def score(out: torch.Tensor, y: torch.Tensor, *, task=None) -> EvalResult:
    """The task's scores from precomputed outputs."""
    t = _tasks.get_task(task)
    return t.result(t.sums(out, along(y, out)))


def evaluate(model: nn.Module, data, *, batch_size: int = DEFAULT_BATCH, task=None) -> EvalResult:
    """The task's scores of ``model`` on ``data``, streamed batch by batch (memory does not grow with
    the number of inputs). ``task``: default the running analysis's, else the model's own."""
    t = _tasks.for_model(task, model)
    total: dict = {}
    with torch.no_grad():
        for x, y in batches(data, batch_size, task=t):
            out = _forward(model, x)
            _add(total, t.sums(out, along(y, out)))
    if not total:
        raise DataError("the data set is empty")
    return t.result(total)


def loss_and_grad(model: nn.Module, data, params: Sequence[torch.Tensor], *,
                  batch_size: int = DEFAULT_BATCH, task=None) -> tuple[EvalResult, list[torch.Tensor]]:
    """Scores of ``model`` on ``data`` and the gradient of the task's mean loss (over inputs, or over
    tokens for ``lm``) w.r.t. ``params``, from one forward and backward pass.

    Gradients are accumulated over batches (weighted by their units), so the result does not depend
    on ``batch_size``. ``requires_grad`` on ``params`` is switched on only for the call.
    """
    t = _tasks.for_model(task, model)
    flags = [p.requires_grad for p in params]
    grads = [torch.zeros_like(p) for p in params]
    total: dict = {}
    units = 0
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for xb, yb in batches(data, batch_size, task=t):
                out = _forward(model, xb)
                yb = along(yb, out)
                loss, k = t.loss_sum(out, yb)
                units += k
                gs = torch.autograd.grad(loss, list(params), allow_unused=True)
                for acc, g in zip(grads, gs):
                    if g is not None:
                        acc.add_(g)
                _add(total, t.sums(out.detach(), yb))
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    if not total:
        raise DataError("the data set is empty")
    return t.result(total), [g / max(units, 1) for g in grads]


def finite_gradient(g: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The gradient with its non-finite entries made finite (NaN -> 0, +-Inf -> +-largest float) and
    their count: where the loss is NaN for some inputs, a corruption is still built from the rest
    (and the result records how many entries were replaced)."""
    bad = int((~torch.isfinite(g)).sum())
    if not bad:
        return g, 0
    big = torch.finfo(g.dtype).max
    return torch.nan_to_num(g, nan=0.0, posinf=big, neginf=-big), bad
