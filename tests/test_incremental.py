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
