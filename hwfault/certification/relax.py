"""Linear relaxations: the planes and chords that bound each nonlinearity on an interval [l, u], and
the conservative widening every float64 bound gets."""

from __future__ import annotations

import torch

SLACK = 1e-12           # relative + absolute slack per float64 interval (n u for sums of ~1e4 terms)
FINAL_SLACK = 1e-9      # the same for a back-substituted bound


def abs_chord(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with |x| <= a x + c for x in [l, u]: the chord of |x| (exact when l >= 0 or u <= 0)."""
    straddle = (l < 0) & (u > 0)
    d = torch.where(straddle, u - l, torch.ones_like(l))
    a = torch.where(l >= 0, torch.ones_like(l), torch.where(u <= 0, -torch.ones_like(l), (u + l) / d))
    c = torch.where(straddle, -2 * u * l / d, torch.zeros_like(l))
    return a, c


def relu_planes(l: torch.Tensor, u: torch.Tensor, leak: float = 0.0):
    """Lower/upper linear planes (slope, intercept) of max(x, leak x), 0 <= leak <= 1, on [l, u]
    (CROWN: chord above; below, the slope of whichever piece covers more of the interval)."""
    unstable = (l < 0) & (u > 0)
    d = torch.where(unstable, u - l, torch.ones_like(l))
    one, lk = torch.ones_like(l), torch.full_like(l, leak)
    su = torch.where(unstable, (u - leak * l) / d, torch.where(l >= 0, one, lk))
    iu = torch.where(unstable, l * (leak - su), torch.zeros_like(l))
    sl = torch.where(unstable, torch.where(u > -l, one, lk), torch.where(l >= 0, one, lk))
    return sl, torch.zeros_like(l), su, iu


def sshape_planes(l: torch.Tensor, u: torch.Tensor, kind: str):
    """Parallel planes around sigmoid/tanh on [l, u]: the chord slope k, with the exact min and max of
    f(x) - k x (endpoints and the stationary points f'(x) = k) as intercepts."""
    f = torch.sigmoid if kind == "sigmoid" else torch.tanh
    width = u - l
    wide = width > 1e-12
    k = torch.where(wide, (f(u) - f(l)) / torch.where(wide, width, torch.ones_like(width)), torch.zeros_like(l))
    if kind == "sigmoid":
        root = torch.sqrt((1 - 4 * k).clamp(min=0))
        s1, s2 = ((1 - root) / 2).clamp(1e-300, 1 - 1e-16), ((1 + root) / 2).clamp(1e-300, 1 - 1e-16)
        xs = [torch.log(s1 / (1 - s1)), torch.log(s2 / (1 - s2))]
    else:
        t = torch.sqrt((1 - k).clamp(min=0)).clamp(max=1 - 1e-16)
        xs = [torch.atanh(-t), torch.atanh(t)]
    cands = [l, u] + [torch.minimum(torch.maximum(x, l), u) for x in xs]
    h = torch.stack([f(x) - k * x for x in cands])
    slack = 1e-12
    return k, h.min(0).values - slack, k, h.max(0).values + slack


def widen(v: torch.Tensor, sign: float, slack: float = SLACK) -> torch.Tensor:
    return v + sign * slack * (1 + v.abs())


def sum_rest(t: torch.Tensor, keep: int) -> torch.Tensor:
    """Sum over all dims after the first ``keep``."""
    return t.reshape(*t.shape[:keep], -1).sum(-1) if t.ndim > keep else t


def chord_term(lam_in: torch.Tensor, g: torch.Tensor, l: torch.Tensor, u: torch.Tensor, shift=None, scale=None):
    """Subtract sum g |z| with z = scale * x + shift (per element) via the chord of |z|: returns
    (new lam_in, constant)."""
    if shift is None:
        if bool((l >= 0).all()):       # e.g. after a ReLU: |x| = x
            return lam_in - g, g.new_zeros(g.shape[:2])
        a, c = abs_chord(l, u)
        return lam_in - g * a.unsqueeze(1), -sum_rest(g * c.unsqueeze(1), 2)
    zl, zu = scale * l + shift, scale * u + shift
    a, c = abs_chord(zl, zu)
    return lam_in - g * (a * scale).unsqueeze(1), -sum_rest(g * (c + a * shift).unsqueeze(1), 2)
