"""Where models and data come in: one loader for every model file, and the resolution of the
model, data and probe arguments that every analysis and the CLI share.

- :func:`load_model`: a zoo name, a shipped checkpoint name, an hwfault ``.safetensors`` checkpoint,
  a ``torch.export`` ``.pt2`` archive (read as data first: :mod:`hwfault.pt2`) or an ``.onnx`` file
  (run in onnxruntime: :mod:`hwfault.onnxmodel`). Pickled checkpoints are refused unopened.
- :func:`resolve_model` / :func:`resolve_data` / :func:`resolve_probe`: an analysis's arguments as
  ``(object, label)`` pairs; :func:`default_data` the data set a zoo model or checkpoint was trained on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .data import load_data
from .errors import DataError, HwfaultError, ModelError, did_you_mean
from .zoo import list_models, load_checkpoint, model_data, models_dir

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def check_finite(model: nn.Module, label: str) -> None:
    """Refuse a model whose parameters hold NaN or Inf, or whose buffers hold NaN (an Inf buffer is
    legitimate: attention masks use -inf)."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if not t.is_floating_point() or t.numel() == 0:
                continue
            bad = int(torch.isnan(t).sum()) + (int(torch.isinf(t).sum()) if kind == "parameter" else 0)
            if bad:
                what = "NaN or Inf" if kind == "parameter" else "NaN"
                raise ModelError(f"{label}: {kind} '{name}' holds {bad:,} {what} value{'s' if bad > 1 else ''} "
                                 f"(of {t.numel():,}); a model with non-finite weights cannot be analysed")


def load_model(name_or_path: str | Path, *, requires_grad: bool = True) -> nn.Module:
    """Return an eval-mode model from a zoo name, an hwfault ``.safetensors`` checkpoint, a ``.pt2``
    archive or an ``.onnx`` file.

    Parameters keep PyTorch's default ``requires_grad=True``, so ``loss.backward()`` works on the
    returned model; ``requires_grad=False`` freezes them (what the analyses use internally). An ONNX
    file's injectable initializers never require gradients (onnxruntime computes none). A model whose
    parameters hold NaN or Inf is refused. What each loader trusts: see the README ("Loading models").
    """
    key = str(name_or_path)
    if key in list_models():
        path = models_dir() / f"{key}.safetensors"
        if not path.is_file():
            raise ModelError(f"no checkpoint for '{key}' at {path}; run 'hwfault zoo train {key}'")
        model = load_checkpoint(path)
    elif "/" not in key and (models_dir() / f"{key}.safetensors").is_file():  # a shipped hardened checkpoint
        model = load_checkpoint(models_dir() / f"{key}.safetensors")
    else:
        path = Path(key)
        if not path.exists():
            if path.suffix in (".safetensors", ".pt2", ".onnx"):
                raise ModelError(f"model file not found: {path}")
            raise ModelError(f"unknown model '{key}'{did_you_mean(key, list_models())}; or give a .safetensors, .pt2 or .onnx path")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory; expected a .safetensors, .pt2 or .onnx file")
        if path.suffix == ".onnx":
            from .onnxmodel import load_onnx

            model = load_onnx(path)  # runs in onnxruntime: parameters are the file's injectable initializers
            check_finite(model, str(path))
            return model
        if path.suffix == ".pt2":
            from .pt2 import load_pt2

            model = load_pt2(path)
        elif path.suffix == ".safetensors":
            model = load_checkpoint(path)
        elif path.suffix in PICKLE_SUFFIXES:
            raise ModelError(f"{path}: refused: '{path.suffix}' files are pickles, which run code when loaded; "
                             f"give a .safetensors checkpoint, a torch.export .pt2 archive or an .onnx file")
        else:
            raise ModelError(f"{path}: unsupported model file type '{path.suffix}' (expected .safetensors, .pt2 or .onnx)")
    check_finite(model, key)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        model.eval()  # GraphModules from torch.export reject train()/eval() toggling in some versions
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    return model


def resolve_model(model) -> tuple[nn.Module, str]:
    """``(module, label)`` from a zoo name, a file path, a module or a ``(module, label)`` pair. A
    model loaded here is the analysis's own and is frozen (``requires_grad=False``)."""
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return model[0], str(model[1])
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    return load_model(model, requires_grad=False), str(model)


def resolve_data(data, split: str = "test"):
    """``(dataset, label)`` from a data name, an ``.npz`` path or a dataset / ``(x, y)`` pair."""
    if isinstance(data, (str, Path)):
        return load_data(data, split), str(data)
    return data, "<dataset>"


def resolve_probe(data_arg, data, probe):
    """The data the gradient is taken on, and its label: ``None`` -> the evaluation data; a split name
    -> that split of the same data set (the data given by name or path); a dataset -> itself."""
    if probe is None:
        return data, "evaluation data (test split)" if isinstance(data_arg, (str, Path)) else "evaluation data"
    if isinstance(probe, str):
        if not isinstance(data_arg, (str, Path)):
            raise DataError("--probe SPLIT needs the data given by name or path")
        return load_data(data_arg, probe), f"{probe} split"
    return probe, "<probe dataset>"


def default_data(model: str, data: str | None) -> str:
    """``data`` if given, else the data set recorded for a zoo model or hwfault checkpoint."""
    if data:
        return data
    if model not in list_models() and not Path(model).exists():
        load_model(model)  # raises the unknown-model error with a suggestion
    d = model_data(model)
    if d is None:
        raise HwfaultError(f"--data is required for model '{model}' (no data set is recorded for it)")
    return d
