"""auto_LiRPA (the peer) on the same model and perturbation set as hwfault.certify, for bench/certify.py.

auto_LiRPA is not on PyPI in a current version: the last release there, 0.3 (2022), pins torch < 1.13
and numpy 1. ``make bench`` installs it with ``--no-deps``; :func:`load` then bridges the three
spots where it uses APIs that torch 2.x / numpy 2 renamed, without touching its files:

- ``numpy.lib.arraysetops.isin`` (numpy 2: ``numpy.isin``);
- ``torch.onnx.symbolic_helper._set_opset_version`` (torch 2.x: a property of the exporter's globals);
- ``torch._C.Node.__getitem__`` for graph-node attributes (torch 2.x: ``node.<kind>(name)``).

Returns None (and says why) when auto_LiRPA is not installed: the bench then skips the peer.
"""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import torch
from torch import nn


def load():
    """The auto_LiRPA module with the bridges in place, or None."""
    if "numpy.lib.arraysetops" not in sys.modules:
        try:
            import numpy.lib.arraysetops  # noqa: F401  (numpy 1)
        except ImportError:
            shim = types.ModuleType("numpy.lib.arraysetops")
            shim.isin = np.isin
            sys.modules["numpy.lib.arraysetops"] = shim
    import torch.onnx.symbolic_helper as sh
    if not hasattr(sh, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(v: int) -> None:
            GLOBALS.export_onnx_opset_version = v

        sh._set_opset_version = _set_opset_version
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda node, k: getattr(node, node.kindOf(k))(k)
    try:
        import auto_LiRPA
    except ImportError as e:
        print(f"[certify] auto_LiRPA not available ({e}); `make bench` installs it", file=sys.stderr)
        return None
    return auto_LiRPA


class _Chain(nn.Module):
    """The zoo MLP's Linear/ReLU chain on flat inputs (auto_LiRPA's weight perturbation wants plain
    Linear layers; the Flatten of the zoo model is a no-op on 64-d inputs)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.layers = nn.ModuleList(linears)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def certify_mlp(lirpa, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                methods=("IBP", "CROWN"), batch: int = 60) -> dict:
    """Certified accuracy with auto_LiRPA under an absolute L-inf ball of radius eps on every Linear
    weight of ``model`` (a Linear/ReLU chain; biases exact), for each method: certified accuracy,
    seconds and the mean over inputs of the smallest margin lower bound."""
    import copy

    from auto_LiRPA import BoundedModule, BoundedParameter
    from auto_LiRPA.perturbations import PerturbationLpNorm

    linears = [copy.deepcopy(m) for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        layer.weight = BoundedParameter(layer.weight.data, PerturbationLpNorm(norm=float("inf"), eps=eps))
    net = _Chain(linears).eval()
    xf = x.reshape(len(x), -1)
    K = int(model(x[:1]).shape[1])
    bm = BoundedModule(net, xf[:1], bound_opts={"sparse_intermediate_bounds": False})
    eye = torch.eye(K)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)                      # (n, K, K): e_y - e_j
    keep = ~torch.eye(K, dtype=torch.bool)[y]                        # drop the zero row j = y
    C = C[keep].reshape(len(x), K - 1, K)
    pred = model(x).argmax(1)
    out = {}
    for method in methods:
        t = time.perf_counter()
        lbs = []
        for s in range(0, len(x), batch):
            lb, _ = bm.compute_bounds(x=(xf[s:s + batch],), C=C[s:s + batch], method=method, bound_upper=False)
            lbs.append(lb.detach())
        lb = torch.cat(lbs)
        ok = (lb > 0).all(1) & (pred == y)
        out[method.lower()] = {"certified_accuracy": float(ok.double().mean()),
                               "seconds": round(time.perf_counter() - t, 2),
                               "mean_margin_lower": float(lb.min(1).values.double().mean())}
    return out


def try_weights(lirpa, model: nn.Module, x: torch.Tensor, eps: float) -> str | None:
    """Ask auto_LiRPA for CROWN bounds with every Linear and Conv weight of ``model`` perturbed (L-inf,
    eps); returns None if it can, else its error (e.g. for Conv weights: not implemented)."""
    import copy

    from auto_LiRPA import BoundedModule, BoundedParameter
    from auto_LiRPA.perturbations import PerturbationLpNorm

    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            m.weight = BoundedParameter(m.weight.data, PerturbationLpNorm(norm=float("inf"), eps=eps))
    try:
        bm = BoundedModule(net, x[:1], bound_opts={"sparse_intermediate_bounds": False})
        bm.compute_bounds(x=(x[:2],), method="CROWN", bound_upper=False)
    except Exception as e:  # noqa: BLE001  (the peer's own error is the result)
        return f"{type(e).__name__}: {e}".strip()
    return None
