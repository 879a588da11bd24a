"""hwfault: hardware-fault simulation toolkit for neural-network accelerators.

Every analysis takes ``task=`` (``"classification"``, ``"lm"``, ``"regression"`` or your own
:class:`Task`) and any map-style ``Dataset``, ``DataLoader`` or ``(x, y)`` pair as data.

The Python API mirrors the CLI: each command is one call (:func:`sweep`, :func:`probe`,
:func:`estimate`, :func:`bits`, :func:`campaign`, :func:`certify`, :func:`harden`, :func:`export_onnx`);
the corruption methods, constraint sets, chip specs and parameter selection beneath them are public
too, and :func:`realised` / :func:`faulty_copy` give one sampled faulty chip for a user's own loop.
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

from .analyses.bits import BitsResult, bits
from .analyses.campaign.api import campaign, plan_campaign
from .analyses.campaign.run import CampaignResult
from .analyses.estimate import EstimateResult, estimate
from .analyses.harden import HardenConfig, harden
from .analyses.hardening import harden_checkpoint
from .analyses.realise import faulty_copy, realised
from .analyses.sweep import ProbeResult, SweepResult, probe, sweep
from .certification import certify
from .constraints import Box, ConstraintSet, Ellipsoid, LpBall
from .data import list_datasets, load_data
from .errors import (ConstraintError, DataError, ExportError, HwfaultError, LimitError, ModelError, OutputError,
                     SelectionError, SpecError)
from .evaluation import EvalResult, evaluate, loss_and_grad
from .inputs import load_model
from .params import Selection, describe, perturbed, select
from .search.methods import gradient, multistep, random
from .search.results import CorruptionPoint, CorruptionResult
from .spec import ChipSpec, list_chips, load_chip
from .arrays import ArrayDataset
from .tasks import Classification, LanguageModel, Regression, Task
from .zoo import list_models, save_checkpoint

__all__ = [
    "__version__",
    # data, models and chips
    "load_data", "list_datasets", "load_model", "list_models", "save_checkpoint", "load_chip", "list_chips",
    "ChipSpec",
    # parameters and evaluation
    "select", "describe", "Selection", "perturbed", "evaluate", "loss_and_grad", "EvalResult",
    # tasks: what an output means and how it is scored; data read lazily
    "Task", "Classification", "LanguageModel", "Regression", "ArrayDataset",
    # constraint sets and corruption methods
    "ConstraintSet", "LpBall", "Box", "Ellipsoid", "random", "gradient", "multistep", "CorruptionPoint",
    "CorruptionResult",
    # analyses
    "sweep", "probe", "SweepResult", "ProbeResult", "estimate", "EstimateResult", "certify", "bits", "BitsResult",
    "campaign", "plan_campaign", "CampaignResult",
    # one chip realisation, for a user's own loop
    "realised", "faulty_copy",
    # hardening and deployment
    "harden", "HardenConfig", "harden_checkpoint", "export_onnx", "export_model", "load_onnx",
    # errors
    "HwfaultError", "DataError", "ModelError", "SelectionError", "ConstraintError", "SpecError", "ExportError",
    "OutputError", "LimitError",
]


_LAZY = {"export_onnx": ("export", "export_onnx"), "export_model": ("export", "export_model"),
         "load_onnx": ("onnxmodel", "load_onnx")}


def __getattr__(name: str):
    """Heavy entry points (onnx, onnxruntime, brevitas) are imported on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'hwfault' has no attribute '{name}'")
