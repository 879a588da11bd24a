"""Proofs that a fault leaves an input's top-1 class unchanged (hwfault.analyses.campaign.bound): the
Lipschitz constants bound what they claim to (checked against power iteration and against perturbed
forward passes), proofs need the margin, drops happen only where all of a fault's effect flows, and a
campaign that drops proven inputs has the rows of one that evaluates every input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from hwfault.analyses.campaign.bound import _conv_lipschitz, proven
from hwfault.analyses.campaign.incremental import ForwardCache


def _power_norm(f, shape, iters: int = 60) -> float:
    """The operator norm of the linear map ``f`` from below (power iteration on f^T f)."""
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    est = 0.0
    for _ in range(iters):
        x = (x / x.norm()).requires_grad_(True)
        y = f(x)
        est = float(y.detach().norm())
        (g,) = torch.autograd.grad(0.5 * y.pow(2).sum(), x)
        x = g.detach()
    return est


@pytest.mark.parametrize("kw, hw", [(dict(kernel_size=3, padding=1), 12), (dict(kernel_size=3, stride=2, padding=1), 12),
                                    (dict(kernel_size=5, padding=2, dilation=1), 9), (dict(kernel_size=3, dilation=2, padding=2), 10),
                                    (dict(kernel_size=3, padding=1, groups=2), 8), (dict(kernel_size=1), 6),
                                    (dict(kernel_size=1, stride=2, groups=4), 6)])
def test_the_conv_constant_bounds_its_operator_norm_and_is_tight(kw, hw):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 12, bias=False, **kw).double()
    true = _power_norm(lambda x: conv(x), (1, 8, hw, hw))
    scale = torch.rand(12, dtype=torch.float64) + 0.5
    scaled = _power_norm(lambda x: conv(x) * scale.view(1, -1, 1, 1), (1, 8, hw, hw))
    got = _conv_lipschitz(conv, None, (1, 8, hw, hw))
    got_s = _conv_lipschitz(conv, scale, (1, 8, hw, hw))
    assert got >= true and got_s >= scaled
    if kw.get("stride", 1) == 1:  # (a stride subsamples: the bound is the unstrided convolution's)
        assert got <= 1.3 * true  # the Fourier bound is the circular convolution's norm: close to the zero-padded one


def _tail_change(gm: fx.GraphModule, x: torch.Tensor, at: fx.Node, delta: torch.Tensor) -> torch.Tensor:
    """The model's output change when ``delta`` is added to the value of node ``at``."""
    with torch.no_grad():
        return _forward_with(gm, x, at, delta, {}) - _forward_with(gm, x, at, torch.zeros_like(delta), {})


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.gelu(self.bn1(self.conv1(x))))) + x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = _Block(8)
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(self.block(F.relu(self.stem(x))))
        x = F.avg_pool2d(torch.sigmoid(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1)) * 2.0


def _net():
    torch.manual_seed(3)
    net = _Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    return net.eval()


def test_the_gain_of_every_cut_bounds_the_change_of_the_logits():
    """At every value all paths pass through, random and worst-direction changes of several sizes move
    each input's logits by at most gain x the change's norm."""
    net = _net().double()  # (float64: the changes are compared far below float32's round-off of the logits)
    x = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cache = ForwardCache(net, x)
    assert cache.gains is not None
    cuts = [v for v in cache._cuts(frozenset({"stem.weight"})) if cache.gains.of(v) is not None]
    assert len(cuts) >= 6  # stem, relu, block output, pool, conv, sigmoid, pool, flatten, fc, ...
    g = torch.Generator().manual_seed(1)
    for v in cuts:
        gain, ref = cache.gains.of(v), cache.env[v]
        for scale in (1e-4, 1e-1, 3.0):
            d = torch.randn(ref.shape, generator=g, dtype=torch.float64) * scale
            dz = _tail_change(cache.gm, x, v, d)
            assert bool((dz.flatten(1).norm(dim=1) <= gain * d.flatten(1).norm(dim=1) * (1 + 1e-5)).all()), v.name
        # the worst direction at one input (power iteration through the tail's Jacobian there)
        x1 = x[:1]
        def tail(dv, v=v):
            return _tail_change(cache.gm, x1, v, dv)
        d = torch.randn((1, *ref.shape[1:]), generator=g, dtype=torch.float64)
        for _ in range(15):
            d = (d / d.norm() * 1e-3).requires_grad_(True)
            out = _forward_with(cache.gm, x1, v, d, {})
            (grad,) = torch.autograd.grad(out.pow(2).sum(), d)
            d = grad.detach()
        d = d / d.norm() * 1e-3
        assert float(tail(d).norm()) <= gain * 1e-3 * (1 + 1e-5), v.name


def _forward_with(gm, x, at, delta, vals):
    """The output with ``delta`` added at node ``at``, differentiable in ``delta``."""
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            vals[n] = x
            continue
        if n.op == "output":
            return vals[n.args[0]]
        args = fx.node.map_arg(n.args, lambda a: vals[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: vals[a])
        if n.op == "call_module":
            v = gm.get_submodule(n.target)(*args, **kwargs)
        elif n.op == "call_function":
            v = n.target(*args, **kwargs)
        else:
            v = getattr(args[0], n.target)(*args[1:], **kwargs)
        vals[n] = v + delta if n is at else v
    raise AssertionError("no output")


def test_a_proof_needs_the_margin():
    z = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [float("nan"), 0.0, 0.0], [2.0, 2.0, 0.0]])
    norms = torch.tensor([1.0, 1.5, float("inf"), 0.0, 0.0])
    got = proven(1.0, norms, z)
    # margin 2 against sqrt(2) x 1.0 (yes) and sqrt(2) x 1.5 = 2.12 (no); an infinite change, a NaN logit
    # and a tie are never proven
    assert got.tolist() == [True, False, False, False, False]
    assert proven(0.5, torch.tensor([1.5]), z[:1]).tolist() == [True]


class _TwoPaths(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.fc(F.relu(self.b(h) + h))


def test_inputs_are_dropped_only_where_all_of_the_faults_effect_flows():
    net = _TwoPaths().eval()
    cache = ForwardCache(net, torch.randn(16, 6))
    names = {v.name for v in cache._cuts(frozenset({"a.weight"}))}
    assert {"a", "relu", "add", "relu_1", "fc"} <= names and "b" not in names  # b's output bypasses nothing alone
    assert {v.name for v in cache._cuts(frozenset({"a.weight", "b.weight"}))} >= {"add"}
    assert "relu" not in {v.name for v in cache._cuts(frozenset({"a.weight", "b.weight"}))}  # b's fault is after it


class _SizeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.size(0), -1))


def test_no_proofs_where_the_graph_reads_the_batch_size():
    cache = ForwardCache(_SizeDependent().eval(), torch.randn(20, 1, 6, 6))
    assert cache.gains is None  # a value computed from the batch size cannot be cut to fewer inputs


@pytest.mark.parametrize("model, data", [("mnist1d-resnet", "mnist1d"), ("digits-cnn", "digits")])
def test_a_campaign_that_drops_proven_inputs_has_the_rows_of_one_that_does_not(model, data):
    from hwfault.analyses.campaign.plan import make_plan
    from hwfault.analyses.campaign.run import Recipe, context, run_campaign
    from hwfault.faults import Chip
    from hwfault.spec import load_chip

    spec = load_chip("fp32-single-bitflip")
    rec = {p: Recipe(model, data, spec.to_dict(), 7, prove=p) for p in (True, False)}
    plan = make_plan(Chip.build(spec, context(rec[False]).model), trials=200)
    plain = run_campaign(rec[False], plan).rows
    assert context(rec[False]).proven == 0 and all(r["loss"] is not None or r["due"] for r in plain)
    proved = run_campaign(rec[True], plan).rows
    ctx = context(rec[True])
    assert ctx.proven > 0.3 * (ctx.proven + ctx.evaluated)  # most of the work was proven away
    for a, b in zip(proved, plain, strict=True):
        assert (a["faults"], a["accuracy"], a["sdc"], a["sdc_rate"], a["due"], a["critical_sdc"]) == \
            (b["faults"], b["accuracy"], b["sdc"], b["sdc_rate"], b["due"], b["critical_sdc"])
        assert a["loss"] is None or a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    skipped = sum(1 for a in proved if a["loss"] is None and not a["due"])
    assert skipped > 0 and sum(r["sdc"] for r in plain) > 0
    if model == "mnist1d-resnet":
        assert sum(r["due"] for r in plain) > 0  # NaN/Inf trials compared too
    assert math.isfinite(sum(a["accuracy"] for a in proved))
