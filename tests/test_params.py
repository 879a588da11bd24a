"""Parameter selection and in-place perturbation with exact restore."""

import pytest
import torch

import hwfault as hw
from hwfault.errors import SelectionError


def test_component_types_on_zoo_models():
    comps = {i.name: i.component for i in hw.describe(hw.load_model("digits-cnn"))}
    assert comps["conv1.weight"] == "conv" and comps["bn1.weight"] == "norm" and comps["fc2.bias"] == "linear"
    tcomps = {i.name: i.component for i in hw.describe(hw.load_model("mnist1d-transformer"))}
    assert tcomps["pos.weight"] == "embedding"
    assert tcomps["blocks.0.self_attn.in_proj_weight"] == "attention"
    assert tcomps["blocks.0.self_attn.out_proj.weight"] == "attention"  # a Linear inside attention
    assert tcomps["blocks.0.norm1.weight"] == "norm" and tcomps["blocks.0.linear1.weight"] == "linear"
    lcomps = {i.component for i in hw.describe(hw.load_model("mnist1d-lstm"))}
    assert lcomps == {"recurrent", "linear"}


def test_select_filters(cnn):
    assert hw.select(cnn).numel == sum(p.numel() for p in cnn.parameters())
    assert hw.select(cnn, "conv*.weight").names == ("conv1.weight", "conv2.weight")
    assert hw.select(cnn, types="norm").names == ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias")
    assert set(hw.select(cnn, types="bias").names) == {n for n, _ in cnn.named_parameters() if n.endswith("bias")}
    assert hw.select(cnn, types="conv,bias", layers=0).names == ("conv1.weight", "conv1.bias")
    assert hw.select(cnn, layers="-1").names == ("fc2.weight", "fc2.bias")
    assert hw.select(cnn, "fc*", types="weight").names == ("fc1.weight", "fc2.weight")


@pytest.mark.parametrize("kw, match", [
    ({"params": "nothing*"}, "no parameter matches"),
    ({"types": "convolution"}, "did you mean 'conv'"),
    ({"layers": "9"}, "out of range"),
    ({"layers": "x"}, "integer layer"),
    ({"params": "conv*", "types": "norm"}, "no parameter matches"),
])
def test_select_errors(cnn, kw, match):
    with pytest.raises(SelectionError, match=match):
        hw.select(cnn, **kw)


def test_split_and_flatten_round_trip(cnn):
    sel = hw.select(cnn, types="conv")
    v = torch.arange(sel.numel, dtype=torch.float32)
    assert torch.equal(sel.flatten(sel.split(v)), v)
    assert [t.shape for t in sel.split(v)] == [p.shape for p in sel.params]


def test_perturbed_applies_and_restores_bit_exactly(cnn, snapshot):
    take, same = snapshot
    snap = take(cnn)
    sel = hw.select(cnn)
    delta = torch.randn(sel.numel, generator=torch.Generator().manual_seed(0)) * 1e-3
    before = sel.values()
    with hw.perturbed(sel, delta):
        assert torch.allclose(sel.values(), before + delta, atol=1e-6)
        assert not same(cnn, snap)
        w = cnn.conv1.weight.detach().clone()
    assert same(cnn, snap)
    assert torch.allclose(w, snap["conv1.weight"] + delta[:w.numel()].view_as(w))


def test_perturbed_restores_after_exception(cnn, snapshot):
    take, same = snapshot
    snap = take(cnn)
    sel = hw.select(cnn, types="norm")
    with pytest.raises(RuntimeError, match="boom"):
        with hw.perturbed(sel, torch.full((sel.numel,), 0.5)):
            raise RuntimeError("boom")
    assert same(cnn, snap)
