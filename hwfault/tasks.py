"""What a model's output means and how it is scored: a task.

- ``classification`` (the default): logits ``(batch, classes)`` against integer labels ``(N,)``.
  Accuracy is top-1 (``Classification(topk=5)`` adds ``top5_accuracy``), the loss is mean
  cross-entropy; SDC: an input the golden run classifies correctly changes its top-1.
- ``lm`` (causal language modelling): integer token ids ``(N, T)`` in, logits ``(batch, T, vocab)``
  out, next-token ids ``y`` of shape ``(N, T)`` (``-100`` marks a position that is not scored, as in
  Hugging Face). The loss is mean next-token cross-entropy in nats, with ``perplexity`` = exp(loss)
  and ``token_accuracy``; SDC: a token the golden run predicts correctly changes its prediction.
- ``regression``: outputs ``(batch,)`` or ``(batch, k)`` against float targets of the same size.
  The loss is the mean squared error (``mse``), with ``mae``; ``accuracy`` is the share of inputs
  whose every output lies within ``tolerance`` of its target; SDC: an output moves by more than
  ``tolerance`` from the golden run's.
- your own: subclass :class:`Task` and give ``loss`` (per-input, differentiable), ``metric``
  (per-input; the headline is its mean) and ``sdc`` (per-input: did the output corrupt?).

Every analysis takes ``task=`` (a name or a Task); the CLI takes ``--task``. Zoo models know theirs.
Inside an analysis the task is the *current task* (:func:`using`), which the scoring functions of
:mod:`hwfault.evaluation` read when they are not given one.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .errors import DataError, HwfaultError, ModelError, did_you_mean

IGNORE = -100  # a target position that is not scored (language modelling)


def _shape(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"


class Task:
    """A task: what the output means, the loss to differentiate, the metric and the SDC rule.

    To define your own, subclass and override :meth:`loss`, :meth:`metric` and :meth:`sdc` (all
    per input, shape ``(batch,)``), and optionally :meth:`correct` (per input, for ``accuracy``) and
    :meth:`check` (raise :class:`hwfault.ModelError` when the output does not fit the targets)::

        class Within(hw.Task):
            name, metric_name, higher_is_better = "within", "hit_rate", True
            def loss(self, out, y):   return (out - y).pow(2).mean(1)
            def metric(self, out, y): return ((out - y).abs() < 0.5).all(1).double()
            def sdc(self, out, golden, y): return ((out - golden).abs() > 0.5).any(1)
    """

    name = "custom"
    metric_name = "metric"
    higher_is_better = True
    integer_inputs = False  # True: integer inputs (token ids) reach the model as int64, not float32

    # ---------------------------------------------------------------- what a user task defines

    def check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a ModelError when the model's output does not fit the targets (default: batch sizes)."""
        if out.shape[0] != y.shape[0]:
            raise ModelError(f"task {self.name}: the model returned {out.shape[0]} outputs for {y.shape[0]} inputs")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-input loss, shape (batch,), differentiable; the analyses maximise its mean."""
        raise NotImplementedError(f"task {self.name} defines no loss")

    def metric(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-input metric, shape (batch,); the headline value is its mean."""
        raise NotImplementedError(f"task {self.name} defines no metric")

    def sdc(self, out: torch.Tensor, golden: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per input (batch,), whether a faulty output ``out`` is a silent data corruption of ``golden``."""
        raise NotImplementedError(f"task {self.name} defines no SDC rule")

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Per input, whether the output is right (for ``accuracy``); None: the task has no accuracy."""
        return None

    def check_data(self, x, y, where: str) -> None:
        """Raise a DataError when arrays ``x``/``y`` (numpy or torch) cannot be this task's data."""

    # ---------------------------------------------------------------- what the analyses call

    def loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(sum of the loss over the batch's scored units, number of units): batches add up."""
        return self.loss(out, y).sum(), out.shape[0]

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Additive statistics of one batch (see :meth:`result`)."""
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
        ok = self.correct(out, y)
        loss = self.loss(out.double(), y)
        return {"loss": float(loss.sum()), "units": out.shape[0], "n": out.shape[0],
                "correct": float((ok & finite).sum()) if ok is not None else math.nan,
                "scored": out.shape[0], "metric": float(self.metric(out, y).double().sum()),
                "nonfinite": int((~finite).sum())}

    def result(self, s: dict[str, float]):
        """The :class:`~hwfault.evaluation.EvalResult` of summed statistics."""
        from .evaluation import EvalResult

        n = int(s["n"])
        metrics = {self.metric_name: s["metric"] / max(n, 1)}
        acc = s["correct"] / max(s["scored"], 1)
        return EvalResult(acc, s["loss"] / max(s["units"], 1), n, int(s["nonfinite"]), self.name,
                          metrics, self.metric_name, self.higher_is_better)

    def reference(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The golden run's reference (what faulty outputs are compared with) and, per scored unit,
        whether it counts for SDC (a correctly handled input or token)."""
        return out, torch.ones(out.shape[0], dtype=torch.bool)

    def changed(self, out: torch.Tensor, ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per scored unit, whether ``out`` departs from the golden reference (non-finite counts)."""
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
        return self.sdc(out, ref, y).bool() | ~finite

    def row_metrics(self, accuracy: float | None, loss: float | None) -> dict:
        """The task's metrics that follow from a row's accuracy and loss (for rows that keep only those)."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "metric": self.metric_name, "higher_is_better": self.higher_is_better}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Classification(Task):
    """Top-1 classification of logits ``(batch, classes)`` against labels ``(N,)``."""

    name = "classification"
    metric_name = "accuracy"

    def __init__(self, topk: int | None = None):
        self.topk = topk

    def check(self, out, y):
        if out.ndim != 2:
            hint = "; a language model's (batch, T, vocab) logits need --task lm" if out.ndim == 3 else ""
            raise ModelError(f"expected the model to return logits of shape (batch, classes), got {tuple(out.shape)}{hint}")
        if y.ndim != 1 or y.dtype.is_floating_point:
            raise DataError(f"task classification expects integer labels of shape (N,), got {_shape(y)}")
        if y.numel() and out.shape[1] <= int(y.max()):
            raise ModelError(f"model has {out.shape[1]} outputs but the data have label {int(y.max())}")

    def check_data(self, x, y, where):
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{where}: expected 'y' integer labels of shape (N,), got {y.dtype} {tuple(y.shape)}"
                            + ("; for per-token targets use --task lm" if y.ndim == 2 and y.dtype.kind in "iu" else
                               "; for real-valued targets use --task regression" if y.dtype.kind == "f" else ""))
        if y.size and y.min() < 0:
            raise DataError(f"{where}: 'y' has negative labels")

    def loss_sum(self, out, y):
        self.check(out, y)
        return F.cross_entropy(out, y, reduction="sum"), out.shape[0]

    def sums(self, out, y):
        self.check(out, y)
        finite = torch.isfinite(out).all(dim=1)
        s = {"loss": float(F.cross_entropy(out.double(), y, reduction="sum")), "units": len(y), "n": len(y),
             "correct": float(((out.argmax(1) == y) & finite).sum()), "scored": len(y),
             "nonfinite": int((~finite).sum())}
        if self.topk:
            k = min(self.topk, out.shape[1])
            s["topk"] = float(((out.topk(k, 1).indices == y[:, None]).any(1) & finite).sum())
        return s

    def result(self, s):
        from .evaluation import EvalResult

        n = int(s["n"])
        metrics = {f"top{self.topk}_accuracy": s["topk"] / max(n, 1)} if self.topk else {}
        return EvalResult(s["correct"] / max(n, 1), s["loss"] / max(n, 1), n, int(s["nonfinite"]), self.name, metrics)

    def reference(self, out, y):
        self.check(out, y)
        pred = out.argmax(1)
        return pred, pred == y

    def changed(self, out, ref, y):
        return (out.argmax(1) != ref) | ~torch.isfinite(out).all(dim=1)


class LanguageModel(Task):
    """Causal language modelling: next-token cross-entropy over (batch, T, vocab) logits."""

    name = "lm"
    metric_name = "perplexity"
    higher_is_better = False
    integer_inputs = True

    def check(self, out, y):
        if out.ndim != 3:
            raise ModelError(f"task lm expects logits of shape (batch, T, vocab), got {tuple(out.shape)}"
                             + ("; a classifier needs --task classification" if out.ndim == 2 else ""))
        if y.ndim != 2 or y.dtype.is_floating_point:
            raise DataError(f"task lm expects next-token ids y of shape (N, T), got {_shape(y)}")
        if tuple(out.shape[:2]) != tuple(y.shape):
            raise ModelError(f"task lm: the model returned logits {tuple(out.shape)} for targets {tuple(y.shape)}")
        valid = y[y != IGNORE]
        if valid.numel() and (int(valid.max()) >= out.shape[2] or int(valid.min()) < 0):
            bad = int(valid.max()) if int(valid.max()) >= out.shape[2] else int(valid.min())
            raise DataError(f"token id {bad} in the targets is beyond the model's vocabulary of {out.shape[2]}")

    def check_data(self, x, y, where):
        if x.ndim != 2 or x.dtype.kind not in "iu":
            raise DataError(f"{where}: task lm expects 'x' integer token ids of shape (N, T), got {x.dtype} {tuple(x.shape)}")
        if y.ndim != 2 or y.dtype.kind not in "iu" or tuple(y.shape) != tuple(x.shape):
            raise DataError(f"{where}: task lm expects 'y' next-token ids of shape (N, T) like 'x' {tuple(x.shape)}, "
                            f"got {y.dtype} {tuple(y.shape)}")
        if x.size and x.min() < 0:
            raise DataError(f"{where}: 'x' has negative token ids")

    def loss_sum(self, out, y):
        self.check(out, y)
        flat = y.reshape(-1)
        return (F.cross_entropy(out.reshape(-1, out.shape[-1]), flat, ignore_index=IGNORE, reduction="sum"),
                int((flat != IGNORE).sum()))

    def sums(self, out, y):
        self.check(out, y)
        valid = y != IGNORE
        finite_tok = torch.isfinite(out).all(-1)
        loss = F.cross_entropy(out.double().reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
        return {"loss": float(loss), "units": int(valid.sum()), "n": len(y),
                "correct": float(((out.argmax(-1) == y) & valid & finite_tok).sum()), "scored": int(valid.sum()),
                "nonfinite": int((~finite_tok.all(1)).sum())}

    def result(self, s):
        from .evaluation import EvalResult

        acc = s["correct"] / max(s["scored"], 1)
        loss = s["loss"] / max(s["units"], 1)
        return EvalResult(acc, loss, int(s["n"]), int(s["nonfinite"]), self.name, self.row_metrics(acc, loss),
                          self.metric_name, False)

    def row_metrics(self, accuracy, loss):
        ppl = math.exp(min(loss, 700.0)) if loss is not None and math.isfinite(loss) else None
        return {"perplexity": ppl, "token_accuracy": accuracy}

    def reference(self, out, y):
        self.check(out, y)
        pred = out.argmax(-1)
        return pred, (pred == y) & (y != IGNORE)

    def changed(self, out, ref, y):
        return (out.argmax(-1) != ref) | ~torch.isfinite(out).all(-1)


class Regression(Task):
    """Real-valued outputs against targets: mean squared error; SDC beyond ``tolerance``."""

    name = "regression"
    metric_name = "mse"
    higher_is_better = False

    def __init__(self, tolerance: float = 0.1):
        if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
            raise HwfaultError(f"--tolerance: expected a finite number >= 0, got {tolerance!r}")
        self.tolerance = float(tolerance)

    @staticmethod
    def _flat(out, y):
        o, t = out.reshape(out.shape[0], -1), y.reshape(y.shape[0], -1)
        if o.shape != t.shape:
            raise ModelError(f"task regression: the model returned outputs {tuple(out.shape)} for targets {tuple(y.shape)}")
        return o, t.to(o.dtype)

    def check(self, out, y):
        if not y.dtype.is_floating_point and y.dtype not in (torch.int64, torch.int32):
            raise DataError(f"task regression expects numeric targets, got {_shape(y)}")
        self._flat(out, y)

    def check_data(self, x, y, where):
        if y.dtype.kind not in "fiu" or y.ndim not in (1, 2):
            raise DataError(f"{where}: task regression expects 'y' numeric targets of shape (N,) or (N, k), "
                            f"got {y.dtype} {tuple(y.shape)}")
        if y.dtype.kind == "f" and y.size and not bool((abs(y) < float("inf")).all()):
            raise DataError(f"{where}: 'y' contains NaN or Inf")

    def loss_sum(self, out, y):
        o, t = self._flat(out, y)
        return F.mse_loss(o, t, reduction="sum"), o.numel()

    def sums(self, out, y):
        o, t = self._flat(out.double(), y)
        err = o - t
        finite = torch.isfinite(o).all(1)
        return {"loss": float(err.pow(2).sum()), "abs": float(err.abs().sum()), "units": o.numel(), "n": len(o),
                "correct": float(((err.abs() <= self.tolerance).all(1) & finite).sum()), "scored": len(o),
                "nonfinite": int((~finite).sum())}

    def result(self, s):
        from .evaluation import EvalResult

        mse = s["loss"] / max(s["units"], 1)
        return EvalResult(s["correct"] / max(s["scored"], 1), mse, int(s["n"]), int(s["nonfinite"]), self.name,
                          {"mse": mse, "mae": s["abs"] / max(s["units"], 1)}, self.metric_name, False)

    def row_metrics(self, accuracy, loss):
        return {"mse": loss}

    def reference(self, out, y):
        o, _ = self._flat(out, y)
        return o, torch.ones(o.shape[0], dtype=torch.bool)

    def changed(self, out, ref, y):
        o = out.reshape(out.shape[0], -1)
        return ((o - ref).abs() > self.tolerance).any(1) | ~torch.isfinite(o).all(1)

    def describe(self) -> dict:
        return {**super().describe(), "tolerance": self.tolerance}


TASKS = {"classification": Classification, "lm": LanguageModel, "regression": Regression}
CLASSIFICATION = Classification()
_CURRENT: contextvars.ContextVar[Task | None] = contextvars.ContextVar("hwfault_task", default=None)


def get_task(task: str | Task | None = None, *, tolerance: float | None = None) -> Task:
    """A Task from a name (``classification``, ``lm``, ``regression``) or a Task; None -> the current one."""
    if task is None:
        return current()
    if isinstance(task, Task):
        return task
    if isinstance(task, str) and task in TASKS:
        if task == "regression" and tolerance is not None:
            return Regression(tolerance)
        return TASKS[task]()
    if isinstance(task, str):
        raise HwfaultError(f"--task: unknown task '{task}'{did_you_mean(task, TASKS)} (choose from {', '.join(TASKS)})")
    raise HwfaultError(f"task: expected a task name or an hwfault.Task, got {type(task).__name__}")


def current() -> Task:
    """The task of the analysis that is running (classification outside any)."""
    t = _CURRENT.get()
    return CLASSIFICATION if t is None else t


def for_model(task, model) -> Task:
    """The task to score ``model`` with: ``task`` if given; else the running analysis's; else the
    model's own (a zoo language model carries ``task = "lm"``); else classification."""
    if task is not None:
        return get_task(task)
    t = _CURRENT.get()
    if t is not None:
        return t
    own = getattr(model, "task", None)
    return get_task(own) if isinstance(own, (str, Task)) and (not isinstance(own, str) or own in TASKS) else CLASSIFICATION


@contextlib.contextmanager
def using(task: str | Task | None) -> Iterator[Task]:
    """Make ``task`` the current task inside the block (None keeps the current one)."""
    t = get_task(task)
    token = _CURRENT.set(t)
    try:
        yield t
    finally:
        _CURRENT.reset(token)
