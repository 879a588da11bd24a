"""certify's SiLU and GELU (exact and tanh-approximate): the linear relaxations hold at every point of
many random intervals of every kind (straddling the minimum, narrow, wide, one-signed, degenerate),
certified margins never exceed the margins of sampled or attacked weight perturbations of small MLPs,
the fx and torch.export paths agree, and an unsupported layer gets one line that says what is
supported and what to do."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import hwfault as hw
from hwfault import certification as cert
from hwfault.certification.ops import MODULES, SUPPORTED, SmoothActivation
from hwfault.certification.relax import SMOOTH, smooth_planes, smooth_range
from hwfault.cli import main
from hwfault.errors import HwfaultError, ModelError

KINDS = ("silu", "gelu", "gelu_tanh")
REFERENCE = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}
TOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the relaxations


def _intervals(kind: str, gen: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random intervals [l, u] by family (float64, 300 of each)."""
    sm, n = SMOOTH[kind], 300
    r = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    c = (r(n) * 2 - 1) * 4
    out = {
        "straddling-min": (sm.argmin - 3 * r(n), sm.argmin + 3 * r(n)),
        "straddling-both-inflections": (-sm.inflection - 5 * r(n), sm.inflection + 5 * r(n)),
        "narrow": (c, c + 1e-6 * r(n)),
        "very-narrow": (c, c + 1e-12 * r(n)),
        "degenerate": (c, c.clone()),
        "wide": (-200 * r(n), 200 * r(n)),
        "very-wide": (-1e4 * r(n), 1e4 * r(n)),
        "all-negative": (-20 * r(n) - 1e-3, -1e-3 * r(n)),
        "all-positive": (1e-3 * r(n), 20 * r(n) + 1e-3),
        "mid-scale": (c - 2 * r(n), c + 2 * r(n)),
    }
    # intervals that end exactly on the special points
    pts = torch.tensor([sm.argmin, -sm.inflection, sm.inflection, 0.0], dtype=torch.float64).repeat(n // 4)
    out["ending-at-special-points"] = (pts - 3 * r(len(pts)), pts.clone())
    out["starting-at-special-points"] = (pts.clone(), pts + 3 * r(len(pts)))
    return out


def _grid(l: torch.Tensor, u: torch.Tensor, gen: torch.Generator, m: int = 2001) -> torch.Tensor:
    """Per interval: an even grid, random points and the special points that fall inside."""
    t = torch.cat([torch.linspace(0, 1, m, dtype=torch.float64).expand(len(l), m),
                   torch.rand(len(l), 500, generator=gen, dtype=torch.float64)], 1)
    x = l[:, None] + t * (u - l)[:, None]
    x[:, 0], x[:, m - 1] = l, u
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_planes_and_interval_bounds_hold_at_every_sampled_point(kind):
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    f = REFERENCE[kind]
    for family, (l, u) in _intervals(kind, gen).items():
        sl, il, su, iu = smooth_planes(l, u, kind)
        lo, hi = smooth_range(l, u, kind)
        x = _grid(l, u, gen)
        special = torch.tensor([SMOOTH[kind].argmin, -SMOOTH[kind].inflection, SMOOTH[kind].inflection])
        x = torch.cat([x, torch.minimum(torch.maximum(special.expand(len(l), 3), l[:, None]), u[:, None])], 1)
        fx = f(x)
        below = sl[:, None] * x + il[:, None] - fx
        above = fx - su[:, None] * x - iu[:, None]
        assert float(below.max()) <= 0, f"{kind} {family}: lower plane above f by {float(below.max()):.3g}"
        assert float(above.max()) <= 0, f"{kind} {family}: upper plane below f by {float(above.max()):.3g}"
        assert float((lo[:, None] - fx).max()) <= 0 and float((fx - hi[:, None]).max()) <= 0, f"{kind} {family}"
        assert bool(torch.isfinite(torch.stack([sl, il, su, iu, lo, hi])).all()), f"{kind} {family}"
        # tight: the interval bounds are the sampled extremes (the minimum point is among the samples)
        # up to the slack, and the planes touch f to within the slack and the grid's resolution
        assert float((fx.min(1).values - lo).max()) <= 1e-9 * (1 + float(fx.abs().max()))
        assert float((hi - fx.max(1).values).max()) <= 1e-9 * (1 + float(fx.abs().max()))
        h = (u - l) / 2000
        gap_lo = (fx - sl[:, None] * x - il[:, None]).min(1).values
        gap_hi = (su[:, None] * x + iu[:, None] - fx).min(1).values
        assert bool((gap_lo <= 1e-9 * (1 + fx.abs().max(1).values) + h * h).all()), f"{kind} {family}"
        assert bool((gap_hi <= 1e-9 * (1 + fx.abs().max(1).values) + h * h).all()), f"{kind} {family}"


@pytest.mark.parametrize("kind", KINDS)
def test_upper_plane_is_the_chord_on_the_convex_part_and_narrow_planes_are_tangents(kind):
    gen = torch.Generator().manual_seed(7)
    b, f = SMOOTH[kind].inflection, REFERENCE[kind]
    l = -b + 2 * b * torch.rand(500, generator=gen, dtype=torch.float64)
    u = torch.minimum(l + 2 * torch.rand(500, generator=gen, dtype=torch.float64), torch.tensor(b))
    _, _, su, iu = smooth_planes(l, u, kind)
    assert torch.allclose(su * l + iu, f(l), atol=1e-9) and torch.allclose(su * u + iu, f(u), atol=1e-9)
    c = 6 * torch.rand(500, generator=gen, dtype=torch.float64) - 3
    sl, il, su, iu = smooth_planes(c, c + 1e-7, kind)
    x = c.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(f(x).sum(), x)
    assert torch.allclose(sl, d, atol=1e-6) and torch.allclose(su, d, atol=1e-6)
    assert float((su * c + iu - (sl * c + il)).max()) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_the_minimum_and_inflection_points(kind):
    sm, f = SMOOTH[kind], REFERENCE[kind]
    x = torch.tensor([sm.argmin, sm.inflection, -sm.inflection], dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    d1, d2 = d1.detach(), d2.detach()
    assert abs(float(d1[0])) < 1e-14 and float(d2[1:].abs().max()) < 1e-14
    assert {"silu": -1.2785, "gelu": -0.7518, "gelu_tanh": -0.7525}[kind] == pytest.approx(sm.argmin, abs=1e-4)
    # the derivative the planes use is the function's own
    z = torch.linspace(-30, 30, 20001, dtype=torch.float64, requires_grad=True)
    (dz,) = torch.autograd.grad(f(z).sum(), z)
    assert torch.allclose(sm.df(z.detach()), dz, atol=1e-14)


# ----------------------------------------------------------------------------- certified margins


class _Functional(nn.Module):
    """The same activations written as function calls (fx call_function nodes)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 10), nn.Linear(10, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(F.gelu(F.silu(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))))


def _mlp(a1: nn.Module, a2: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 10), a1=a1, fc2=nn.Linear(10, 8), a2=a2, fc3=nn.Linear(8, 3)))
    with torch.no_grad():
        m.fc1.weight.mul_(2.0)   # pre-activations reach both sides of the minimum and the concave tails
    return m.eval()


MODELS = {
    "silu": lambda: _mlp(nn.SiLU(), nn.SiLU(), 0),
    "gelu": lambda: _mlp(nn.GELU(), nn.GELU(), 1),
    "gelu-tanh": lambda: _mlp(nn.GELU(approximate="tanh"), nn.GELU(approximate="tanh"), 2),
    "mixed-relu-silu": lambda: _mlp(nn.ReLU(), nn.SiLU(inplace=True), 3),
    "functional": lambda: (torch.manual_seed(4), _Functional().eval())[1],
}
SETS = {  # name -> (norm, eps, relative, params)
    "linf-abs": ("inf", 0.02, None, "*"),
    "linf-element-weights": ("inf", 0.08, "element", "*weight"),
    "linf-wide": ("inf", 0.15, None, "*"),
    "l2-abs": ("2", 0.08, None, "*"),
}


def _data(n: int = 8, seed: int = 0):
    x = 1.5 * torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    return x


def _margins(model, params, x, y):
    out = functional_call(model, params, (x,))
    return out.gather(1, y[:, None]) - out


def _sample(pset, params, gen, kind: str):
    """A perturbation inside the set: uniform in the box / ball, or a box vertex and a ball sphere point."""
    out = dict(params)
    for n, b in pset.bounds.items():
        d = torch.zeros_like(params[n])
        if b.radius is not None:
            t = torch.rand(d.shape, generator=gen, dtype=d.dtype) * 2 - 1
            d = d + (t if kind == "uniform" else t.sign()) * b.radius
        for rho, s in b.balls:
            sig = torch.ones_like(d) if s is None else s
            z = torch.randn(d.shape, generator=gen, dtype=d.dtype) * (sig > 0)
            z = z / z.norm().clamp(min=1e-300)
            if kind == "uniform":
                z = z * float(torch.rand((), generator=gen, dtype=d.dtype)) ** (1 / z.numel())
            d = d + rho * z * sig
        out[n] = params[n] + d
    return out


def _attack(model, params, pset, x, y, steps: int = 30):
    """Per input and class: projected gradient descent on that margin inside the set (box by sign
    steps, L2 balls by normalised steps); the smallest margins found (N, K)."""
    N, K = len(x), _margins(model, params, x[:1], y[:1]).shape[1]
    best = torch.full((N, K), math.inf, dtype=torch.float64)
    for i in range(N):
        for j in range(K):
            if j == int(y[i]):
                continue
            box = {n: torch.zeros_like(params[n], requires_grad=True) for n in pset.bounds}
            balls = {n: [torch.zeros_like(params[n], requires_grad=True) for _ in b.balls] for n, b in pset.bounds.items()}
            for step in range(steps + 1):
                p = dict(params)
                for n in pset.bounds:
                    p[n] = params[n] + box[n] + sum(balls[n])
                m = _margins(model, p, x[i:i + 1], y[i:i + 1])[0, j]
                best[i, j] = min(float(best[i, j]), float(m.detach()))
                if step == steps:
                    break
                gs = torch.autograd.grad(m, [box[n] for n in pset.bounds] + [v for n in pset.bounds for v in balls[n]],
                                         allow_unused=True)
                gb, gl = gs[:len(box)], list(gs[len(box):])
                with torch.no_grad():
                    for n, g in zip(pset.bounds, gb):
                        b = pset.bounds[n]
                        if b.radius is not None and g is not None:
                            box[n].copy_((box[n] - 0.3 * b.radius * g.sign()).clamp(-b.radius, b.radius))
                        for k, (rho, s) in enumerate(b.balls):
                            g2 = gl.pop(0)
                            sig = torch.ones_like(g2) if s is None else s
                            g2 = g2 * sig
                            v = balls[n][k] - 0.3 * rho * sig * g2 / g2.norm().clamp(min=1e-300)
                            w = torch.where(sig > 0, v / sig.clamp(min=1e-300), 0.0)
                            balls[n][k].copy_(v * min(1.0, rho / max(float(w.norm()), 1e-300)))
    return best


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("set_name", list(SETS))
def test_certified_margins_never_exceed_sampled_or_attacked_margins(model_name, set_name):
    model = MODELS[model_name]()
    x = _data()
    y = model(x).argmax(1)
    norm, eps, rel, sel = SETS[set_name]
    pset = cert.PerturbationSet.ball(model, eps, norm=norm, relative=rel, params=sel)
    lbs = {m: cert.margin_bounds(model, x, y, pset, m) for m in ("ibp", "crown")}
    m64 = copy.deepcopy(model).double()       # the set's radii are float64 already
    params = {k: v.detach() for k, v in m64.named_parameters()}
    x64 = x.double()
    worst = _attack(m64, params, pset, x64, y)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for kind in ("uniform", "vertex"):
            for _ in range(150):
                worst = torch.minimum(worst, _margins(m64, _sample(pset, params, gen, kind), x64, y))
    for method, lb in lbs.items():
        mask = torch.isfinite(lb)
        gap = (worst - lb)[mask]
        assert bool((gap >= -TOL).all()), f"{method}: bound above a realised margin by {-float(gap.min()):.3g}"
    assert bool((lbs["crown"][torch.isfinite(lbs["crown"])] > -1e6).all())   # finite, usable bounds


@pytest.mark.parametrize("model_name", list(MODELS))
def test_eps_zero_gives_the_clean_margins_and_crown_beats_ibp(model_name):
    model = MODELS[model_name]()
    x = _data(seed=3)
    y = model(x).argmax(1)
    with torch.no_grad():
        out = copy.deepcopy(model).double()(x.double())
    clean = out.gather(1, y[:, None]) - out
    lb = cert.margin_bounds(model, x, y, cert.PerturbationSet.ball(model, 0.0), "crown")
    mask = torch.isfinite(lb)
    assert torch.allclose(lb[mask], clean[mask], atol=1e-6)
    pset = cert.PerturbationSet.ball(model, 0.02)
    ibp, crown = (cert.margin_bounds(model, x, y, pset, m) for m in ("ibp", "crown"))
    assert float(crown[mask].mean()) > float(ibp[mask].mean())


def test_certify_end_to_end_on_silu_and_gelu_models():
    model = MODELS["mixed-relu-silu"]()
    x = _data(n=20, seed=5)
    y = model(x).argmax(1)
    r = cert.certify(model, (x, y), eps=[0.0, 0.005, 0.05], method="auto", time_budget=5.0)
    accs = [p.certified_accuracy for p in r.points]
    assert accs[0] == 1.0 and accs[0] >= accs[1] >= accs[2]
    assert cert.certify(MODELS["gelu"](), (x, y), eps=0.001, method="bab").points[0].method == "crown+bab"


def test_planes_are_computed_once_per_bounds():
    act = SmoothActivation("silu")
    l = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(1, 7)
    u = l + 0.5
    p1 = act.planes(l, u)
    assert act.planes(l, u) is p1
    u.add_(0.1)                           # changed in place: recomputed
    assert act.planes(l, u) is not p1
    del l, u
    assert act._memo is None              # dropped with the bounds


@pytest.mark.parametrize("model_name", ["silu", "gelu-tanh", "mixed-relu-silu", "functional"])
def test_torch_export_archive_gives_the_same_bounds(model_name, tmp_path):
    model = MODELS[model_name]()
    x = _data(n=5)
    y = model(x).argmax(1)
    ep = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    exported = hw.load_model(str(path))
    for norm in ("inf", "2"):
        a = cert.margin_bounds(model, x, y, cert.PerturbationSet.ball(model, 0.01, norm=norm), "crown")
        b = cert.margin_bounds(exported, x, y, cert.PerturbationSet.ball(exported, 0.01, norm=norm), "crown")
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- the refusal


def _expand(names: str) -> set[str]:
    """'Conv1d/2d/3d' -> Conv1d, Conv2d, Conv3d; 'Flatten/view/reshape' -> Flatten, view, reshape."""
    out = set()
    for item in names.split(", "):
        item = item.split(" (")[0]
        head, *rest = item.split("/")
        out.add(head)
        for r in rest:
            out.add(head[:len(head) - len(r)] + r if r[0].isdigit() else r)
    return out


def test_the_supported_list_names_the_registered_modules():
    listed = _expand(SUPPORTED)
    public = {c.__name__ for c in MODULES if not c.__name__.startswith("_")}
    assert public <= listed, public - listed
    assert {"SiLU", "GELU", "ReLU", "Linear", "Conv2d", "BatchNorm2d", "Dropout"} <= listed
    for name in listed & {c.__name__ for c in vars(nn).values() if isinstance(c, type)}:
        assert any(issubclass(getattr(nn, name), c) for c in MODULES), name


class _LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def _check_refusal(text: str, name: str) -> None:
    assert "\n" not in text
    assert f"certify: unsupported layer {name} at " in text
    assert "; supported: Linear, " in text and "SiLU, GELU" in text
    assert text.endswith("; replace it, or run sweep/estimate, which need no bound")


@pytest.mark.parametrize("model, name", [
    (_LayerNormNet(), "LayerNorm"),
    (nn.Sequential(nn.Linear(4, 4), nn.Hardswish(), nn.Linear(4, 3)), "Hardswish"),
    (nn.Sequential(nn.Linear(4, 4), nn.Mish(), nn.Linear(4, 3)), "Mish"),
])
def test_unsupported_layer_is_one_line_with_what_is_supported_and_what_to_do(model, name):
    x = torch.rand(3, 4)
    with pytest.raises(ModelError) as e:
        cert.certify(model.eval(), (x, torch.zeros(3, dtype=torch.long)), eps=0.01)
    assert isinstance(e.value, HwfaultError) and e.value.exit_code == 2
    _check_refusal(str(e.value), name)


def test_cli_refuses_an_unsupported_pt2_layer_in_one_line_with_exit_code_2(tmp_path, capsys):
    model = _LayerNormNet().eval()
    x = torch.rand(6, 4)
    ep = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "ln.pt2"))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.zeros(6, dtype=np.int64))
    code = main(["certify", "-m", str(tmp_path / "ln.pt2"), "-d", str(tmp_path / "d.npz"), "--norm", "inf",
                 "--eps", "0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ")
    _check_refusal(err[0][len("error: "):], "aten.layer_norm")
