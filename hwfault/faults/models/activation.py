"""Activation faults: flipped bits of layer outputs and stuck neurons, injected by forward hooks.

A :class:`ForwardFault` does not touch the stored weights: :meth:`Chip.forward_hooks` installs its
hooks on the layers it strikes for the duration of a block (one chip: persistent draws, such as
stuck neurons, are made once per block; transient ones at every forward call, i.e. per batch, with
every input drawn independently), and removes them in a ``finally``. A hook returns a new output
tensor and never writes to the module, so the model is bit-identical to the fault-free one once
the hooks are gone, also after an exception. Draws come from the chip's generator in the order the
layers run, so a chip's activation faults are a pure function of (seed, trial) and the batches.

Positions are sparse: the flip count of a layer's batch output is Binomial(batch x neurons x bits,
ber), then the positions are uniform (:func:`~hwfault.faults.base.sample_positions`): each input's
count is Binomial(neurons x bits, ber), as if every bit flipped independently.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
from dataclasses import dataclass, replace

import torch
from torch import nn

from ...errors import HwfaultError
from ...formats import flip_bits
from ..base import FaultModel, sample_positions

__all__ = ["ForwardFault", "ActivationBitFlip", "ActivationStuck", "ActivationFormat", "strike_modules",
           "LAYER_CLASSES"]

LAYER_CLASSES = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
    "linear": (nn.Linear,),
    "norm": (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm),
    "activation": (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish,
                   nn.Mish, nn.Softplus),
    "pool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
}


def strike_modules(model: nn.Module, types, params) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose outputs a fault strikes: of the given kinds and (if given)
    matching a module-name glob; a one-line error when none is."""
    classes = tuple(c for t in types for c in LAYER_CLASSES[t])
    out = [(n, m) for n, m in model.named_modules()
           if isinstance(m, classes) and (not params or any(fnmatch.fnmatchcase(n, g) for g in params))]
    if not out:
        where = f" matching {', '.join(params)}" if params else ""
        raise HwfaultError(f"activation fault: the model has no {', '.join(types)} layer{where} to strike")
    return out


@dataclass(frozen=True)
class ActivationFormat:
    """How activations are stored, for flipping their bits: a number format name (fp32, fp16, bf16,
    intN, fp8_e4m3, an MX format, ...). Scaled formats take one scale per input and layer output
    (max|a| over the largest code; MX: their block scales along the flattened output)."""

    name: str = "fp32"

    @functools.cached_property
    def fmt(self):  # (parsed once: the hooks read it for every batch)
        from ...blockformats import number_format

        return number_format(self.name)

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def flip(self, rows: torch.Tensor, element: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
        """``rows`` (m, N) float: each row's elements ``element[i]`` with bit ``bit[i]`` flipped in
        this format (element i of row i); returns the new values (float32, one per pair)."""
        return self._recode(rows, element, lambda codes: flip_bits(codes, torch.arange(codes.numel()), bit))

    def _recode(self, rows, element, change) -> torch.Tensor:
        f = self.fmt
        r = torch.arange(rows.shape[0])
        vals = rows[r, element].detach().float()
        if getattr(f, "scaled", False):
            scale = torch.stack([torch.broadcast_to(f.scale(row.detach().float().reshape(1, -1)), (1, row.numel()))[0]
                                 for row in rows])[r, element]
            return f.decode(change(f.encode(vals, scale)), scale).float()
        return f.decode(change(f.encode(vals))).float()


class ForwardFault(FaultModel):
    """A fault that acts on a forward pass (hooks on layers) instead of the stored weights: it is
    not part of the weight covering set, and its weight ``sample`` leaves the values alone."""

    forward = True
    transient = True  # the analyses run it per batch (hooks), as transient weight faults
    types: tuple = ("conv", "linear")
    params: tuple = ()

    def sample(self, view, values, gen):
        return values

    def parts(self):
        return ()

    def apply(self, name: str, out: torch.Tensor, afmt: ActivationFormat, state: dict,
              gen: torch.Generator) -> torch.Tensor:
        """The layer ``name``'s batch output with this fault (a new tensor, or ``out`` if untouched)."""
        raise NotImplementedError

    #: a fault that also changes a layer's input (a DAC in front of an analog tile) defines
    #: ``apply_input(name, x, afmt, state, gen) -> new x`` (a new tensor); None: outputs only
    apply_input = None


@dataclass(frozen=True)
class ActivationBitFlip(ForwardFault):
    ber: float = 0.0
    count: int | None = None
    mode: str = "transient"
    types: tuple = ("conv", "linear")
    params: tuple = ()
    kind = "activation-bitflip"
    severity_name = "activation BER"

    def apply(self, name, out, afmt, state, gen):
        b, n, bits = out.shape[0], out[0].numel(), afmt.bits
        if self.mode == "persistent":  # the same (neuron, bit) cells for every input of this chip
            if name not in state:
                state[name] = (state["cells"].get(name, torch.zeros(0, dtype=torch.long)) if self.count is not None
                               else sample_positions(n * bits, self.ber, gen).sort().values)
                if state.get("log") is not None:  # (layer, neuron, bit) of every cell, for a campaign's row
                    state["log"] += [(name, int(c) // bits, int(c) % bits) for c in state[name]]
            cells = state[name]
            pos = (torch.arange(b)[:, None] * (n * bits) + cells[None, :]).reshape(-1)
        elif self.count is not None:  # this batch's flips, drawn over all the fault's layers at once
            pos = state["batch"].get(name, torch.zeros(0, dtype=torch.long))
        else:
            pos = sample_positions(b * n * bits, self.ber, gen)
        if pos.numel() == 0:
            return out
        return _flipped(out, pos, n, bits, afmt)

    def draw(self, sizes: dict, batch: int, state: dict, gen) -> None:
        """A counted fault's flips, over all its layers (``sizes``: cells per input of each): per
        input of the batch (transient) or once per chip (persistent), ``count`` distinct cells
        uniform over the whole population (neurons x bits of every layer)."""
        names = list(sizes)
        offs = torch.tensor([0] + [sizes[k] for k in names]).cumsum(0)
        total = int(offs[-1])
        reps = 1 if self.mode == "persistent" else batch
        per = {k: [] for k in names}
        for i in range(reps):
            cells = _distinct(total, min(self.count, total), gen)
            layer = torch.searchsorted(offs, cells, right=True) - 1
            for j, k in enumerate(names):
                local = cells[layer == j] - offs[j]
                per[k].append(local + (i * sizes[k] if reps > 1 else 0))
        key = "cells" if self.mode == "persistent" else "batch"
        state[key] = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in per.items()}

    def scaled(self, factor):
        if self.count is not None:
            return replace(self, count=max(1, round(self.count * factor)))
        return replace(self, ber=min(1.0, self.ber * factor))

    @property
    def severity(self):
        return self.ber if self.count is None else float(self.count)

    def describe(self):
        out = {"kind": self.kind, "mode": self.mode, "types": list(self.types), "params": list(self.params)}
        return {**out, **({"count": self.count} if self.count is not None else {"ber": self.ber})}


@dataclass(frozen=True)
class ActivationStuck(ForwardFault):
    sa0: float = 0.0
    sa1: float = 0.0
    types: tuple = ("conv", "linear")
    params: tuple = ()
    kind = "activation-stuck"
    severity_name = "stuck-neuron rate"

    def apply(self, name, out, afmt, state, gen):
        n = out[0].numel()
        if name not in state:  # once per chip and layer: which neurons, and which of them are SA1
            pos = sample_positions(n, self.sa0 + self.sa1, gen)
            one = torch.rand(pos.numel(), generator=gen, dtype=torch.float64) < (self.sa1 / (self.sa0 + self.sa1))
            state[name] = (pos, one)
        pos, one = state[name]
        if pos.numel() == 0:
            return out
        flat = out.reshape(out.shape[0], -1).clone()
        high = flat.detach().abs().amax(dim=1, keepdim=True).expand(-1, pos.numel())
        flat[:, pos] = torch.where(one.to(flat.device)[None, :], high, torch.zeros_like(high)).to(flat.dtype)
        return flat.view(out.shape)

    def scaled(self, factor):
        f = min(factor, 1.0 / (self.sa0 + self.sa1))
        return replace(self, sa0=self.sa0 * f, sa1=self.sa1 * f)

    @property
    def severity(self):
        return self.sa0 + self.sa1

    def describe(self):
        return {"kind": self.kind, "sa0": self.sa0, "sa1": self.sa1, "types": list(self.types),
                "params": list(self.params)}


def _distinct(total: int, count: int, gen) -> torch.Tensor:
    """``count`` distinct positions in [0, total), sorted."""
    pos = torch.unique(torch.randint(total, (count,), generator=gen)) if count < total // 4 else \
        torch.randperm(total, generator=gen)[:count].sort().values
    while pos.numel() < count:
        pos = torch.unique(torch.cat([pos, torch.randint(total, (count - pos.numel(),), generator=gen)]))
    return pos


def _flipped(out: torch.Tensor, pos: torch.Tensor, n: int, bits: int, afmt: ActivationFormat) -> torch.Tensor:
    """``out`` with the bits at flat positions ``pos`` (input * n * bits + neuron * bits + bit) flipped."""
    flat = out.reshape(out.shape[0], -1)
    row, rest = pos // (n * bits), pos % (n * bits)
    el, bit = rest // bits, rest % bits
    res = flat.clone()
    key = row * n + el
    if torch.unique(key).numel() == key.numel():
        res[row, el] = afmt.flip(flat[row], el, bit).to(res.dtype)
        return res.view(out.shape)
    for i in range(pos.numel()):  # several bits of one element: one after the other
        r = int(row[i])
        res[r, el[i]] = afmt.flip(res[r:r + 1], el[i:i + 1], bit[i:i + 1])[0].to(res.dtype)
    return res.view(out.shape)


@contextlib.contextmanager
def installed(faults, model: nn.Module, afmt: ActivationFormat, gen: torch.Generator, log: list | None = None):
    """The forward faults' hooks on ``model`` for the block (one chip); removed in a ``finally``.
    Counted faults learn their layers' sizes from a fault-free probe of the first input, at the
    first call. ``log``: a list that receives the (layer, neuron, bit) cells of persistent flips."""
    handles, probing = [], []
    try:
        plans = []
        for f in faults:
            state: dict = {"log": log}
            mods = strike_modules(model, f.types, f.params)
            plans.append((f, mods, state))
            for name, m in mods:
                if f.apply_input is not None:
                    handles.append(m.register_forward_pre_hook(_pre_hook(f, name, afmt, state, gen, probing)))
                handles.append(m.register_forward_hook(_hook(f, name, afmt, state, gen, probing)))
        counted = [(f, mods, st) for f, mods, st in plans if getattr(f, "count", None) is not None]
        if counted:
            handles.append(model.register_forward_pre_hook(_prepare(model, counted, afmt, gen, probing)))
        yield model
    finally:
        for h in handles:
            h.remove()


def _prepare(model, counted, afmt, gen, probing):
    def prepare(module, args):
        if probing:
            return None
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            raise HwfaultError("activation fault with count: the model's input is not a tensor")
        for f, mods, state in counted:
            if "sizes" not in state:  # one fault-free probe of the first input: each layer's cells per input
                state["sizes"] = {}
                probing.append(state)
                try:
                    with torch.no_grad():
                        model(x[:1])
                finally:
                    probing.clear()
                if f.mode == "persistent":
                    f.draw(state["sizes"], 1, state, gen)
            if f.mode != "persistent":
                f.draw(state["sizes"], x.shape[0], state, gen)
        return None
    return prepare


def _hook(f: ForwardFault, name: str, afmt: ActivationFormat, state: dict, gen, probing):
    def hook(module, args, out):
        if not isinstance(out, torch.Tensor) or out.ndim == 0:
            raise HwfaultError(f"activation fault: layer '{name}' ({type(module).__name__}) returns no tensor")
        if probing:
            if probing[0] is state:
                state["sizes"][name] = out[0].numel() * afmt.bits
            return None
        return f.apply(name, out, afmt, state, gen)
    return hook


def _pre_hook(f: ForwardFault, name: str, afmt: ActivationFormat, state: dict, gen, probing):
    def pre(module, args):
        if probing or not args or not isinstance(args[0], torch.Tensor):
            return None
        return (f.apply_input(name, args[0], afmt, state, gen), *args[1:])
    return pre


def probe(model: nn.Module, modules, x1: torch.Tensor, what=lambda args, out: out[0].numel()) -> dict:
    """``{name: what(args, output)}`` of each ``(name, module)`` in ``modules``, from one fault-free
    forward of ``x1`` (the recording hooks removed after it, also if it raises)."""
    got: dict = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, what(a, o))) for n, m in modules]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    return got


def layer_sizes(model: nn.Module, fault, x1: torch.Tensor) -> dict[str, int]:
    """Neurons per input of each layer ``fault`` strikes, from a fault-free forward of ``x1``."""
    return probe(model, strike_modules(model, fault.types, fault.params), x1)
