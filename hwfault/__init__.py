"""hwfault: hardware-fault simulation toolkit for neural-network accelerators.

The Python API mirrors the CLI: :func:`sweep` and :func:`probe` are what ``hwfault sweep`` and
``hwfault probe`` run; the corruption methods, constraint sets and parameter selection beneath them
are public too.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that spin while they wait take the core another process needs: on a shared
    # 2-core machine that made CROWN on the zoo MLP about 20x slower (0.2 s -> 4.6-4.8 s in one-off
    # runs beside a torch process); sleeping instead costs ~10% when
    # the machine is idle. Set before torch loads its OpenMP runtime; a user's own setting wins.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .constraints import ConstraintSet, LpBall
from .search.methods import gradient, multistep, random
from .search.results import CorruptionPoint, CorruptionResult
from .data import list_datasets, load_data
from .errors import (ConstraintError, DataError, ExportError, HwfaultError, ModelError, SelectionError,
                     SpecError)
from .evaluation import EvalResult, evaluate, loss_and_grad
from .params import Selection, describe, perturbed, select
from .analyses.sweep import ProbeResult, SweepResult, probe, sweep
from .analyses.estimate import estimate
from .certify import certify
from .analyses.harden import HardenConfig, harden
from .inputs import load_model
from .zoo import list_models, save_checkpoint

__all__ = [
    "__version__",
    # data and models
    "load_data", "list_datasets", "load_model", "list_models", "save_checkpoint",
    # parameters and evaluation
    "select", "describe", "Selection", "perturbed", "evaluate", "loss_and_grad", "EvalResult",
    # constraint sets and corruption methods
    "ConstraintSet", "LpBall", "random", "gradient", "multistep", "CorruptionPoint", "CorruptionResult",
    # analyses
    "sweep", "probe", "SweepResult", "ProbeResult", "estimate", "certify",
    # hardening and deployment
    "harden", "HardenConfig", "export_onnx", "load_onnx",
    # errors
    "HwfaultError", "DataError", "ModelError", "SelectionError", "ConstraintError", "SpecError", "ExportError",
]


_LAZY = {"export_onnx": ("export", "export_onnx"), "load_onnx": ("onnxmodel", "load_onnx")}


def __getattr__(name: str):
    """Heavy entry points (onnx, onnxruntime, brevitas) are imported on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'hwfault' has no attribute '{name}'")
