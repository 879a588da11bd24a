"""The per-input falsifier: an attack inside the perturbation set that finds the inputs no certificate
can hold for (run before branch and bound, which then skips them)."""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from ..search.ascent import iterates
from .sets import DTYPE, PerturbationSet


def _falsify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pset: PerturbationSet, *, steps: int = 20,
             deadline: float | None = None) -> torch.Tensor:
    """Per input: True where a perturbation inside ``pset`` makes the model misclassify it (a
    counterexample: the input cannot be certified). Projected sign-gradient descent on each input's
    own margin f_y - max_j f_j in the model's dtype, from the centre and from a random box vertex
    (box coordinates step by sign, ball coordinates by the normalised gradient); each input's lowest
    point is then re-evaluated in float64, the arithmetic the bounds are about, and counts only if
    its margin is < 0 there too.

    A point is ``(t, v)``: per parameter, box coordinates t in [-1, 1] (times the radius) and one
    vector per L2 ball in its unit ball (times rho sigma). The loop is :func:`hwfault.search.ascent.iterates`."""
    from torch.func import functional_call, grad, vmap

    n = len(x)
    broken = torch.zeros(n, dtype=torch.bool)
    named = dict(model.named_parameters())
    names = [nm for nm in pset.bounds if nm in named]
    if not names or n == 0:
        return broken
    pb = {nm: pset.bounds[nm] for nm in names}

    def margin_fn(mdl: nn.Module):
        params = {k: v.detach() for k, v in mdl.named_parameters()}
        buffers = {k: v.detach() for k, v in mdl.named_buffers()}
        dt = params[names[0]].dtype

        def delta(t, v, nm):
            b, d = pb[nm], 0.0
            if b.offset is not None:
                d = d + b.offset.to(dt)
            if b.radius is not None:
                d = d + b.radius.to(dt) * t[nm].to(dt)
            for i, (rho, sig) in enumerate(b.balls):
                d = d + rho * (v[nm][i].to(dt) if sig is None else sig.to(dt) * v[nm][i].to(dt))
            return d

        def margin(t, v, xi, yi):
            p = {**params, **{nm: params[nm] + delta(t, v, nm) for nm in names}}
            out = functional_call(mdl, (p, buffers), (xi.unsqueeze(0).to(dt),))[0]
            own = torch.arange(out.shape[0]) == yi
            return (out * own).sum() - torch.where(own, -math.inf, out).max()

        return margin, dt

    margin, dt = margin_fn(model)
    m_fn, g_fn = vmap(margin), vmap(grad(margin, argnums=(0, 1)))
    margin64, _ = margin_fn(copy.deepcopy(model).to(DTYPE).eval())
    m64_fn = vmap(margin64)
    k = sum(named[nm].numel() for nm in names)
    chunk = max(1, 2 ** 24 // max(1, 6 * k))
    gen = torch.Generator().manual_seed(0)
    shape = {nm: tuple(named[nm].shape) for nm in names}

    def update(point, gradient, j):
        """Descent step j: box coordinates by the gradient's sign, clamped to [-1, 1]; ball coordinates
        by the normalised gradient, projected onto the unit ball; step 0.5 for the first half, then 0.125."""
        t, v = point
        gt, gv = gradient()
        step = 0.5 if j < steps // 2 else 0.125
        t = {nm: (t[nm] - step * gt[nm].sign()).clamp(-1, 1) for nm in names}
        out = {}
        for nm in names:
            out[nm] = []
            for i in range(len(v[nm])):
                g = gv[nm][i]
                g = g / g.flatten(1).norm(dim=1).clamp(min=1e-30).reshape(-1, *[1] * (g.ndim - 1))
                z = v[nm][i] - step * g
                out[nm].append(z / z.flatten(1).norm(dim=1).clamp(min=1.0).reshape(-1, *[1] * (z.ndim - 1)))
        return t, out

    with torch.enable_grad():
        for s in range(0, n, chunk):
            xs, ys = x[s:s + chunk], y[s:s + chunk]
            b = len(xs)

            def value_and_grad(point, xs=xs, ys=ys):
                # the gradient is taken only when a step is (not at the last iterate, nor once all are broken)
                t, v = point
                return m_fn(t, v, xs, ys).detach(), lambda: g_fn(t, v, xs, ys)

            low = torch.full((b,), math.inf, dtype=dt)
            best_t = {nm: torch.zeros(b, *shape[nm], dtype=dt) for nm in names}
            best_v = {nm: [torch.zeros(b, *shape[nm], dtype=dt) for _ in pb[nm].balls] for nm in names}
            for start in ("centre", "vertex"):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                t0 = {nm: (torch.zeros(b, *shape[nm], dtype=dt) if start == "centre" else
                           torch.randint(0, 2, (b, *shape[nm]), generator=gen).to(dt) * 2 - 1) for nm in names}
                v0 = {nm: [torch.zeros(b, *shape[nm], dtype=dt) for _ in pb[nm].balls] for nm in names}
                for it in iterates((t0, v0), value_and_grad, update, steps=steps, check_finite=False):
                    (t, v), mv = it.point, it.value
                    better = mv < low
                    low = torch.where(better, mv, low)
                    for nm in names:
                        best_t[nm][better] = t[nm][better]
                        for i in range(len(v[nm])):
                            best_v[nm][i][better] = v[nm][i][better]
                    if bool((low < 0).all()):
                        break
            cand = torch.nonzero(low < 0).reshape(-1)
            if len(cand):    # the lowest points, in float64 (ball coordinates renormalised there)
                bt = {nm: best_t[nm][cand].to(DTYPE) for nm in names}
                bv = {nm: [u[cand].to(DTYPE) / u[cand].to(DTYPE).flatten(1).norm(dim=1).clamp(min=1.0).reshape(
                    -1, *[1] * (u.ndim - 1)) for u in best_v[nm]] for nm in names}
                with torch.no_grad():
                    broken[s + cand] = m64_fn(bt, bv, xs[cand].to(DTYPE), ys[cand]) < 0
    return broken
