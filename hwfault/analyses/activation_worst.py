"""The worst case of a chip's activation faults: the one-step (first-order) maximiser of each
input's loss inside the activation covering set, scored exactly.

The covering set, per inference: ``activation-bitflip`` allows ``n`` flipped bits among the outputs
of its layers, ``n`` the Binomial(neurons x bits, ber) quantile at the coverage (``count``: n =
count); ``activation-stuck`` allows ``n`` stuck neurons (the Binomial(neurons, sa0 + sa1) quantile),
each reading 0 or its layer's largest |output|. Every input gets its own choice (a per-input
adversary: at least as strong as faults that share cells across inputs, so the bound stays below
every Monte-Carlo chip).

One gradient pass gives each input's gradient g with respect to every struck layer output (the
inputs are independent in eval mode). A flip of bit b of element e changes the loss by about
``g_e * (flip_b(a_e) - a_e)``; the ``n`` largest gains per input are applied together and the result
is evaluated. A flip to a non-finite value (an exponent flip to Inf or NaN in a float format) has no
first-order gain: it is taken first, since a NaN or Inf in a layer output makes the input's output
non-finite (counted wrong, as a DUE).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..evaluation import batches, evaluate
from ..faults.base import binomial_budget
from ..faults.models.activation import (ActivationBitFlip, ActivationFormat, ActivationStuck, _flipped, installed,
                                        layer_sizes)
from ..rng import generator
from ..tasks import current

BATCH = 64


def budgets(chip, model, x1: torch.Tensor, coverage: float) -> list[tuple[object, list[str], int, dict]]:
    """Per forward fault: (fault, its layers, its per-inference budget n, neurons per input of each
    layer), from a fault-free probe of one input."""
    afmt = ActivationFormat(chip.activation_format)
    out = []
    for f in chip.forward_faults:
        if not isinstance(f, (ActivationBitFlip, ActivationStuck)):
            continue  # a forward fault without an activation covering set (the analog periphery)
        sizes = layer_sizes(model, f, x1)
        neurons = sum(sizes.values())
        if isinstance(f, ActivationBitFlip):
            n = f.count if f.count is not None else binomial_budget(coverage, neurons * afmt.bits, f.ber)
        else:
            n = binomial_budget(coverage, neurons, f.sa0 + f.sa1)
        out.append((f, list(sizes), int(n), sizes))
    return out


def one_step(chip, model: nn.Module, data, coverage: float, guards=()):
    """The EvalResult of every input at its one-step worst point (None when the chip has no
    activation fault with a covering set), and the flips or stuck neurons used per input.

    ``guards``: range restrictions (Ranger) hooked after the faults, as on the chip: a flipped or
    stuck value is ranked and applied as the guard leaves it (clipped, zeroed, NaN read as 0), with
    the gradient taken at the guard's output."""
    task = current()
    x_all = next(iter(batches(data, 1, task=task)))[0]
    plan = budgets(chip, model, x_all, coverage)
    if not plan or all(n == 0 for _, _, n, _ in plan):
        return None, 0
    afmt = ActivationFormat(chip.activation_format)
    guards = tuple(guards)
    bound = _bounds(guards, afmt)
    choices = []  # per batch: {layer: flat positions} for flips, {layer: (pos, value)} for stuck
    for xb, yb in batches(data, BATCH, task=task):
        choices.append(_choose(model, xb, yb, plan, afmt, task, guards, bound))
    it = iter(choices)
    state = {}

    def pre(module, args):
        state["now"] = next(it)

    mods = dict(model.named_modules())
    layers = sorted({name for _, names, _, _ in plan for name in names})
    with contextlib.ExitStack() as stack:
        h = model.register_forward_pre_hook(pre)
        stack.callback(h.remove)
        for name in layers:
            hk = mods[name].register_forward_hook(_apply_hook(name, afmt, state))
            stack.callback(hk.remove)
        stack.enter_context(installed(guards, model, afmt, generator(0, 0)))  # after the faults', as on the chip
        r = evaluate(model, data, batch_size=BATCH)
    return r, sum(n for _, _, n, _ in plan)


def _bounds(guards, afmt) -> dict:
    """Per layer a guard bounds: what the guards leave of a tensor of its outputs."""
    out: dict = {}
    for g in guards:
        for name in getattr(g, "bounds", {}):
            prev = out.get(name)
            out[name] = (lambda t, g=g, name=name, prev=prev:
                         g.apply(name, t if prev is None else prev(t), afmt, {}, None))
    return out


def _apply_hook(name, afmt, state):
    def hook(module, args, out):
        flips, stuck = state["now"]
        if name in stuck:
            pos, val = stuck[name]
            flat = out.reshape(out.shape[0], -1).clone()
            rows = torch.arange(out.shape[0])[:, None].expand_as(pos)
            hi = flat.detach().abs().amax(1, keepdim=True).expand_as(pos)
            flat[rows, pos] = torch.where(val, hi, torch.zeros_like(hi)).to(flat.dtype)
            out = flat.view(out.shape)
        if name in flips and flips[name].numel():
            out = _flipped(out, flips[name], out[0].numel(), afmt.bits, afmt)
        return out
    return hook


def _choose(model, xb, yb, plan, afmt, task, guards=(), bound=None):
    """The batch's one-step choice: the gradient at every struck layer's output (after the guards),
    then per input the n largest first-order gains (non-finite flips first)."""
    outs: dict = {}
    raw: dict = {}
    mods = dict(model.named_modules())
    bound = bound or {}

    def keep_raw(name):
        def hook(module, args, out):
            raw[name] = out.detach()
        return hook

    def keep(name):
        def hook(module, args, out):
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            outs[name] = out
            return out
        return hook

    layers = sorted({name for _, names, _, _ in plan for name in names})
    with contextlib.ExitStack() as stack:
        for name in layers:  # the layer's own output, what a fault strikes
            stack.callback(mods[name].register_forward_hook(keep_raw(name)).remove)
        stack.enter_context(installed(guards, model, afmt, generator(0, 0)))
        for name in layers:  # after the guards: what the rest of the model sees
            stack.callback(mods[name].register_forward_hook(keep(name)).remove)
        with torch.enable_grad():
            out = model(xb)
            loss, _ = task.loss_sum(out, yb.to(out.device) if hasattr(yb, "to") else yb)
            grads = torch.autograd.grad(loss, [outs[n] for n in layers], allow_unused=True)
    g = {n: (gr if gr is not None else torch.zeros_like(outs[n])).detach().reshape(xb.shape[0], -1).double()
         for n, gr in zip(layers, grads)}
    a = {n: raw[n].reshape(xb.shape[0], -1) for n in layers}
    seen = {n: outs[n].detach().reshape(xb.shape[0], -1) for n in layers}
    keep_as = {n: bound.get(n, _same) for n in layers}
    flips, stuck = {}, {}
    for f, names, n, _ in plan:
        if n <= 0:
            continue
        if isinstance(f, ActivationBitFlip):
            gains = [_flip_gains(a[k], g[k], afmt, keep_as[k], seen[k]) for k in names]  # (B, N_k * bits) each
            allg = torch.cat(gains, 1)
            top = torch.topk(allg, min(n, allg.shape[1]), dim=1)
            offs = torch.tensor([0] + [gg.shape[1] for gg in gains]).cumsum(0)
            for j, k in enumerate(names):
                sel = (top.indices >= offs[j]) & (top.indices < offs[j + 1]) & (top.values > 0)
                rows, cols = torch.nonzero(sel, as_tuple=True)
                local = top.indices[rows, cols] - offs[j]
                pos = rows * gains[j].shape[1] + local
                flips[k] = torch.cat([flips.get(k, torch.zeros(0, dtype=torch.long)), pos]).sort().values
        else:  # stuck neurons: to 0 (sa0) or to the largest |output| (sa1), whichever gains more
            for k in names:
                hi = a[k].double().abs().amax(1, keepdim=True).expand_as(a[k])
                now = seen[k].double()
                opts = []
                if f.sa0 > 0:
                    opts.append((g[k] * (keep_as[k](torch.zeros_like(now)) - now), torch.zeros_like(a[k], dtype=torch.bool)))
                if f.sa1 > 0:
                    opts.append((g[k] * (keep_as[k](hi) - now), torch.ones_like(a[k], dtype=torch.bool)))
                gain = torch.stack([o[0] for o in opts]).amax(0)
                which = torch.stack([o[0] for o in opts]).argmax(0)
                val = torch.stack([o[1] for o in opts])[which, torch.arange(a[k].shape[0])[:, None],
                                                         torch.arange(a[k].shape[1])[None, :]]
                m = min(n, gain.shape[1])
                idx = torch.topk(gain, m, dim=1).indices
                stuck[k] = (idx, val.gather(1, idx))
    return flips, stuck


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _flip_gains(a: torch.Tensor, g: torch.Tensor, afmt: ActivationFormat, keep_as=_same,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N * bits): the first-order gain of flipping each bit of each element (+inf where the flip
    makes the element non-finite). Each element is encoded once; each bit is one decode. ``keep_as``:
    what a guard leaves of a flipped value, ``seen``: the value the model sees without the flip (the
    guard's output; ``a`` when there is no guard), ``g`` the gradient there."""
    b, n = a.shape
    f = afmt.fmt
    a32 = a.detach().float()
    g32 = g.float()
    scale = None
    if getattr(f, "scaled", False):
        scale = torch.stack([torch.broadcast_to(f.scale(row.reshape(1, -1)), (1, row.numel()))[0] for row in a32])
        codes = f.encode(a32, scale)
    else:
        codes = f.encode(a32)
    out = torch.empty(b, n, afmt.bits, dtype=torch.float32)
    inf = torch.tensor(float("inf"))
    base = a32 if seen is None else seen.detach().float()
    for bit in range(afmt.bits):
        new = keep_as(f.decode(codes ^ (1 << bit), scale) if scale is not None else f.decode(codes ^ (1 << bit)))
        gain = g32 * (new - base)
        out[:, :, bit] = torch.where(torch.isfinite(new), gain, inf)
    return out.reshape(b, n * afmt.bits)
