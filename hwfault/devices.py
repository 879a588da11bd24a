"""Where a model runs: ``--device auto|cpu|cuda|cuda:N|mps`` on the command line, ``device=`` in Python.

- ``cpu``: the default of every command and analysis (no argument means the CPU, as before devices
  existed), so results and journals do not change with the machine they are computed on.
- ``auto``: a CUDA GPU when there is one, else Apple's MPS, else the CPU.
- ``cuda`` (the current GPU, ``cuda:0``) or ``cuda:N``; ``mps``. A device that is not there is a
  one-line :class:`~hwfault.errors.HwfaultError` before any work starts.

What moves to the device: the model (in place, as ``model.to(device)`` does, and it stays there) and,
batch by batch, the inputs and targets (:mod:`hwfault.evaluation`); scores come back as Python
numbers. What stays on the CPU: every random draw (a CPU ``torch.Generator``, so trial t of a seed is
the same chip, with the same fault sites, on every device), the chip's stored values and the
perturbation arithmetic of the searches; a perturbation moves to the device when it is added to the
weights (:func:`hwfault.params.perturbed`), which are restored from an on-device copy bit-exactly.
Certified bounds are computed on the CPU (a CPU copy of the model), and so are ONNX export and its
onnxruntime parity check. An ``.onnx`` model runs in onnxruntime: on the CPU provider, or with
``cuda`` on onnxruntime's CUDAExecutionProvider when it is installed (else a one-line error; ``auto``
then keeps the CPU).

This module imports torch only inside its functions (``hwfault --help`` stays light).
"""

from __future__ import annotations

import itertools
import os
import re

from .errors import HwfaultError

CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_CUDA_N = re.compile(r"cuda:(\d+)")


def _text(device) -> str:
    import torch

    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise HwfaultError(f"--device: expected one of {', '.join(CHOICES)}, got {type(device).__name__}")
    return device.strip().lower()


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device=None):
    """The ``torch.device`` of a ``--device`` value (a string or a ``torch.device``; None -> cpu).

    ``auto`` -> cuda, else mps, else cpu. An unknown value, or a device this machine does not have,
    raises :class:`~hwfault.errors.HwfaultError` with one line saying why."""
    import torch

    if device is None:
        return torch.device("cpu")
    text = _text(device)
    if text in ("cpu", "cpu:0"):
        return torch.device("cpu")
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda(None)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    m = _CUDA_N.fullmatch(text)
    if text == "cuda" or m:
        if not torch.cuda.is_available():
            raise HwfaultError(f"--device {text}: no CUDA device is available (torch.cuda.is_available() is False)")
        index = int(m.group(1)) if m else None
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            have = "1 CUDA device (cuda:0)" if count == 1 else f"{count} CUDA devices (cuda:0..cuda:{count - 1})"
            raise HwfaultError(f"--device {text}: this machine has {have}")
        return _cuda(index)
    if text in ("mps", "mps:0"):
        if not _mps_available():
            raise HwfaultError("--device mps: no MPS device is available (torch.backends.mps.is_available() is False)")
        return torch.device("mps")
    raise HwfaultError(f"--device {text}: unknown device; choose from {', '.join(CHOICES)}")


def _cuda(index: int | None):
    import torch

    # deterministic cuBLAS (hwfault's training runs with torch.use_deterministic_algorithms) needs this
    # set before the first cuBLAS call; it changes nothing else
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device("cuda") if index is None else torch.device("cuda", index)


def check_device(device) -> str | None:
    """Validate a ``--device`` value before any work (see :func:`resolve_device`); returns it unchanged."""
    if device is not None:
        resolve_device(device)
    return device


def is_auto(device) -> bool:
    return isinstance(device, str) and device.strip().lower() == "auto"


def device_of(model):
    """The device a model computes on: that of its first parameter or buffer (the CPU for a model
    without tensors, and for an ONNX model, whose onnxruntime session is fed from the CPU)."""
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(model, device):
    """Move ``model`` to ``device`` in place (``model.to``) and return it; None leaves it where it is.
    An ONNX model (onnxruntime) gets the matching execution provider instead (:meth:`use_device`)."""
    if device is None:
        return model
    dev = resolve_device(device)
    if hasattr(model, "use_device"):  # hwfault.onnxmodel.OnnxModule
        model.use_device(dev, strict=not is_auto(device))
        return model
    if any(t.device != dev for t in itertools.chain(model.parameters(), model.buffers())):
        model.to(dev)
    return model


def worker_device(device):
    """The device of this process for ``device``. In a Dask worker, ``cuda`` and ``auto`` (on a GPU
    machine) mean one GPU per worker: worker i (its name in a LocalCluster; 0 for a worker whose name
    is not a number) takes ``cuda:(i % device_count)``. An explicit ``cuda:N`` is used as given (on a
    shared cluster, give each worker its own GPU with CUDA_VISIBLE_DEVICES)."""
    import torch

    dev = resolve_device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not in a Dask worker
        return dev
    index = int(name) if str(name).isdigit() else 0
    return torch.device("cuda", index % max(1, torch.cuda.device_count()))
