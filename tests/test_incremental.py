"""The partial forward pass against the full one: same outputs for faults anywhere, sparse or not."""

import pytest
import torch
from torch import nn

from hwfault import load_data, load_model
from hwfault.analyses.campaign.incremental import ForwardCache


class Mixed(nn.Module):
    """Strided, dilated, padded and grouped convolutions, 1-D and 2-D, and a residual branch."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, stride=2, padding=2, dilation=2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv1d(8, 6, 5, stride=3, padding=1)
        self.fc = nn.Linear(6 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = h + self.bn(self.c2(h))
        h = self.c3(h.flatten(2)[:, :, :14])
        return self.fc(h.flatten(1))


def _check(model, x, name, gen, count):
    cache = ForwardCache(model, x)
    assert cache._sparse_node(name) is not None  # the sparse correction applies to this layer
    p = dict(model.named_parameters())[name]
    idx = torch.randperm(p.numel(), generator=gen)[:count]
    delta = torch.randn(count, generator=gen) * float(p.abs().max())
    old = p.detach().clone()
    with torch.no_grad():
        p.view(-1)[idx] += delta
    try:
        full = model(x)
        partial = cache.logits(frozenset([name]))
        sparse = cache.logits(frozenset([name]), (name, idx, delta))
    finally:
        with torch.no_grad():
            p.copy_(old)
    torch.testing.assert_close(partial, full, rtol=0, atol=0)  # same kernels on the same inputs
    torch.testing.assert_close(sparse, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cache.logits(frozenset([name])), model(x), rtol=0, atol=0)  # cache intact


@pytest.mark.parametrize("model_name,data", [("mnist1d-resnet", "mnist1d"), ("digits-cnn", "digits"),
                                             ("digits-mlp", "digits")])
def test_partial_and_sparse_forward_match_the_full_forward(model_name, data):
    model = load_model(model_name)
    x = load_data(data).tensors[0][:200]
    gen = torch.Generator().manual_seed(0)
    names = [n for n, p in model.named_parameters() if p.ndim > 1]
    with torch.no_grad():
        for name in names:
            _check(model, x, name, gen, count=1 + int(torch.randint(3, (1,), generator=gen)))


def test_sparse_update_on_strided_dilated_grouped_convolutions():
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        x = torch.randn(16, 2, 15, 15)
        gen = torch.Generator().manual_seed(1)
        for name in ("c1.weight", "c2.weight", "c3.weight", "fc.weight"):
            for count in (1, 5):
                _check(model, x, name, gen, count)


class Tiny(nn.Module):
    """A residual block whose values differ in size: conv, norm, ReLU, a shortcut, pooling, a head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(h + self.b2(self.c2(h)))
        h = torch.relu(self.c3(h))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        for b in (model.b1, model.b2):
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2)
    return model, torch.randn(40, 3, 12, 12)


@pytest.mark.parametrize("budget", [0.0, 30_000.0, 200_000.0, "auto", None])
def test_a_bounded_cache_stays_within_its_budget_and_recomputes_what_it_dropped(budget):
    """Whatever the budget, a faulty layer's outputs equal the full forward pass: exactly where the
    layer is recomputed (dropped values are recomputed fault-free from kept ones), to round-off on the
    sparse path (the layer's cached output corrected, and the next layer by the change alone)."""
    from hwfault.analyses.campaign.incremental import cache_bytes

    model, x = _tiny()
    cache = ForwardCache(model, x, budget_bytes=budget)
    if isinstance(budget, float):
        placeholder = sum(v.numel() * v.element_size() for n, v in cache.env.items() if n.op == "placeholder")
        assert cache_bytes(cache) - placeholder <= budget
        if budget == 0.0:
            assert all(n.op == "placeholder" for n in cache.env)
    else:
        assert len(cache.env) > 1
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ("c1.weight", "c2.weight", "c3.weight", "fc.weight", "b2.weight"):
            p = dict(model.named_parameters())[name]
            idx = torch.randperm(p.numel(), generator=gen)[:2]
            delta = torch.randn(2, generator=gen) * float(p.abs().max())
            old = p.detach().clone()
            p.view(-1)[idx] += delta
            try:
                full = model(x)
                torch.testing.assert_close(cache.logits(frozenset([name])), full, rtol=0, atol=0)
                if p.ndim > 1:
                    torch.testing.assert_close(cache.logits(frozenset([name]), (name, idx, delta)), full,
                                               rtol=1e-5, atol=1e-5)
            finally:
                p.copy_(old)
        torch.testing.assert_close(cache.logits(frozenset(["c2.weight"])), model(x), rtol=0, atol=0)


def test_the_cache_keeps_values_for_the_layers_trials_strike():
    """Given the parameters trials put faults in, the kept values serve those layers (last first)."""
    model, x = _tiny()
    one = ForwardCache(model, x, budget_bytes=1e9, params=["fc.weight"])
    names = {n.name for n in one.env}
    assert names == {"x", "flatten", "fc"}, names  # fc's input and output, nothing for the other layers
    every = ForwardCache(model, x, budget_bytes=1e9)
    assert len(every.env) > len(one.env)


def test_the_change_is_followed_channel_by_channel_into_the_next_layer(monkeypatch):
    """A fault in c2 changes one channel of its output: the norm, the residual sum and the ReLU keep it
    to that channel, and c3 is its cached output plus c3 of the change (never run on the whole input)."""
    model, x = _tiny()
    cache = ForwardCache(model, x)
    calls = []
    real = model.c3.forward
    monkeypatch.setattr(model.c3, "forward", lambda *a: calls.append(1) or real(*a))
    p = model.c2.weight
    idx, delta = torch.tensor([5]), torch.tensor([0.3])
    with torch.no_grad():
        old = p.detach().clone()
        p.view(-1)[idx] += delta
        try:
            full = model(x)
            calls.clear()
            got = cache.logits(frozenset(["c2.weight"]), ("c2.weight", idx, delta))
            assert calls == []  # c3 was not run: its output was corrected
            cache.logits(frozenset(["c2.weight"]))
            assert calls == [1]  # (the plain partial pass does run it)
        finally:
            p.copy_(old)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


class LinearOnMaps(nn.Module):
    """A Linear on the last dimension of a (B, C, H, W) map, then a Conv: the Linear's output features
    are not the Conv's channels, so its change must not be followed as channels."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.conv = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(torch.relu(self.lin(x)))).flatten(1))


def test_a_linear_on_feature_maps_is_not_followed_as_channels():
    torch.manual_seed(0)
    model = LinearOnMaps().eval()
    x = torch.randn(10, 4, 6, 6)
    with torch.no_grad():
        _check(model, x, "lin.weight", torch.Generator().manual_seed(0), count=1)
