"""The reference zoo: every checkpoint loads and matches its card; training is deterministic."""

import pytest
import torch

import hwfault as hw
from hwfault import zoo
from hwfault.errors import ModelError


@pytest.mark.parametrize("name", hw.list_models())
def test_zoo_checkpoint_matches_card(name):
    model = hw.load_model(name)
    assert not model.training
    card = zoo.model_card(name)
    data = hw.load_data(zoo.get_entry(name).data)
    res = hw.evaluate(model, data)
    assert res.accuracy == pytest.approx(card["test_accuracy"], abs=1.5 / len(data))
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert (zoo.models_dir() / f"{name}.md").read_text().count(card["command"]) >= 1


def test_required_zoo_names():
    assert {"digits-mlp", "digits-cnn", "mnist1d-resnet", "mnist1d-lstm", "mnist1d-transformer"} <= set(hw.list_models())


def test_training_is_deterministic_and_reproduces_the_shipped_checkpoint(tmp_path):
    a = zoo.train("digits-cnn", out_dir=tmp_path / "a")
    b = zoo.train("digits-cnn", out_dir=tmp_path / "b")
    sa = hw.load_model(tmp_path / "a" / "digits-cnn.safetensors").state_dict()
    sb = hw.load_model(tmp_path / "b" / "digits-cnn.safetensors").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["test_accuracy"] == b["test_accuracy"]
    # the shipped checkpoint came from the same command (bit-exact on the machine that trained it)
    assert a["test_accuracy"] == pytest.approx(zoo.model_card("digits-cnn")["test_accuracy"], abs=0.015)


def test_pt2_archive_round_trip(tmp_path, digits):
    model = hw.load_model("digits-cnn")
    x, _ = digits.tensors
    ep = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "user.pt2")
    user = hw.load_model(tmp_path / "user.pt2")
    assert torch.allclose(user(x), model(x), atol=1e-5)
    comps = {i.name: i.component for i in hw.describe(user)}
    assert comps["conv1.weight"] == "conv" and comps["bn1.weight"] == "norm" and comps["fc1.weight"] == "linear"
    a = hw.sweep(user, digits, epsilons=[1.0], methods="gradient").method("gradient")[1.0]
    b = hw.sweep(model, digits, epsilons=[1.0], methods="gradient").method("gradient")[1.0]
    assert a.accuracy == pytest.approx(b.accuracy, abs=2 / len(x))


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="did you mean 'digits-cnn'"):
        hw.load_model("digits-cn")
    with pytest.raises(ModelError, match="not found"):
        hw.load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        hw.load_model(bad)
    bad2 = tmp_path / "bad.pt2"
    bad2.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable torch.export"):
        hw.load_model(bad2)
    other = tmp_path / "x.txt"
    other.write_text("hi")
    with pytest.raises(ModelError, match="unsupported model file"):
        hw.load_model(other)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelError, match="not an hwfault checkpoint"):
        hw.load_model(foreign)
