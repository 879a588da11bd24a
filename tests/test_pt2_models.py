"""User models from torch.export archives: fixed-batch programs run on any batch size (in chunks of
their batch), parameters are typed by how the graph uses them, token ids stay integers (issue 13)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hwfault as hw
from hwfault.faults.chip import device_selection
from hwfault.pt2 import FixedBatchModule
from hwfault.spec import load_chip


pytestmark = pytest.mark.usefixtures("one_thread")


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


class Gated(nn.Module):
    """A squeeze-excite style (1, C, 1, 1) gate: an elementwise parameter of conv shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.gate = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.max_pool2d(torch.relu(self.conv(x)) * self.gate, 2).flatten(1))


class TinyLM(nn.Module):
    """Integer tokens in, a dict of (B, T, V) logits and (B, T, D) features out."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.norm(self.tok(ids))
        return {"logits": self.head(h), "features": h}


def _eval(model):
    torch.manual_seed(0)
    m = model.eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _archive(model, example, path, dynamic=False):
    name = next(iter(inspect.signature(model.forward).parameters))
    ds = {name: {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=ds), str(path))
    return hw.load_model(path)


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    torch.manual_seed(0)
    model = _eval(ConvNet())
    x = torch.randn(540, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loaded = _archive(model, x[:2], tmp_path_factory.mktemp("pt2") / "fixed.pt2")
    return model, loaded, x


def test_a_fixed_batch_archive_runs_on_any_batch_size(conv):
    model, loaded, x = conv
    assert isinstance(loaded, FixedBatchModule) and loaded.batch_size == 2
    with torch.no_grad():
        for n in (1, 2, 3, 5, 540):
            assert torch.allclose(loaded(x[:n]), model(x[:n]), rtol=0, atol=1e-6), n
    with torch.no_grad(), pytest.raises(Exception, match="Guard failed"):  # the program itself refuses
        loaded.program(x[:3])


def test_the_wrapper_shows_the_programs_parameters_and_passes_gradients(conv):
    model, loaded, x = conv
    names = [n for n, _ in model.named_parameters()]
    assert [n for n, _ in loaded.named_parameters()] == names
    assert dict(loaded.named_parameters())["conv1.weight"] is loaded.program.conv1.weight
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert [n for n, _ in loaded.named_buffers()] == [n for n, _ in model.named_buffers()]
    assert [i.name for i in hw.describe(loaded)] == [i.name for i in hw.describe(model)]
    y = model(x[:5]).argmax(1).roll(1)
    for m in (model, loaded):
        for p in m.parameters():
            p.requires_grad_(True)
    ours = torch.autograd.grad(F.cross_entropy(loaded(x[:5]), y), list(loaded.parameters()))
    ref = torch.autograd.grad(F.cross_entropy(model(x[:5]), y), list(model.parameters()))
    for n, a, b in zip(names, ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), n
    twin = copy.deepcopy(loaded)  # analyses copy models (float64 sweeps, faulty copies)
    assert isinstance(twin, FixedBatchModule) and [n for n, _ in twin.named_parameters()] == names
    assert dict(twin.named_parameters())["fc.weight"] is twin.program.fc.weight
    assert not any(p is q for p, q in zip(twin.parameters(), loaded.parameters()))
    twin.double()
    with torch.no_grad():
        assert torch.allclose(twin(x[:3].double()), copy.deepcopy(model).double()(x[:3].double()), atol=1e-12)


def test_sweep_and_estimate_on_a_fixed_batch_archive_match_the_eager_model(conv):
    model, loaded, x = conv
    x = x[:30]
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 5  # not all correct: a clean accuracy of 2/3
    data = (x, y)
    kw = {"norm": 2, "epsilons": [0.05, 0.5], "methods": ["random", "gradient"], "trials": 2}
    ours, ref = hw.sweep(loaded, data, **kw), hw.sweep(model, data, **kw)
    assert ours.clean["accuracy"] == pytest.approx(ref.clean["accuracy"]) == pytest.approx(2 / 3)
    for m in ("random", "gradient"):
        assert [p.accuracy for p in ours.method(m).points] == [p.accuracy for p in ref.method(m).points]
    assert ours.method("gradient")[0.5].accuracy < ref.clean["accuracy"]
    kw = {"trials": 2, "steps": 2, "per_fault": False, "severities": (), "certified": None}
    a = hw.estimate(loaded, data, "int8-sram-nominal", **kw)
    b = hw.estimate(model, data, "int8-sram-nominal", **kw)
    assert a.chip["k"] == b.chip["k"] == sum(p.numel() for n, p in model.named_parameters()
                                             if n.endswith("weight") and not n.startswith("bn"))
    assert a.clean == pytest.approx(b.clean) and a.quantized["accuracy"] == b.quantized["accuracy"]


def test_a_gate_parameter_is_elementwise_and_the_device_matches_onnx(tmp_path):
    torch.manual_seed(0)
    model = _eval(Gated())
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    hw.export_onnx(model, tmp_path / "g.onnx", data=(x, y))
    onnx = hw.load_onnx(tmp_path / "g.onnx")
    chip = load_chip("int8-sram-nominal")
    want = device_selection(chip, onnx).numel
    assert want == 8 * 1 * 3 * 3 + 4 * 8 * 4 * 4  # conv and fc weights; ONNX does not inject the Mul's gate
    for dynamic, path in ((False, "fixed.pt2"), (True, "dyn.pt2")):
        loaded = _archive(model, x[:2], tmp_path / path, dynamic=dynamic)
        comps = {i.name: i.component for i in hw.describe(loaded)}
        assert comps == {"gate": "elementwise", "conv.weight": "conv", "conv.bias": "conv", "fc.weight": "linear",
                         "fc.bias": "linear"}
        sel = device_selection(chip, loaded)
        assert sel.numel == want and "gate" not in sel.names
        assert hw.select(loaded, types="elementwise").names == ("gate",)
    # a module without a graph keeps the shape fallback (the gate's 4-D shape reads as conv)
    assert {i.name: i.component for i in hw.describe(model)}["gate"] == "conv"


def test_a_dynamic_batch_archive_is_returned_as_exported(tmp_path):
    torch.manual_seed(0)
    model = _eval(ConvNet())
    x = torch.randn(7, 1, 8, 8)
    loaded = _archive(model, x[:2], tmp_path / "dyn.pt2", dynamic=True)
    assert isinstance(loaded, torch.fx.GraphModule) and not isinstance(loaded, FixedBatchModule)
    with torch.no_grad():
        for n in (1, 3, 7):
            assert torch.allclose(loaded(x[:n]), model(x[:n]), rtol=0, atol=1e-6)
    comps = {i.name: i.component for i in hw.describe(loaded)}
    assert comps == {"conv1.weight": "conv", "conv1.bias": "conv", "bn.weight": "norm", "bn.bias": "norm",
                     "conv2.weight": "conv", "conv2.bias": "conv", "fc.weight": "linear", "fc.bias": "linear"}


def test_token_ids_pass_through_a_fixed_batch_archive_as_integers(tmp_path):
    torch.manual_seed(0)
    model = _eval(TinyLM())
    ids = torch.randint(0, 11, (9, 6), generator=torch.Generator().manual_seed(3))
    loaded = _archive(model, ids[:2], tmp_path / "lm.pt2")
    assert isinstance(loaded, FixedBatchModule) and loaded.batch_size == 2
    seen = []
    loaded.program.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        for n in (1, 5, 9):
            out, ref = loaded(ids[:n]), model(ids[:n])
            assert set(out) == {"logits", "features"} and out["logits"].shape == (n, 6, 11)
            for k in ref:
                assert torch.allclose(out[k], ref[k], rtol=0, atol=1e-6), (n, k)
    assert seen and set(seen) == {torch.int64}
    comps = {i.name: i.component for i in hw.describe(loaded)}
    assert comps == {"tok.weight": "embedding", "norm.weight": "norm", "norm.bias": "norm", "head.weight": "linear",
                     "head.bias": "linear"}
