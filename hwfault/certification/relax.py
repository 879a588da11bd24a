"""Linear relaxations: the planes and chords that bound each nonlinearity on an interval [l, u], and
the conservative widening every float64 bound gets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


# ============================================================================ SiLU and GELU
#
# f(x) = x s(x) with s = sigmoid (SiLU), the normal CDF (GELU) or its tanh approximation. Each f is
# decreasing then increasing (one minimum, at ``SMOOTH[kind].argmin``), and f'' is even with one sign
# change on each side: f is convex on [-b, b] and concave outside (b = ``SMOOTH[kind].inflection``),
# so f' is monotone on each of (-inf, -b], [-b, b], [b, inf).

_SQRT2, _SQRT2PI = math.sqrt(2.0), math.sqrt(2.0 * math.pi)
_GC, _GA = math.sqrt(2.0 / math.pi), 0.044715          # tanh-approximate GELU: tanh(_GC (x + _GA x^3))
BISECTIONS = 40          # a piece's root bracket ends at most its width / 2^40 wide


def _dsilu(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _dgelu(x):
    return 0.5 * torch.erfc(-x / _SQRT2) + x * torch.exp(-0.5 * x * x) / _SQRT2PI


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _dgelu_tanh(x):
    g = _GC * (x + _GA * x ** 3)
    return 0.5 * (1 + torch.tanh(g)) + 0.5 * x * _GC * (1 + 3 * _GA * x * x) / torch.cosh(g) ** 2


def _d2(kind: str, x: float) -> float:
    """f''(x) up to a positive factor (its sign is what matters), for the constants below."""
    if kind == "silu":
        return 2 - x * math.tanh(x / 2)
    if kind == "gelu":
        return 2 - x * x
    g, dg = _GC * (x + _GA * x ** 3), _GC * (1 + 3 * _GA * x * x)
    return dg + 3 * _GC * _GA * x * x - x * math.tanh(g) * dg * dg


def _root(fn, lo: float, hi: float) -> float:
    """The sign change of ``fn`` in [lo, hi], to the last bit (fn(lo) and fn(hi) of opposite signs)."""
    neg = fn(lo) < 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if (fn(mid) < 0) == neg else (lo, mid)
    return 0.5 * (lo + hi)


class _Smooth:
    def __init__(self, kind, f, df):
        self.f, self.df = f, df
        self.inflection = _root(lambda x: _d2(kind, x), 1.0, 3.0)
        self.argmin = _root(lambda x: float(df(torch.tensor(x, dtype=torch.float64))), -self.inflection, 0.0)


SMOOTH = {"silu": _Smooth("silu", F.silu, _dsilu),
          "gelu": _Smooth("gelu", F.gelu, _dgelu),
          "gelu_tanh": _Smooth("gelu_tanh", _gelu_tanh, _dgelu_tanh)}


def smooth_range(l: torch.Tensor, u: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of f on [l, u]: f at the minimum clamped into [l, u] below, the larger end above."""
    sm = SMOOTH[kind]
    low = sm.f(torch.minimum(torch.maximum(torch.full_like(l, sm.argmin), l), u))
    return widen(low, -1), widen(torch.maximum(sm.f(l), sm.f(u)), 1)


def _extremes(sm: _Smooth, k: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
    """(min, max) over [l, u] of h(x) = f(x) - k x, each conservative: the values at l, u and the piece
    ends, and on each piece where h' changes sign, h(m) -+ |h'(m)| w / 2 at the centre m of a bisected
    bracket of width w around the root r (|h(r) - h(m)| <= |h'(m)| |r - m|, as |h'| is monotone
    between m and r and 0 at r). The bracket needs no more than ~40 halvings: |h'(m)| is itself
    O(w), so the term is O(w^2)."""
    k, l, u = k.reshape(-1), l.reshape(-1), u.reshape(-1)
    h = lambda x, kk: sm.f(x) - kk * x  # noqa: E731
    b = sm.inflection
    hl, hu = h(l, k), h(u, k)
    lo, hi = torch.minimum(hl, hu), torch.maximum(hl, hu)
    for P, Q in ((l, torch.clamp(u, max=-b)), (torch.clamp(l, min=-b), torch.clamp(u, max=b)),
                 (torch.clamp(l, min=b), u)):
        ok = P <= Q
        P, Q = torch.where(ok, P, l), torch.where(ok, Q, l)
        hP, hQ = h(P, k), h(Q, k)
        lo, hi = torch.minimum(lo, torch.minimum(hP, hQ)), torch.maximum(hi, torch.maximum(hP, hQ))
        dP, dQ = sm.df(P) - k, sm.df(Q) - k
        idx = torch.nonzero(ok & (((dP < 0) & (dQ > 0)) | ((dP > 0) & (dQ < 0)))).reshape(-1)
        if not len(idx):
            continue
        a, c, kk, neg = P[idx], Q[idx], k[idx], dP[idx] < 0
        for _ in range(BISECTIONS):
            m = 0.5 * (a + c)
            right = (sm.df(m) - kk < 0) == neg        # h' still has the sign it has at P: the root is right of m
            a, c = torch.where(right, m, a), torch.where(right, c, m)
        m = 0.5 * (a + c)
        hm, e = h(m, kk), (sm.df(m) - kk).abs() * (c - a) / 2
        lo[idx] = torch.minimum(lo[idx], hm - e)
        hi[idx] = torch.maximum(hi[idx], hm + e)
    return lo, hi


def smooth_planes(l: torch.Tensor, u: torch.Tensor, kind: str):
    """Parallel planes (slope, intercept) around SiLU/GELU on [l, u]: the chord slope k (f' at the
    centre on a degenerate interval), with conservative min and max of f(x) - k x as intercepts. Any
    slope gives valid planes; the chord is exact above a convex piece and below a concave one."""
    sm = SMOOTH[kind]
    width = u - l
    wide = width > 1e-9 * (1 + l.abs() + u.abs())
    k = torch.where(wide, (sm.f(u) - sm.f(l)) / torch.where(wide, width, torch.ones_like(width)),
                    sm.df(0.5 * (l + u)))
    lo, hi = _extremes(sm, k, l, u)
    return k, widen(lo.reshape(l.shape), -1), k, widen(hi.reshape(l.shape), 1)
