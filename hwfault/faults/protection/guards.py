"""Protections that act on values as they are computed or read: Ranger, checksums, weight bounds.

- :class:`Ranger` (range restriction, Chen et al., DSN 2021; PyTorchALFI's ``ranger.py``): each
  selected layer's output is restricted to the [min, max] of that layer's outputs over the profiled
  inputs (one pair of scalars per layer, profiled on the training split at the chip's fault-free
  stored weights). ``clip`` clamps values outside the bounds to them, ``zero`` sets them to 0; a NaN
  (which has no side) reads 0 in both modes. Its hook runs after the faults' hooks on the same layer.
- :class:`Checksum` (ABFT, Huang and Abraham 1984; FT-CNN): for a Linear or Conv layer, the sum of
  its outputs over the output channels (per group) equals the layer applied to its input with the
  summed kernel, ``sum_c y_c = conv(x, sum_c W_c) + sum_c b_c``; the summed kernel is computed once
  from the fault-free stored weights. An input whose sums differ by more than ``rtol`` times
  ``conv(|x|, sum_c |W_c|) + sum_c |b_c|`` (the magnitude of the terms, the scale of float round-off)
  at any position is flagged, and (``poison``) the model's outputs for that input read NaN at the end
  of the forward pass (after every other hook, Ranger's included): the fault is detected, so it is a
  DUE and not an SDC. Faulty weights and faulty outputs of the layer are both caught; its input is
  taken as the layer received it.
- :class:`WeightBounds` (``clip-weights``): every value read from the weight memory is restricted to
  its tensor's fault-free [min, max] (clipped or zeroed; NaN reads 0).

Costs are counted per inference (Ranger: two comparisons per bounded output value; checksum: the
multiply-accumulates of the summed kernel and of its magnitude bound, and the adds of the output
sums) and in storage bits (bounds and summed kernels as float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HwfaultError
from ..models.activation import ForwardFault, strike_modules

__all__ = ["Ranger", "Checksum", "WeightBounds", "profile_ranges", "checksum_guard"]

_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _restrict(v: torch.Tensor, lo, hi, mode: str) -> torch.Tensor:
    nan = torch.isnan(v)
    if mode == "clip":
        out = torch.minimum(torch.maximum(v, lo), hi)
    else:
        out = torch.where((v < lo) | (v > hi), torch.zeros_like(v), v)
    return torch.where(nan, torch.zeros_like(out), out)


@dataclass(frozen=True, eq=False)
class Ranger(ForwardFault):
    """Bounds ``bounds[name] = (lo, hi)`` of layer outputs; values outside are clipped or zeroed."""

    bounds: dict = field(default_factory=dict)
    mode: str = "clip"
    types: tuple = ("conv", "linear")
    params: tuple = ()
    kind = "ranger"

    def apply(self, name, out, afmt, state, gen):
        lo, hi = self.bounds[name]
        return _restrict(out, torch.tensor(lo, dtype=out.dtype, device=out.device),
                         torch.tensor(hi, dtype=out.dtype, device=out.device), self.mode)

    def cost(self, sizes: dict) -> dict:
        n = sum(sizes.get(k, 0) for k in self.bounds)
        return {"cost_bits": 64 * len(self.bounds), "extra_ops": 2 * n,
                "ops_unit": "comparisons per inference", "layers": len(self.bounds)}

    def describe(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "layers": len(self.bounds), "types": list(self.types),
                "params": list(self.params)}


def profile_ranges(model: nn.Module, data, types, params, batch: int = 256) -> dict:
    """Per selected layer, the (min, max) of its outputs over ``data`` (x, y tensors or a dataset)."""
    from ...evaluation import batches

    mods = strike_modules(model, types, params)
    found: dict = {}

    def hook(name):
        def h(module, args, out):
            if not isinstance(out, torch.Tensor):
                raise HwfaultError(f"ranger: layer '{name}' ({type(module).__name__}) returns no tensor")
            o = out.detach()
            o = o[torch.isfinite(o)]
            if o.numel():
                lo, hi = float(o.min()), float(o.max())
                old = found.get(name)
                found[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return h

    handles = [m.register_forward_hook(hook(n)) for n, m in mods]
    try:
        with torch.no_grad():
            for x, _ in batches(data, batch):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: found.get(n, (0.0, 0.0)) for n, _ in mods}


@dataclass(frozen=True, eq=False)
class Checksum(ForwardFault):
    """Column checksums of Linear/Conv layers (see the module docstring); ``sums[name]`` holds the
    summed kernels (and the module, for its geometry)."""

    sums: dict = field(default_factory=dict)
    rtol: float = 1e-2
    poison: bool = True
    types: tuple = ("conv", "linear")
    params: tuple = ()
    flags: dict = field(default_factory=dict)  # the inputs of the running forward pass flagged so far
    kind = "checksum"

    def apply_input(self, name, x, afmt, state, gen):
        state[name] = x
        return x

    def flagged(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """(batch,) bool: the inputs whose checksum of layer ``name`` mismatches."""
        module, ws, wa, bs, ba = self.sums[name]
        with torch.no_grad():
            xd = x.detach()
            if isinstance(module, nn.Linear):
                want, scale = xd @ ws.to(xd.dtype), xd.abs() @ wa.to(xd.dtype)
                got = out.detach().sum(-1)
            else:
                conv = _CONV[type(module)]
                kw = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                      "groups": module.groups}
                want, scale = conv(xd, ws.to(xd.dtype), **kw), conv(xd.abs(), wa.to(xd.dtype), **kw)
                b = out.shape[0]
                got = out.detach().reshape(b, module.groups, -1, *out.shape[2:]).sum(2)
                bs, ba = bs.reshape(1, -1, *([1] * (want.ndim - 2))), ba.reshape(1, -1, *([1] * (want.ndim - 2)))
            want, scale = want + bs.to(want.dtype), scale + ba.to(want.dtype)
            bad = ((got - want).abs() > self.rtol * scale + 1e-30) | ~torch.isfinite(got)
            return bad.reshape(bad.shape[0], -1).any(1)

    def apply(self, name, out, afmt, state, gen):
        x = state.pop(name, None)
        if x is None or name not in self.sums:
            return out
        bad = self.flagged(name, x, out)
        prev = self.flags.get("rows")
        self.flags["rows"] = bad if prev is None or prev.shape != bad.shape else prev | bad
        return out

    def finish(self, out):
        """At the end of the model's forward pass: the flagged inputs' outputs read NaN (``poison``)."""
        bad = self.flags.pop("rows", None)
        if not self.poison or bad is None or not bool(bad.any()):
            return None
        t = out["logits"] if isinstance(out, dict) and "logits" in out else out
        if not isinstance(t, torch.Tensor) or t.shape[0] != bad.shape[0]:
            return None
        shape = (-1,) + (1,) * (t.ndim - 1)
        t = torch.where(bad.reshape(shape).to(t.device), torch.full_like(t, math.nan), t)
        if isinstance(out, dict):
            return {**out, "logits": t}
        return t

    def cost(self, model: nn.Module, x1: torch.Tensor) -> dict:
        """Storage of the summed kernels and, from a probe of one input, the extra operations."""
        ops, layer_macs = 0, 0
        from ..models.activation import probe

        sizes = probe(model, [(n, m) for n, (m, *_) in self.sums.items()], x1, lambda a, o: (a[0].shape, o.shape))
        bits = 0
        for n, (m, ws, _, bs, _) in self.sums.items():
            bits += 32 * (ws.numel() + bs.numel())
            if n not in sizes:
                continue
            _, oshape = sizes[n]
            positions = math.prod(oshape[1:-1]) if isinstance(m, nn.Linear) else math.prod(oshape[2:])
            per = ws.numel() if isinstance(m, nn.Linear) else ws.numel()  # MACs of one summed output per position
            ops += 2 * positions * per + math.prod(oshape[1:])  # the sum, its magnitude bound, the output adds
            layer_macs += positions * m.weight.numel()
        return {"cost_bits": bits, "extra_ops": ops, "ops_unit": "operations per inference",
                "extra_ops_share": ops / max(layer_macs, 1), "layers": len(self.sums)}

    def describe(self) -> dict:
        return {"kind": self.kind, "rtol": self.rtol, "layers": len(self.sums), "types": list(self.types),
                "params": list(self.params)}


def checksum_guard(model: nn.Module, chip, types, params, rtol: float, poison: bool = True) -> Checksum:
    """The checksum guard of the selected Linear/Conv layers, its sums from the fault-free stored
    weights (a device parameter: the chip's stored values; any other: the module's own)."""
    stored = {}
    for p, v in zip(chip.selection.params, chip.selection.split(chip.view.w_q.float())):
        stored[id(p)] = v.detach()
    sums = {}
    for name, m in strike_modules(model, types, params):
        if not isinstance(m, (nn.Linear, *_CONV)):
            continue  # a transposed conv has no column checksum here
        if not isinstance(m, nn.Linear) and m.padding_mode != "zeros":
            continue
        w = stored.get(id(m.weight), m.weight.detach()).float().cpu()
        b = m.bias
        bias = None if b is None else stored.get(id(b), b.detach()).float().cpu()
        if isinstance(m, nn.Linear):
            ws, wa = w.sum(0), w.abs().sum(0)
            bs = bias.sum() if bias is not None else torch.zeros(())
            ba = bias.abs().sum() if bias is not None else torch.zeros(())
        else:
            g = m.groups
            wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])
            ws, wa = wg.sum(1), wg.abs().sum(1)
            bg = bias.reshape(g, -1) if bias is not None else torch.zeros(g, 1)
            bs, ba = bg.sum(1), bg.abs().sum(1)
        dev = m.weight.device
        sums[name] = (m, ws.to(dev), wa.to(dev), bs.to(dev), ba.to(dev))
    if not sums:
        raise HwfaultError("checksum: the model has no Linear or Conv layer to guard among the selected ones")
    return Checksum(sums, float(rtol), poison, tuple(types), tuple(params))


@dataclass(frozen=True, eq=False)
class WeightBounds:
    """Per element, the [lo, hi] of its tensor's fault-free stored values; reads outside are clipped
    (``mode = "clip"``) or zeroed (``"zero"``); NaN reads 0."""

    lo: torch.Tensor
    hi: torch.Tensor
    mode: str = "clip"
    tensors: int = 0

    @classmethod
    def of(cls, view, mode: str = "clip") -> WeightBounds:
        seg = view.segment_of()
        q = view.w_q.double()
        n = int(seg.max()) + 1 if seg.numel() else 0
        lo = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, seg, q, "amin")
        hi = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, seg, q, "amax")
        return cls(lo[seg], hi[seg], mode, n)

    def apply(self, values: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = (self.lo, self.hi) if idx is None else (self.lo[idx], self.hi[idx])
        return _restrict(values.double(), lo, hi, self.mode)

    def deltas(self, base: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Candidate changes (k, m) of a discrete covering set, as the bounded reads make them."""
        after = base.double()[:, None] + deltas.double()
        return _restrict(after, self.lo[:, None], self.hi[:, None], self.mode) - base.double()[:, None]

    def cost(self, k: int) -> dict:
        return {"cost_bits": 64 * self.tensors, "extra_ops": 2 * k, "ops_unit": "comparisons per read of the weights"}

    def describe(self) -> dict:
        return {"kind": "clip-weights", "mode": self.mode, "tensors": self.tensors}
