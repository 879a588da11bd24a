import os

import pytest
import torch

import hwfault as hw

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers x two OpenMP threads on two cores spin against
    # each other and make small kernels many times slower
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    problems only lose from OpenMP threads handing off small ops on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


# ----------------------------------------------------------------------------- the fuzz suite's tally

_FUZZ: dict = {"cases": {}, "problems": {}}


def pytest_runtest_logreport(report):
    """Collect what the fuzz tests recorded (``record_property("fuzz", ...)``), also from xdist workers."""
    import json

    if report.when != "call":
        return
    for key, value in getattr(report, "user_properties", ()):
        if key == "fuzz":
            d = json.loads(value)
            _FUZZ["cases"][d["category"]] = _FUZZ["cases"].get(d["category"], 0) + d["cases"]
            for k, n in d["problems"].items():
                _FUZZ["problems"][k] = _FUZZ["problems"].get(k, 0) + n


def pytest_terminal_summary(terminalreporter):
    if not _FUZZ["cases"]:
        return
    total = sum(_FUZZ["cases"].values())
    cats = ", ".join(f"{k} {v}" for k, v in sorted(_FUZZ["cases"].items()))
    kinds = ("tracebacks", "wrong exit codes", "code executed", "half-written or left-behind files",
             "unbounded allocations or hangs", "other (error message)")
    probs = ", ".join(f"{_FUZZ['problems'].get(k, 0)} {k}" for k in kinds)
    terminalreporter.write_line(f"fuzz suite: {total} cases ({cats}): {probs}")
