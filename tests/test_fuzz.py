"""The fuzz suite: bad data files, model files, CLI arguments, signals and a full disk.

Every case states what a correct toolkit does with a hostile or careless input: one ``error:`` line
and exit code 2 (or its documented exit code), no traceback, no code from the file executed (a
payload would create a marker file), no half-written or left-behind file, and bounded memory (the
in-process cases run under a 6 GiB address-space limit, so an unbounded allocation fails the case
instead of swapping the machine). The counts per category are printed at the end of the run
(see ``conftest.py``) and recorded in the README.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"
sys.path.insert(0, str(FUZZ))

import cases as fuzz_cases  # noqa: E402
import runner as fuzz_runner  # noqa: E402

ALL = fuzz_cases.all_cases(*fuzz_runner.case_names())
SHARDS = {
    "data": [c.id for c in ALL if c.category == fuzz_cases.DATA],
    "models": [c.id for c in ALL if c.category == fuzz_cases.MODEL],
    "cli-1": [c.id for c in ALL if c.category == fuzz_cases.CLI][0::2],
    "cli-2": [c.id for c in ALL if c.category == fuzz_cases.CLI][1::2],
}


def _kinds(problems: list[str]) -> list[str]:
    out = []
    for p in problems:
        if "PAYLOAD" in p:
            out.append("code executed")
        elif "traceback" in p or p.startswith("escaped"):
            out.append("tracebacks")
        elif "MemoryError" in p or "timed out" in p:
            out.append("unbounded allocations or hangs")
        elif p.startswith("exit code"):
            out.append("wrong exit codes")
        elif p.startswith("left behind") or "symlink" in p or "outputs missing" in p:
            out.append("half-written or left-behind files")
        else:
            out.append("other (error message)")
    return out


def _record(record_property, category: str, verdicts: list[dict]) -> None:
    problems = Counter(k for v in verdicts for k in _kinds(v["problems"]))
    record_property("fuzz", json.dumps({"category": category, "cases": len(verdicts), "problems": problems}))


def test_the_suite_covers_at_least_300_cases():
    counts = Counter(c.category for c in ALL)
    assert sum(counts.values()) >= 300, counts
    assert len({c.id for c in ALL}) == len(ALL), "case ids must be unique"
    assert set(counts) == {fuzz_cases.DATA, fuzz_cases.MODEL, fuzz_cases.CLI}


@pytest.mark.parametrize("shard", sorted(SHARDS))
def test_in_process_cases(shard, tmp_path, record_property):
    ids = SHARDS[shard]
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(FUZZ / "runner.py"), "--ids", str(tmp_path / "ids.json"),
                        "--out", str(tmp_path / "out.json"), "--root", str(tmp_path / "root")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out.json").read_text())
    verdicts = res["results"]
    assert [v["id"] for v in verdicts] == ids
    _record(record_property, next(c.category for c in ALL if c.id == ids[0]), verdicts)
    bad = [f"{v['id']}: {'; '.join(v['problems'])} | {v['stderr'][-400:]}" for v in verdicts if v["problems"]]
    assert not bad, "\n".join(bad)
    # every one of these runs under the same process: its peak resident memory is bounded too
    assert res["peak_rss"] < 3 * 2**30, res["peak_rss"]


# ----------------------------------------------------------------------------- signals

def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "hwfault.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for(pred, timeout: float = 120.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return c.execute("SELECT trial, stratum, seed, n_faults, faults, accuracy, loss, sdc, sdc_rate, critical_sdc, "
                         "due FROM trials ORDER BY trial").fetchall()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if ".tmp" in p.name)


CAMPAIGN = ("campaign", "--model", "digits-mlp", "--chip", "int8-sram-0.5v", "--seed", "3")


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory):
    """An uninterrupted 300-trial campaign: what every interrupted and resumed one must equal."""
    d = tmp_path_factory.mktemp("ref")
    p = _cli(*CAMPAIGN, "--trials", "300", "--db", str(d / "ref.sqlite"))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return _rows(d / "ref.sqlite")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_campaign_keeps_whole_chunks_and_resumes_to_the_same_rows(sig, code, tmp_path, reference_rows,
                                                                                record_property):
    db, js = tmp_path / "j.sqlite", tmp_path / "c.json"
    p = _cli(*CAMPAIGN, "--trials", "300", "--db", str(db), "--json", str(js))
    assert _wait_for(lambda: _trials(db) > 0 or p.poll() is not None)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    verdicts = []
    problems = []
    if p.returncode not in (code, 0):
        problems.append(f"exit code {p.returncode}, expected {code}")
    if "Traceback" in err:
        problems.append("traceback printed")
    if p.returncode == code and js.exists():
        problems.append("left behind: the JSON of an interrupted campaign")
    if _leftovers(tmp_path):
        problems.append(f"left behind: {_leftovers(tmp_path)}")
    verdicts.append({"problems": problems})
    r = _cli(*CAMPAIGN, "--trials", "300", "--db", str(db), "--resume", "--json", str(js))
    _, err2 = r.communicate(timeout=300)
    verdicts.append({"problems": [] if r.returncode == 0 and js.exists() else [f"exit code {r.returncode}"]})
    _record(record_property, fuzz_cases.SIGNALS, verdicts)
    assert not problems, (problems, err)
    assert r.returncode == 0, err2
    assert _rows(db) == reference_rows


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", ["sweep", "zoo-train"])
def test_signal_mid_run_leaves_no_output_and_no_temporary_file(sig, code, command, tmp_path, record_property):
    if command == "sweep":
        args = ("sweep", "--model", "digits-cnn", "--eps", "0.1,1", "--methods", "random", "--trials", "500",
                "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png"))
    else:
        args = ("zoo", "train", "mnist1d-resnet", "--out", str(tmp_path / "zoo"))  # ~20 s of training
    p = _cli(*args)
    time.sleep(4.0)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    left = sorted(str(x.relative_to(tmp_path)) for x in tmp_path.rglob("*") if x.is_file())
    problems = []
    if p.returncode != code:
        problems.append(f"exit code {p.returncode}, expected {code}")
    if "Traceback" in err:
        problems.append("traceback printed")
    if left:
        problems.append(f"left behind: {left}")
    _record(record_property, fuzz_cases.SIGNALS, [{"problems": problems}])
    assert not problems, (problems, err[-2000:])


def _kill_loop(tmp_path: Path, kills: int, reference_rows, seed: int = 0) -> list[dict]:
    import random

    rnd = random.Random(seed)
    db = tmp_path / "k.sqlite"
    verdicts = []
    for i in range(kills):
        args = (*CAMPAIGN, "--trials", "300", "--db", str(db)) + (("--resume",) if db.exists() else ())
        p = _cli(*args)
        time.sleep(rnd.uniform(1.5, 4.0))  # start-up takes ~1.5 s; the campaign ~10 s in all
        p.kill()
        p.communicate(timeout=60)
        with sqlite3.connect(db) as c:
            ok = c.execute("PRAGMA integrity_check").fetchone()[0] == "ok" if db.exists() else True
        verdicts.append({"problems": [] if ok else ["journal corrupt after kill -9"]})
    r = _cli(*CAMPAIGN, "--trials", "300", "--db", str(db), "--resume")
    _, err = r.communicate(timeout=300)
    verdicts.append({"problems": [] if r.returncode == 0 and _rows(db) == reference_rows
                     else [f"resume after kill -9: exit code {r.returncode} or rows differ"]})
    return verdicts


def test_kill_9_and_resume_give_the_uninterrupted_rows(tmp_path, reference_rows, record_property):
    verdicts = _kill_loop(tmp_path, 2, reference_rows)
    _record(record_property, fuzz_cases.SIGNALS, verdicts)
    assert not [v for v in verdicts if v["problems"]], verdicts


@pytest.mark.slow
def test_kill_9_loop_of_14(tmp_path, reference_rows, record_property):
    verdicts = _kill_loop(tmp_path, 14, reference_rows, seed=1)
    _record(record_property, fuzz_cases.SIGNALS, verdicts)
    assert not [v for v in verdicts if v["problems"]], verdicts


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_a_campaign_of_a_hundred_million_trials_runs_in_bounded_memory_and_resumes(tmp_path, record_property):
    """Trial ids stream lazily: the resident memory of a 10^8-trial campaign stays flat (< 1 GB) while it
    runs, Ctrl-C keeps what was done, and --resume continues from there."""
    db = tmp_path / "big.sqlite"
    peaks, counts = [], []
    for attempt in range(2):
        p = _cli(*CAMPAIGN, "--trials", "100000000", "--db", str(db), *(("--resume",) if attempt else ()))
        assert _wait_for(lambda: _trials(db) > counts[-1] if counts else _trials(db) > 0, 120), p.stderr.read()
        peak, t0 = 0, time.time()
        while time.time() - t0 < 6:
            peak = max(peak, _rss(p.pid))
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
        peaks.append(peak)
        counts.append(_trials(db))
    ids = [r[0] for r in _rows(db)]
    assert ids == list(range(len(ids)))  # the resumed run continued where the first stopped
    assert counts[1] > counts[0] > 0
    ok = max(peaks) < 2**30
    _record(record_property, fuzz_cases.SIGNALS, [{"problems": [] if ok else ["unbounded allocation"]}] * 2)
    assert ok, peaks


# ----------------------------------------------------------------------------- disk full

@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB tmpfs filled to the last byte (skipped where mounting is not allowed)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


SW = ("sweep", "--model", "digits-mlp", "--eps", "0.1", "--methods", "gradient")
ES = ("estimate", "--model", "digits-mlp", "--chip", "int8-sram-0.5v", "--trials", "2", "--no-breakdown",
      "--certify", "none")
DISK_CASES = {
    "sweep-json": SW + ("--json", "{full}/s.json"),
    "sweep-plot": SW + ("--plot", "{full}/s.png"),
    "sweep-json-in-new-folder": SW + ("--json", "{full}/new/s.json"),
    "probe-plot": ("probe", "--model", "digits-mlp", "--eps", "0.1", "--plot", "{full}/p.svg"),
    "estimate-report-html": ES + ("--report", "{full}/r.html"),
    "estimate-report-md": ES + ("--report", "{full}/r.md"),
    "campaign-db": ("campaign", "--model", "digits-mlp", "--chip", "int8-sram-0.5v", "--trials", "3",
                    "--db", "{full}/j.sqlite"),
    "campaign-json": ("campaign", "--model", "digits-mlp", "--chip", "int8-sram-0.5v", "--trials", "3",
                      "--json", "{full}/c.json"),
    "results-export-csv": ("results", "export", "--db", "{tmp}/j.sqlite", "--csv", "{full}/t.csv"),
    "results-export-parquet": ("results", "export", "--db", "{tmp}/j.sqlite", "--parquet", "{full}/t.parquet"),
    "zoo-train-out": ("zoo", "train", "digits-mlp", "--epochs", "1", "--out", "{full}/zoo"),
    "harden-out": ("harden", "--model", "digits-mlp", "--method", "crt", "--epochs", "1", "--out", "{full}/h.safetensors"),
    "export-fp32": ("export", "--model", "digits-mlp", "--out", "{full}/m.onnx"),
    "export-int8": ("export", "--model", "digits-mlp", "--format", "int8", "--out", "{full}/m8.onnx"),
}


@pytest.mark.parametrize("name", sorted(DISK_CASES))
def test_disk_full_gives_one_line_and_leaves_nothing(name, full_disk, tmp_path, capsys, record_property):
    from hwfault.cli import main

    if name.startswith("results"):
        assert main(["campaign", "--model", "digits-mlp", "--chip", "int8-sram-0.5v", "--trials", "3",
                     "--db", str(tmp_path / "j.sqlite")]) == 0
        capsys.readouterr()
    argv = [a.replace("{full}", str(full_disk)).replace("{tmp}", str(tmp_path)) for a in DISK_CASES[name]]
    code = main(argv)
    _, err = capsys.readouterr()
    errs = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    left = sorted(p.name for p in full_disk.iterdir() if p.name != "filler")
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, expected 2")
    if "Traceback" in err:
        problems.append("traceback printed")
    if len(errs) != 1 or not err.strip().splitlines()[-1].startswith("error: "):
        problems.append("expected one 'error:' line, last")
    elif "No space left" not in errs[0] and "disk full" not in errs[0]:
        problems.append(f"error line does not say the disk is full: {errs[0]}")
    if left:
        problems.append(f"left behind: {left}")
    _record(record_property, fuzz_cases.DISK, [{"problems": problems}])
    assert not problems, (problems, err[-1500:])
