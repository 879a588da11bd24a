"""Where models and data come in: one loader for every model file, and the resolution of the
model, data and probe arguments that every analysis and the CLI share.

- :func:`load_model`: a zoo name, a shipped checkpoint name, an hwfault ``.safetensors`` checkpoint,
  a ``torch.export`` ``.pt2`` archive (read as data first: :mod:`hwfault.pt2`) or an ``.onnx`` file
  (run in onnxruntime: :mod:`hwfault.onnxmodel`). Pickled checkpoints are refused unopened.
- a model given as Python source: ``package.module:factory`` (the factory is called with no arguments
  and returns the ``nn.Module``), with ``weights=`` a ``.safetensors`` state dict.
- :func:`resolve_model` / :func:`resolve_data` / :func:`resolve_probe`: an analysis's arguments as
  ``(object, label)`` pairs; :func:`default_data` the data set a zoo model or checkpoint was trained on.
- :func:`analysis`: the decorator that gives every analysis ``task=``, ``tolerance=``, ``output=``,
  ``weights=`` and ``device=`` (:mod:`hwfault.devices`), and runs it with that task current (:mod:`hwfault.tasks`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import re
import sys
from pathlib import Path

import torch
from torch import nn

from .data import load_data
from .devices import check_device, to_device
from .errors import DataError, HwfaultError, ModelError, did_you_mean
from .tasks import Task, current, get_task, using
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


FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(key: str) -> bool:
    """Whether a model argument names Python source (``package.module:factory``) rather than a file."""
    return bool(FACTORY.match(key)) and not Path(key).exists()


def _from_factory(key: str, weights: str | Path | None) -> nn.Module:
    mod_name, fn_name = key.split(":")
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))  # like ``python -m``: modules in the working directory import
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ModelError(f"--model {key}: cannot import module '{mod_name}' ({e}); run from the directory that "
                         f"holds it or put it on PYTHONPATH") from None
    except Exception as e:  # the user's module raised while importing
        raise ModelError(f"--model {key}: importing '{mod_name}' raised {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise ModelError(f"--model {key}: module '{mod_name}' has no callable '{fn_name}'"
                         f"{did_you_mean(fn_name, [n for n in dir(module) if not n.startswith('_')])}")
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"--model {key}: {fn_name}() raised {type(e).__name__}: {str(e).strip()[:160]}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {key}: {fn_name}() returned {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        _load_weights(model, Path(weights), key)
    return model


def _load_weights(model: nn.Module, path: Path, key: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix in PICKLE_SUFFIXES:
        raise ModelError(f"--weights {path}: refused: '{path.suffix}' files are pickles, which run code when loaded; "
                         f"save the state dict with safetensors.torch.save_file")
    if path.suffix != ".safetensors":
        raise ModelError(f"--weights {path}: expected a .safetensors state dict")
    if not path.is_file():
        raise ModelError(f"--weights {path}: file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"--weights {path}: not a readable safetensors file ({str(e).strip()[:120]})") from None
    want = model.state_dict()
    for name, t in state.items():
        if name in want and tuple(t.shape) != tuple(want[name].shape):
            raise ModelError(f"--weights {path}: tensor '{name}' has shape {tuple(t.shape)}, but {key} expects "
                             f"{tuple(want[name].shape)}")
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ModelError(f"--weights {path}: does not fit {key}: "
                         + "; ".join(p for p in (f"missing {missing[:4]}" if missing else "",
                                                 f"unexpected {unexpected[:4]}" if unexpected else "") if p))
    model.load_state_dict(state, strict=True)


def load_model(name_or_path: str | Path, *, requires_grad: bool = True, output: str | int | None = None,
               weights: str | Path | None = None) -> nn.Module:
    """Return an eval-mode model from a zoo name, an hwfault ``.safetensors`` checkpoint, a ``.pt2``
    archive, an ``.onnx`` file or Python source ``package.module:factory`` (with ``weights``, a
    ``.safetensors`` state dict; importing the module runs its code, as you asked).

    ``output`` picks the scored output of a model that returns several (a tuple index or a dict key;
    for an ONNX file, an output name or index); by default the only or first one, or ``logits``.

    Parameters keep PyTorch's default ``requires_grad=True``, so ``loss.backward()`` works on the
    returned model; ``requires_grad=False`` freezes them (what the analyses use internally). An ONNX
    file's injectable initializers never require gradients (onnxruntime computes none). A model whose
    parameters hold NaN or Inf is refused. What each loader trusts: see the README ("Loading models").
    """
    key = str(name_or_path)
    if weights is not None and not is_factory(key):
        raise ModelError(f"--weights goes with --model package.module:factory (a model given as Python source); "
                         f"'{key}' carries its own weights")
    if is_factory(key):
        model = _from_factory(key, weights)
    elif key in list_models():
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

            model = load_onnx(path, output=output)  # runs in onnxruntime: parameters are the file's injectable initializers
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
    if output is not None:
        model.hwfault_output = output  # read by hwfault.evaluation when it picks the scored output
    if not is_factory(key) and Path(key).suffix not in (".pt2",):
        from .zoo import model_task

        with contextlib.suppress(HwfaultError, OSError):
            t = model_task(key)
            if t and t != "classification":
                model.task = t  # evaluate() and every analysis score it as that task by default
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
    """``(dataset, label)`` from a data name, a data file or directory, or a dataset / DataLoader /
    ``(x, y)`` pair (read for the current task)."""
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


def resolve_task(task, model, tolerance: float | None = None) -> Task:
    """The task of an analysis: ``task`` if given; else the model's (a zoo model or hwfault checkpoint
    records it; a module may carry a ``task`` attribute); else the current one (classification)."""
    if task is not None:
        return get_task(task, tolerance=tolerance)
    module = model[0] if isinstance(model, tuple) and model and isinstance(model[0], nn.Module) else model
    if isinstance(module, nn.Module):
        t = getattr(module, "task", None)
        return get_task(t, tolerance=tolerance) if isinstance(t, (str, Task)) else current()
    if isinstance(module, (str, Path)):
        from . import zoo

        name = None
        if hasattr(zoo, "model_task"):
            with contextlib.suppress(HwfaultError, OSError):
                name = zoo.model_task(str(module))
        if name:
            return get_task(name, tolerance=tolerance)
    return get_task("regression", tolerance=tolerance) if tolerance is not None else current()


def analysis(fn):
    """Give an analysis ``task=`` (a name or an :class:`hwfault.Task`; default: the model's),
    ``tolerance=`` (regression's SDC tolerance), ``output=`` (which output to score), ``weights=``
    (a ``.safetensors`` state dict for a ``package.module:factory`` model) and ``device=`` (where the
    model runs, :mod:`hwfault.devices`: checked first, then the model is moved there in place and stays
    there; None, the default, leaves it where it is, the CPU for a model loaded by name), and run it
    with the task current. An analysis with a ``device`` parameter of its own receives it instead."""
    own_device = "device" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def run(model, *args, task=None, tolerance=None, output=None, weights=None, device=None, **kwargs):
        check_device(device)  # an unavailable device is one line before anything loads
        t = resolve_task(task, model, tolerance)
        restore = None
        move = device is not None and not own_device
        if own_device:
            kwargs["device"] = device
        if isinstance(model, (str, Path)) and (output is not None or weights is not None or move):  # loaded here
            model = (load_model(model, requires_grad=False, output=output, weights=weights), str(model))
        elif output is not None:
            module = model[0] if isinstance(model, tuple) else model
            if hasattr(module, "output_names"):  # an ONNX file: its output is chosen when it is loaded
                if str(output) not in (str(module.output_name), str(module.output_names.index(module.output_name))):
                    raise ModelError(f"output={output!r}: this ONNX model scores '{module.output_name}'; load it "
                                     f"with hw.load_model(path, output={output!r})")
                output = None
            if output is not None:
                restore = (module, getattr(module, "hwfault_output", None))
                module.hwfault_output = output
        if move:
            to_device(model[0] if isinstance(model, tuple) else model, device)
        try:
            with using(t):
                return fn(model, *args, **kwargs)
        finally:
            if restore is not None:
                restore[0].hwfault_output = restore[1]

    return run
