"""Scale-out beyond campaigns: estimate's Monte-Carlo chips and sweep's random trials on Dask give
exactly the local numbers; --workers/--scheduler errors are one line, exit 2, before any work; the
parts of an estimate show as progress."""

import contextlib
import logging

import pytest

import hwfault as hw
from hwfault.analyses import distributed
from hwfault.cli import main

# pcm-1day: three faults (per-fault Monte-Carlo runs too), read noise redrawn per batch inside every trial
EST = dict(trials=12, steps=1, severities=(0.5, 2.0), certified=None)
SWEEP = dict(epsilons=[0.1, 1.0], trials=6, methods="random")


@pytest.fixture(scope="module")
def scheduler():
    """One local cluster of two single-threaded worker processes for the module (they cost seconds to start)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    yield cluster.scheduler_address
    cluster.close()


def _mc(d: dict) -> dict:
    """The Monte-Carlo blocks of an estimate's JSON: the main one, the per-fault ones, the severity curve."""
    return {"random": d["random"], "faults": [f["random"] for f in d["faults"]],
            "severity": {k: v for k, v in d["severity"].items() if k.startswith("random")}}


def test_estimate_on_a_scheduler_equals_the_local_run(scheduler):
    local = hw.estimate("digits-cnn", "digits", "pcm-1day", **EST).to_dict()
    dask = hw.estimate("digits-cnn", "digits", "pcm-1day", scheduler=scheduler, **EST).to_dict()
    assert len(local["faults"]) == 3 and local["random"]["trials"] == 12
    assert _mc(dask) == _mc(local)  # exactly: every accuracy, loss and interval
    assert dask["worst_case"] == local["worst_case"] and dask["clean"] == local["clean"]


def test_estimate_ships_in_process_objects_pickled(scheduler, mlp, digits):
    kw = {**EST, "severities": (2.0,)}
    local = hw.estimate(mlp, digits, "rram-4bit", **kw).to_dict()  # stuck cells and programming noise
    dask = hw.estimate(mlp, digits, "rram-4bit", scheduler=scheduler, **kw).to_dict()
    assert _mc(dask) == _mc(local) and len(local["faults"]) == 2


def test_sweep_random_trials_on_a_scheduler_equal_the_local_run(scheduler, cnn, digits):
    local = hw.sweep("digits-cnn", "digits", **SWEEP).to_dict()
    dask = hw.sweep("digits-cnn", "digits", scheduler=scheduler, **SWEEP).to_dict()
    assert dask["results"] == local["results"] and len(local["results"]) == 2
    # in-process objects, float64 and antithetic pairs: the worker gets the float64 copy itself
    kw = {**SWEEP, "float64": True, "antithetic": True}
    assert hw.sweep(cnn, digits, scheduler=scheduler, **kw).to_dict()["results"] == \
        hw.sweep(cnn, digits, **kw).to_dict()["results"]


def test_campaign_on_a_scheduler_equals_the_local_run(scheduler):
    kw = dict(trials=16, seed=3)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "duration"} for r in rows]  # noqa: E731
    local = hw.campaign("digits-cnn", "digits", "int8-sram-0.55v", **kw)
    dask = hw.campaign("digits-cnn", "digits", "int8-sram-0.55v", scheduler=scheduler, chunk=5, **kw)
    assert strip(dask.rows) == strip(local.rows) and len(local.rows) == 16


@pytest.mark.slow
def test_estimate_with_two_local_workers_equals_the_local_run():
    """``workers=2`` itself: the analysis starts (and stops) its own local cluster (as campaigns do:
    test_campaign.py runs that path by default)."""
    kw = dict(trials=10, steps=1, per_fault=False, severities=(), certified=None)
    local = hw.estimate("digits-mlp", "digits", "int8-sram-0.5v", **kw).to_dict()
    dask = hw.estimate("digits-mlp", "digits", "int8-sram-0.5v", workers=2, **kw).to_dict()
    assert dask["random"] == local["random"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if an analysis reaches its clean evaluation (the errors below must come first)."""
    import hwfault.analyses.campaign.run as campaign_run
    from hwfault.analyses import estimate, sweep

    def boom(*a, **k):
        raise AssertionError("the clean evaluation ran before the --workers/--scheduler check")

    monkeypatch.setattr(estimate, "logits", boom)
    monkeypatch.setattr(sweep, "evaluate", boom)
    monkeypatch.setattr(campaign_run.Context, "__init__", boom)


@pytest.mark.parametrize("command", [["estimate", "-c", "int8-sram-0.55v"], ["sweep"],
                                     ["campaign", "-c", "int8-sram-0.55v", "--trials", "4"]])
@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "expected --workers >= 1, got 0"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give --workers or --scheduler, not both"),
    (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
])
def test_bad_workers_or_scheduler_is_one_line_exit_2_before_any_work(capsys, no_work, command, args, needle):
    if command[0] == "campaign" and args == ["--scheduler", "tcp://127.0.0.1:1"]:
        pytest.skip("test_campaign.py covers the campaign's unreachable scheduler")
    code = main([command[0], "-m", "digits-cnn", *command[1:], *args])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_runner_arguments_are_checked_in_python_too():
    with pytest.raises(hw.HwfaultError, match="not both"):
        hw.estimate("digits-cnn", "digits", "int8-sram-0.55v", workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(hw.HwfaultError, match="--workers >= 1"):
        hw.sweep("digits-cnn", "digits", epsilons=[0.1], workers=-1)
    assert list(distributed.chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_estimate_shows_each_part_as_progress(monkeypatch):
    """The outer row names the part running (clean, Monte-Carlo, worst case, per fault, severity,
    certified) and counts parts; each part has its own bar below it."""
    from hwfault import progress

    events = []

    @contextlib.contextmanager
    def task(description, total):
        events.append(("task", description, total))

        def advance(n=1, total=None, description=None):
            if description:
                events.append(("now", description))
        yield advance

    monkeypatch.setattr(progress, "task", task)
    hw.estimate("digits-mlp", "digits", "rram-4bit", trials=4, steps=1, severities=(0.5, 1.0))
    now = [e[1] for e in events if e[0] == "now" and e[1].startswith("estimate: ")]
    assert now == ["estimate: clean", "estimate: monte carlo", "estimate: worst case", "estimate: per fault",
                   "estimate: severity", "estimate: certified"]
    tasks = [e[1] for e in events if e[0] == "task"]
    assert tasks[0] == "estimate" and events[0][2] == 6
    for bar in ("clean and stored-format evaluations", "Monte-Carlo", "worst case: one step", "per fault",
                "severity", "Monte-Carlo (severity x0.5)"):  # (x1 reuses the nominal Monte-Carlo)
        assert bar in tasks, (bar, tasks)
    assert ("now", "worst case: multi-step") in events and any(e[1].startswith("per fault: ") for e in events
                                                               if e[0] == "now")



def test_workers_never_perturb_the_shipped_object_itself(monkeypatch, cnn, digits):
    """Dask may copy a shipped object from one worker to another from a thread of its own at any time
    (its memory manager drops and re-fetches replicas): trials must perturb a private copy, never the
    object in the worker's store, or a copy taken mid-trial carries a fault to every trial of the other
    worker (a CI run saw dask's sweep rows differ from the local run's this way)."""
    import copy

    import torch

    import hwfault.search.methods as methods
    from hwfault.analyses import estimate, sweep
    from hwfault.constraints import LpBall
    from hwfault.tasks import current

    shipped = copy.deepcopy(cnn)
    pristine = [p.detach().clone() for p in shipped.parameters()]
    seen = []

    def watch(fn):
        def watched(*a, **k):  # at every evaluation inside a trial: is the shipped object untouched?
            seen.append(all(torch.equal(p, q) for p, q in zip(shipped.parameters(), pristine)))
            return fn(*a, **k)
        return watched

    monkeypatch.setattr(methods, "evaluate", watch(methods.evaluate))
    job = sweep._Job(distributed.new_key(), shipped, digits, False, (None, None, None), LpBall(p=2.0, eps=1.0),
                     (0.5,), current())
    assert len(sweep._chunk(job, 0, False, [0, 1, 2])) == 3 and len(seen) == 3 and all(seen)
    seen.clear()  # the estimate's Monte-Carlo chips as well (faults are programmed into the worker's model)
    monkeypatch.setattr(estimate, "chip_logits", watch(estimate.chip_logits))
    ejob = estimate._Job(distributed.new_key(), shipped, digits, hw.load_chip("int8-sram-0.5v").model_dump(mode="json"),
                         current())
    assert len(estimate._chunk(ejob, ("all", None), 0, [0, 1])) == 2 and seen and all(seen)
