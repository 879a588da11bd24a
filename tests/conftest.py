import os

import pytest
import torch

import hwfault as hw

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers x two OpenMP threads on two cores spin against
    # each other and make small kernels many times slower
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    return hw.load_data("digits", "test")


@pytest.fixture(scope="session")
def cnn():
    return hw.load_model("digits-cnn")


@pytest.fixture(scope="session")
def mlp():
    return hw.load_model("digits-mlp")


@pytest.fixture
def snapshot():
    """Bit-exact copy of a model's parameters and buffers, and a checker."""

    def take(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def same(model, snap):
        now = model.state_dict()
        return all(torch.equal(now[k], v) and now[k].dtype == v.dtype for k, v in snap.items())

    return take, same
