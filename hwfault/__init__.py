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

from .errors import (ConstraintError, DataError, ExportError, HwfaultError, LimitError, ModelError, OutputError,
                     SelectionError, SpecError)

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
    "campaign", "plan_campaign", "CampaignResult", "protect", "ProtectResult",
    # one chip realisation, for a user's own loop
    "realised", "faulty_copy",
    # hardening and deployment
    "harden", "HardenConfig", "harden_checkpoint", "export_onnx", "export_model", "load_onnx",
    # errors
    "HwfaultError", "DataError", "ModelError", "SelectionError", "ConstraintError", "SpecError", "ExportError",
    "OutputError", "LimitError",
]


# every public name but the errors is imported on first use: ``import hwfault`` (and so the CLI's
# start-up, and a Ctrl-C during it) costs no torch, scipy or onnx import until a name is used
_LAZY = {
    "BitsResult": "analyses.bits",
    "bits": "analyses.bits",
    "campaign": "analyses.campaign.api",
    "plan_campaign": "analyses.campaign.api",
    "CampaignResult": "analyses.campaign.run",
    "protect": "analyses.protect",
    "ProtectResult": "analyses.protect",
    "EstimateResult": "analyses.estimate",
    "estimate": "analyses.estimate",
    "HardenConfig": "analyses.harden",
    "harden": "analyses.harden",
    "harden_checkpoint": "analyses.hardening",
    "faulty_copy": "analyses.realise",
    "realised": "analyses.realise",
    "ProbeResult": "analyses.sweep",
    "SweepResult": "analyses.sweep",
    "probe": "analyses.sweep",
    "sweep": "analyses.sweep",
    "certify": "certification",
    "Box": "constraints",
    "ConstraintSet": "constraints",
    "Ellipsoid": "constraints",
    "LpBall": "constraints",
    "list_datasets": "data",
    "load_data": "data",
    "EvalResult": "evaluation",
    "evaluate": "evaluation",
    "loss_and_grad": "evaluation",
    "load_model": "inputs",
    "Selection": "params",
    "describe": "params",
    "perturbed": "params",
    "select": "params",
    "gradient": "search.methods",
    "multistep": "search.methods",
    "random": "search.methods",
    "CorruptionPoint": "search.results",
    "CorruptionResult": "search.results",
    "ChipSpec": "spec",
    "list_chips": "spec",
    "load_chip": "spec",
    "ArrayDataset": "arrays",
    "Classification": "tasks",
    "LanguageModel": "tasks",
    "Regression": "tasks",
    "Task": "tasks",
    "list_models": "zoo",
    "save_checkpoint": "zoo",
    "export_onnx": "export", "export_model": "export", "load_onnx": "onnxmodel",
}


def __getattr__(name: str):
    """The public names are imported on first use (and then cached in the module)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwfault' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
