"""Campaigns: sizing, journal, kill -9 and resume, Dask, restore guarantees, DUE, bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from hwfault.analyses.campaign.plan import make_plan
from hwfault.analyses.campaign.run import Recipe, context, run_campaign
from hwfault.cli import main
from hwfault.faults import Chip
from hwfault.spec import load_chip
from hwfault.inputs import load_model


def recipe(chip="int8-sram-0.55v", seed=0, model="digits-cnn", data="digits", **kw):
    return Recipe(model, data, load_chip(chip).to_dict(), seed, **kw)


def plan_for(chip="int8-sram-0.55v", model="digits-cnn", **kw):
    return make_plan(Chip.build(load_chip(chip), load_model(model)), **kw)


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_sizes_the_campaign(capsys, tmp_path):
    js = tmp_path / "plan.json"
    code, _, _ = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--margin", "0.01",
                     "--confidence", "0.99", "--dry-run", "--json", str(js))
    assert code == 0 and 16_580 <= json.loads(js.read_text())["planned_trials"] <= 16_650
    code, out, _ = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--margin", "0.01",
                       "--confidence", "0.95", "--dry-run", "--json", "-")
    assert json.loads(out)["planned_trials"] == 9604
    # a finite population (one flip per trial over sites x bits) follows the formula exactly
    code, out, _ = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "fp32-single-bitflip", "--margin", "0.05",
                       "--confidence", "0.95", "--by", "layer", "--dry-run", "--json", "-")
    d = json.loads(out)
    from hwfault.analyses.campaign.plan import sample_size

    assert [s["trials"] for s in d["strata"]] == [sample_size(0.05, 0.95, s["population"]) for s in d["strata"]]
    assert [s["population"] for s in d["strata"]] == [s["sites"] * 32 for s in d["strata"]]


def _reference_row(chip_name: str, model_name: str, seed: int, t: int) -> dict:
    """Trial t recomputed from its definition, independently of the campaign's machinery (no cache, no
    sparse correction, no journal): chip t programmed from a generator seeded from (seed, t), the
    whole model evaluated on it, scored against the chip storing the fault-free weights."""
    from hwfault.evaluation import logits
    from hwfault.params import perturbed
    from hwfault.rng import generator

    model, (x, y) = load_model(model_name, requires_grad=False), load_data_tensors()
    chip = Chip.build(load_chip(chip_name), model)
    with perturbed(chip.selection, chip.delta(chip.view.w_q.double())):
        golden = logits(model, (x, y))
    programmed = chip.program(generator(seed, t))
    with perturbed(chip.selection, chip.delta(programmed)):
        out = logits(model, (x, y))
    ok, pred = golden.argmax(1) == y, out.argmax(1)
    changed = torch.nonzero(programmed != chip.view.w_q.double()).reshape(-1)
    return {"n_faults": int(changed.numel()), "accuracy": float((pred == y).double().mean()),
            "sdc": int(bool((ok & (pred != golden.argmax(1))).any())),
            "sdc_rate": float((ok & (pred != golden.argmax(1))).sum()) / int(ok.sum())}


def load_data_tensors():
    from hwfault import load_data

    return load_data("digits").tensors


@pytest.mark.parametrize("chip, trials", [("int8-sram-0.55v", (0, 5, 11)), ("fp32-single-bitflip", (2, 7))])
def test_trial_rows_equal_an_independent_recomputation(chip, trials, tmp_path):
    """The rows are what the chip does: each equals trial t recomputed from Chip, the stored format and a
    full evaluation (the campaign's cached, sparse path agrees with it); and the model is restored."""
    r, p = recipe(chip, seed=4), plan_for(chip, trials=12)
    ctx = context(r)
    snap = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    rows = run_campaign(r, p, db=str(tmp_path / "a.sqlite")).rows
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in snap.items())
    assert len(rows) == 12 and [x["trial"] for x in rows] == list(range(12))
    for t in trials:
        want = _reference_row(chip, "digits-cnn", 4, t)
        got = rows[t]
        assert got["n_faults"] == want["n_faults"] > 0
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1.01 / 540)
        assert got["sdc_rate"] == pytest.approx(want["sdc_rate"], abs=1.01 / 540)
    # a different seed gives different chips: the rows depend on (seed, t), not on t alone
    other = run_campaign(recipe(chip, seed=5), p).rows
    assert [x["faults"] for x in other] != [x["faults"] for x in rows]


def test_weights_restored_when_a_trial_raises(monkeypatch):
    r = recipe()
    ctx = context(r)
    snap = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    import hwfault.analyses.campaign.run as cr

    def boom(*a, **k):
        raise RuntimeError("trial failed")

    monkeypatch.setattr(cr, "run_logits", boom)
    monkeypatch.setattr(ctx, "cache", None)
    with pytest.raises(RuntimeError, match="trial failed"):
        run_campaign(r, plan_for(trials=3))
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in snap.items())


def test_exponent_flips_are_recorded_as_due():
    r = recipe("fp32-single-bitflip", model="mnist1d-resnet", data="mnist1d")
    p = plan_for("fp32-single-bitflip", model="mnist1d-resnet", trials=300)
    rows = run_campaign(r, p).rows
    due = [x for x in rows if x["due"]]
    assert due, "expected some flips of the exponent's top bit to give Inf/NaN"
    assert all(x["loss"] is None for x in due)


def _cli(*args):
    return [sys.executable, "-m", "hwfault.cli", *args]


def test_kill_9_and_resume_give_the_uninterrupted_result(tmp_path):
    args = ["campaign", "-m", "mnist1d-resnet", "--chip", "int8-sram-0.5v", "--trials", "150", "--seed", "5"]
    full = tmp_path / "full.sqlite"
    subprocess.run(_cli(*args, "--db", str(full)), check=True, capture_output=True)
    part = tmp_path / "part.sqlite"
    proc = subprocess.Popen(_cli(*args, "--db", str(part)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some chunks are committed, then kill mid-run
        time.sleep(0.3)
        if part.exists():
            try:
                n = sqlite3.connect(part).execute("SELECT COUNT(*) FROM trials").fetchone()[0]
            except sqlite3.Error:
                continue
            if n >= 30:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sqlite3.connect(part).execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    assert 0 < done < 150
    refused = subprocess.run(_cli(*args, "--db", str(part)), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(_cli(*args, "--db", str(part), "--resume"), check=True, capture_output=True)
    q = "SELECT trial, stratum, seed, n_faults, faults, accuracy, loss, sdc, sdc_rate, critical_sdc, due FROM trials ORDER BY trial"
    a = sqlite3.connect(full).execute(q).fetchall()
    b = sqlite3.connect(part).execute(q).fetchall()
    assert len(b) == 150 and a == b


def test_dask_two_workers_give_identical_rows(tmp_path):
    r, p = recipe(), plan_for(trials=40)
    local = run_campaign(r, p).rows
    dask = run_campaign(r, p, workers=2, chunk=7).rows
    strip = lambda rows: [{k: v for k, v in x.items() if k != "duration"} for x in rows]  # noqa: E731
    assert strip(local) == strip(dask)


def _dask_worker_processes() -> list:
    import psutil

    return [c for c in psutil.Process().children(recursive=True)
            if any("spawn_main" in part or "forkserver" in part for part in c.cmdline())]


def test_lost_dask_worker_is_rescheduled_and_rows_stay_identical(tmp_path):
    """SIGKILL one of two Dask workers after the first chunk lands: its chunks run elsewhere, nothing
    is lost or duplicated, and the rows equal a single-process run."""
    r, p = recipe(model="mnist1d-resnet", data="mnist1d"), plan_for(model="mnist1d-resnet", trials=48)
    local = run_campaign(r, p).rows
    killed = []

    def kill_one(rows):
        if not killed:
            victims = _dask_worker_processes()
            assert victims, "no Dask worker process found"
            victims[0].kill()
            killed.append(victims[0].pid)

    db = tmp_path / "dask.sqlite"
    dask = run_campaign(r, p, workers=2, chunk=3, db=str(db), on_rows=kill_one).rows
    assert killed
    strip = lambda rows: [{k: v for k, v in x.items() if k != "duration"} for x in rows]  # noqa: E731
    assert strip(local) == strip(dask)
    assert sqlite3.connect(db).execute("SELECT COUNT(*), COUNT(DISTINCT trial) FROM trials").fetchone() == (48, 48)


def test_results_show_and_export(tmp_path, capsys):
    db = tmp_path / "c.sqlite"
    code, _, err = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "int8-sram-0.55v", "--trials", "20",
                       "--db", str(db), "--by", "layer", "--plot", str(tmp_path / "layers.png"))
    assert code == 0, err
    assert (tmp_path / "layers.png").exists()
    code, _, err = run(capsys, "results", "show", "--db", str(db), "--json", str(tmp_path / "s.json"))
    assert code == 0 and json.loads((tmp_path / "s.json").read_text())["overall"]["trials"] == 80
    csv, pq = tmp_path / "r.csv", tmp_path / "r.parquet"
    code, _, _ = run(capsys, "results", "export", "--db", str(db), "--csv", str(csv), "--parquet", str(pq))
    assert code == 0
    header = csv.read_text().splitlines()[0].split(",")
    assert {"trial", "seed", "faults", "accuracy", "loss", "sdc", "due"} <= set(header)
    import pyarrow.parquet as pqm

    assert pqm.read_table(pq).num_rows == 80


@pytest.mark.parametrize("args, needle", [
    (["--trials", "0"], "trials >= 1"),
    (["--trials", "-3"], "trials >= 1"),
    (["--margin", "1.5", "--dry-run"], "margin in (0, 1)"),
    (["--margin", "0", "--dry-run"], "margin in (0, 1)"),
    (["--margin", "0.01", "--confidence", "1", "--dry-run"], "confidence in (0, 1)"),
    (["--trials", "5", "--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler"),
    (["--trials", "5", "--workers", "0"], "workers >= 1"),
    (["--trials", "5", "--resume"], "--resume needs --db"),
    (["--trials", "5", "--by", "row"], "--by layer"),
    (["--dry-run"], "--trials N or --margin"),
])
def test_bad_campaign_input(capsys, args, needle):
    code, _, err = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "int8-sram-0.55v", *args)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_db_from_another_campaign_is_refused(tmp_path, capsys):
    db = str(tmp_path / "c.sqlite")
    assert run(capsys, "campaign", "-m", "digits-cnn", "--chip", "int8-sram-0.55v", "--trials", "4", "--db", db)[0] == 0
    code, _, err = run(capsys, "campaign", "-m", "digits-mlp", "--chip", "int8-sram-0.55v", "--trials", "4", "--db", db,
                       "--resume")
    assert code == 2 and "another campaign" in err and "model" in err
    (tmp_path / "junk.sqlite").write_text("not a database at all, just text" * 10)
    code, _, err = run(capsys, "results", "show", "--db", str(tmp_path / "junk.sqlite"))
    assert code == 2 and "not a campaign journal" in err
    code, _, err = run(capsys, "results", "show", "--db", str(tmp_path / "none.sqlite"))
    assert code == 2 and "not found" in err


def test_rewording_a_chip_keeps_its_journal_resumable_but_a_different_chip_does_not(tmp_path):
    from hwfault.analyses.campaign.journal import Journal, JournalError

    ident = {"model": "m", "seed": 0, "chip": {"name": "c", "description": "old words", "references": ["a"],
                                                "faults": [{"kind": "bitflip", "ber": 1e-3, "source": "x"}]}}
    with Journal(tmp_path / "j.sqlite") as j:
        j.bind(ident, resume=False)
    reworded = {**ident, "chip": {**ident["chip"], "description": "new words", "references": ["b"],
                                  "faults": [{"kind": "bitflip", "ber": 1e-3, "source": "y"}]}}
    with Journal(tmp_path / "j.sqlite") as j:
        j.bind(reworded, resume=True)
    other = {**ident, "chip": {**ident["chip"], "faults": [{"kind": "bitflip", "ber": 2e-3, "source": "x"}]}}
    with Journal(tmp_path / "j.sqlite") as j, pytest.raises(JournalError, match="differs in: chip"):
        j.bind(other, resume=True)


@pytest.mark.parametrize("cache_mb", [0.5, "auto"])
def test_a_bounded_cache_gives_the_rows_of_plain_recomputation(cache_mb):
    """With the activation cache at a tiny budget or at its default, every trial's SDC, DUE and accuracy
    equal those of the same trial recomputed with the full forward pass (no cache at all)."""
    kw = dict(model="mnist1d-resnet", data="mnist1d")
    p = plan_for("fp32-single-bitflip", model="mnist1d-resnet", trials=300)
    cached = run_campaign(recipe("fp32-single-bitflip", seed=3, cache_mb=cache_mb, **kw), p)
    ctx = context(recipe("fp32-single-bitflip", seed=3, cache_mb=cache_mb, **kw))
    assert ctx.cache is not None and cached.cache["used"]
    if cache_mb == 0.5:
        assert cached.cache["kept_mb"] <= 0.5 + ctx.x.numel() * 4 / 2**20  # the inputs themselves, and 0.5 MB
    ctx.cache = None
    plain = run_campaign(recipe("fp32-single-bitflip", seed=3, cache_mb=cache_mb, **kw), p)
    for a, b in zip(cached.rows, plain.rows, strict=True):
        assert (a["faults"], a["sdc"], a["due"], a["accuracy"]) == (b["faults"], b["sdc"], b["due"], b["accuracy"])
    assert sum(r["due"] for r in plain.rows) > 0 and sum(r["sdc"] for r in plain.rows) > 0  # both kinds compared


def test_cache_mb_must_be_a_positive_number_or_auto(capsys):
    for bad in ("0", "-3", "lots"):
        code, _, err = run(capsys, "campaign", "-m", "digits-cnn", "--chip", "fp32-single-bitflip", "--trials", "2",
                           "--cache-mb", bad)
        assert code == 2 and err.strip().startswith("error:") and "--cache-mb" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("chip", ["fp32-single-bitflip", "int8-sram-0.55v", "fp32-soft-errors"])
def test_the_sparse_chip_is_the_dense_chip(chip):
    """``program_sparse`` draws the chip of ``program`` from the same generator, as its changed
    elements only (or declines, for faults without a sparse form)."""
    c = Chip.build(load_chip(chip), load_model("digits-cnn"))
    faults = 0
    for seed in range(5):
        sparse = c.program_sparse(torch.Generator().manual_seed(seed))
        dense = c.program(torch.Generator().manual_seed(seed))
        if sparse is None:
            assert len(c.persistent) != 1 or not hasattr(c.persistent[0], "sample_at")
            continue
        idx, values = sparse
        changed = torch.nonzero(dense != c.stored).reshape(-1)
        assert torch.equal(idx, changed)
        assert torch.equal(values, dense[changed])
        faults += idx.numel()
    assert faults > 0 or chip == "fp32-soft-errors"  # (BER 1e-6 on 2.4k weights: mostly no flip at all)
