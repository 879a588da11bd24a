"""One sampled chip for a user's own loop: hw.realised (in place, undone on exit) and hw.faulty_copy."""

import pytest
import torch

import hwfault as hw
from hwfault.faults import Chip
from hwfault.rng import generator
from hwfault.spec import load_chip


@pytest.fixture
def model():
    return hw.load_model("digits-cnn", requires_grad=False)


def test_realised_is_the_chip_estimate_calls_trial_t(model, digits, snapshot):
    take, same = snapshot
    snap = take(model)
    r = hw.estimate(model, digits, "int8-sram-0.5v", trials=4, seed=2, per_fault=False, severities=(), certified=None)
    for t in (1, 3):
        with hw.realised(model, "int8-sram-0.5v", seed=2, trial=t) as chip_model:
            assert chip_model is model and not same(model, snap)
            assert hw.evaluate(chip_model, digits).accuracy == r.random["accuracies"][t]
        assert same(model, snap)


def test_the_weights_are_the_programmed_chip(model):
    chip = Chip.build(load_chip("rram-4bit"), model)
    programmed = chip.program(generator(0, 5))
    with hw.realised(model, "rram-4bit", seed=0, trial=5):
        now = torch.cat([p.detach().reshape(-1).double() for p in chip.selection.params])
    want = chip.view.w.double() + chip.delta(programmed).double()
    assert torch.equal(now, want.float().double())


def test_transient_faults_are_redrawn_at_every_forward_and_everything_is_undone(model, digits, snapshot):
    """pcm-1day has read noise: two forward calls on the realised model differ; after the block (left by
    an exception) the weights are bit-exact again and no hook is left on the model."""
    take, same = snapshot
    snap = take(model)
    x = digits.tensors[0][:64]
    with pytest.raises(RuntimeError, match="user code failed"):
        with hw.realised(model, "pcm-1day", seed=0, trial=0) as m:
            a, b = m(x), m(x)
            assert not torch.equal(a, b)
            raise RuntimeError("user code failed")
    assert same(model, snap) and not model._forward_pre_hooks


def test_faulty_copy_leaves_the_model_alone(model, digits, snapshot):
    take, same = snapshot
    snap = take(model)
    copy = hw.faulty_copy(model, "int8-sram-0.5v", seed=2, trial=1)
    assert same(model, snap) and copy is not model
    with hw.realised(model, "int8-sram-0.5v", seed=2, trial=1):
        inplace = hw.evaluate(model, digits).accuracy
    assert hw.evaluate(copy, digits).accuracy == inplace
    assert hw.evaluate(model, digits).accuracy == hw.evaluate(hw.load_model("digits-cnn"), digits).accuracy
