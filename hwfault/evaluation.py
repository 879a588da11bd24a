"""The one place that runs a model over a data set and scores it.

Data are a :class:`~torch.utils.data.TensorDataset` (as :func:`hwfault.load_data` returns) or an
``(x, y)`` pair of tensors. Scores are accuracy (top-1) and mean cross-entropy loss; an input whose
logits are not all finite counts as misclassified (and makes the loss non-finite). Against a golden
(fault-free) run, :func:`score_against` gives the fault-injection metrics: silent data corruption
(SDC: a correctly classified input changes its top-1) and detected unrecoverable errors (DUE:
non-finite outputs). :func:`differentiable` says whether a model gives gradients (an ONNX file run
in onnxruntime does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError

DataLike = "TensorDataset | tuple[torch.Tensor, torch.Tensor]"
DEFAULT_BATCH = 1024


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a TensorDataset or a pair."""
    if hasattr(data, "tensors"):
        x, y = data.tensors[:2]
    else:
        x, y = data
    return x, y


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and loss of a model on a data set."""

    accuracy: float
    loss: float
    n: int
    nonfinite: int = 0  # inputs whose logits contained NaN or Inf

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n, "nonfinite": self.nonfinite}


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model cannot run on data of shape {tuple(x.shape[1:])}: {msg[:200]}") from None
    return as_logits(out)


def as_logits(out) -> torch.Tensor:
    """The logits in a model's output: a tensor, the first element of a tuple/list, or the ``logits``
    entry of a dict (as Hugging Face models return); a one-line ModelError for anything else."""
    if isinstance(out, dict) or hasattr(out, "keys") and hasattr(out, "__getitem__") and not isinstance(out, torch.Tensor):
        keys = list(out.keys())
        if "logits" not in keys:
            raise ModelError(f"expected the model to return logits, got a dict with keys {keys[:8]} (no 'logits')")
        out = out["logits"]
    if isinstance(out, (tuple, list)):
        if not out:
            raise ModelError("expected the model to return logits, got an empty sequence")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"expected the model to return a logits tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise ModelError(f"expected the model to return floating-point logits, got {str(out.dtype).replace('torch.', '')} "
                         f"{tuple(out.shape)} (class indices, e.g. an argmax, cannot be scored or differentiated)")
    if out.ndim != 2:
        raise ModelError(f"expected the model to return logits of shape (batch, classes), got {tuple(out.shape)}")
    return out


def differentiable(model: nn.Module) -> bool:
    """Whether gradients flow through ``model`` (False for a model that runs outside torch, such as an
    ONNX file in onnxruntime, which declares ``differentiable = False``)."""
    return getattr(model, "differentiable", True) is not False


def accuracy_of(out: torch.Tensor, y: torch.Tensor | None) -> float | None:
    """Top-1 accuracy of logits against labels (non-finite rows count as wrong); None without labels."""
    if y is None:
        return None
    finite = torch.isfinite(out).all(dim=1)
    return float(((out.argmax(dim=1) == y) & finite).double().mean())


@dataclass(frozen=True)
class Golden:
    """The fault-free run that faulty runs are scored against: logits, predictions, which inputs it
    classifies correctly, and its accuracy."""

    logits: torch.Tensor
    pred: torch.Tensor
    correct: torch.Tensor
    accuracy: float

    @classmethod
    def of(cls, out: torch.Tensor, y: torch.Tensor) -> Golden:
        check_labels(out, y)
        pred = out.argmax(1)
        correct = pred == y
        return cls(out, pred, correct, float(correct.double().mean()))


def score_against(out: torch.Tensor, y: torch.Tensor, golden: Golden, *, critical: float = 0.01) -> dict:
    """A faulty run's metrics against the golden run: ``accuracy``, ``loss`` (None when not finite),
    ``sdc`` (any input the golden run classifies correctly changed its top-1 or became non-finite),
    ``sdc_rate`` (the share of those inputs), ``critical_sdc`` (accuracy fell by more than
    ``critical``) and ``due`` (any output NaN/Inf)."""
    finite = torch.isfinite(out).all(dim=1)
    pred = out.argmax(1)
    acc = float(((pred == y) & finite).double().mean())
    flipped = golden.correct & ((pred != golden.pred) | ~finite)
    n_ok = int(golden.correct.sum())
    loss = float(F.cross_entropy(out.double(), y)) if bool(finite.all()) else math.nan
    return {"accuracy": acc, "loss": loss if math.isfinite(loss) else None, "sdc": int(bool(flipped.any())),
            "sdc_rate": float(flipped.sum()) / max(n_ok, 1), "critical_sdc": int(golden.accuracy - acc > critical),
            "due": int(not bool(finite.all()))}


def check_labels(out: torch.Tensor, y: torch.Tensor) -> None:
    """A one-line ModelError when a label is beyond the model's outputs."""
    if y.numel() and out.shape[1] <= int(y.max()):
        raise ModelError(f"model has {out.shape[1]} outputs but the data have label {int(y.max())}")


@torch.no_grad()
def logits(model: nn.Module, data, *, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """All logits of ``model`` on ``data`` (eval mode is the caller's responsibility)."""
    x, _ = as_tensors(data)
    return torch.cat([_forward(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def score(out: torch.Tensor, y: torch.Tensor) -> EvalResult:
    """Accuracy and loss from precomputed logits."""
    check_labels(out, y)
    finite = torch.isfinite(out).all(dim=1)
    correct = (out.argmax(dim=1) == y) & finite
    loss = F.cross_entropy(out.double(), y).item()
    return EvalResult(float(correct.double().mean()), float(loss), len(y), int((~finite).sum()))


def evaluate(model: nn.Module, data, *, batch_size: int = DEFAULT_BATCH) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    _, y = as_tensors(data)
    return score(logits(model, data, batch_size=batch_size), y)


def loss_and_grad(model: nn.Module, data, params: Sequence[torch.Tensor], *,
                  batch_size: int = DEFAULT_BATCH) -> tuple[EvalResult, list[torch.Tensor]]:
    """Scores of ``model`` on ``data`` and the gradient of the mean cross-entropy w.r.t. ``params``,
    from one forward and backward pass.

    Gradients are accumulated over batches (weighted by batch size), so the result does not depend
    on ``batch_size``. ``requires_grad`` on ``params`` is switched on only for the call.
    """
    x, y = as_tensors(data)
    flags = [p.requires_grad for p in params]
    grads = [torch.zeros_like(p) for p in params]
    outs = []
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                out = _forward(model, xb)
                check_labels(out, yb)
                loss = F.cross_entropy(out, yb, reduction="sum")
                gs = torch.autograd.grad(loss, list(params), allow_unused=True)
                for acc, g in zip(grads, gs):
                    if g is not None:
                        acc.add_(g)
                outs.append(out.detach())
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    n = len(x)
    return score(torch.cat(outs), y), [g / n for g in grads]


def finite_gradient(g: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The gradient with its non-finite entries made finite (NaN -> 0, +-Inf -> +-largest float) and
    their count: where the loss is NaN for some inputs, a corruption is still built from the rest
    (and the result records how many entries were replaced)."""
    bad = int((~torch.isfinite(g)).sum())
    if not bad:
        return g, 0
    big = torch.finfo(g.dtype).max
    return torch.nan_to_num(g, nan=0.0, posinf=big, neginf=-big), bad
