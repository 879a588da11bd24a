"""Runs fuzz cases in one process with a hard memory ceiling, and writes one verdict per case.

    python tests/fuzz/runner.py --ids IDS.json --out RESULTS.json [--memory-gb 6] [--timeout 120]

The address-space limit (RLIMIT_AS) turns any unbounded allocation into a MemoryError, which the
CLI reports as an internal error (exit code 1): a wrong exit code, so the case fails instead of the
machine swapping. Each case runs in a fresh directory through ``hwfault.cli.main`` (or one Python
call), with stdout and stderr captured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import sqlite3
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


class CaseTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def builders(marker: str, cache: Path) -> dict:
    """Every artifact builder, with payloads pointing at ``marker``."""
    import artifacts

    out = {}
    for name, fn in artifacts.data_builders(marker).items():
        out[f"data:{name}"] = fn
    for group in (artifacts.pt2_builders(marker, cache), artifacts.safetensors_builders(),
                  artifacts.onnx_builders(cache), artifacts.pickle_builders(marker),
                  artifacts.other_model_builders()):
        for name, fn in group.items():
            out[f"model:{name}"] = fn
    return out


def case_names() -> tuple[list[str], list[str]]:
    """The names of the data and model artifacts (what the cases are generated from)."""
    import artifacts

    table = builders("marker", Path("."))
    return ([k.split(":", 1)[1] for k in table if k.startswith("data:")],
            [k.split(":", 1)[1] for k in table if k.startswith("model:")])


def _special(spec: str, d: Path) -> str | None:
    """Builders spelled in the case: file:NAME, dir:NAME, symlink:NAME, text:NAME:CONTENT, journal:KIND."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        (d / rest).write_text("a file\n")
        return rest
    if kind == "dir":
        (d / rest).mkdir()
        return rest
    if kind == "symlink":
        os.symlink("real.json", d / rest)
        return rest
    if kind == "server":  # a TCP server that answers anything with garbage (a bogus Dask scheduler)
        import socket
        import threading

        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)

        def serve():
            srv.settimeout(60)
            try:
                while True:
                    conn, _ = srv.accept()
                    with contextlib.suppress(OSError):
                        conn.sendall(b"\xff" * 64 if rest == "garbage" else b"HTTP/1.0 200 OK\r\n\r\nhello")
                        conn.close()
            except OSError:
                pass

        threading.Thread(target=serve, daemon=True).start()
        (d / "scheduler.txt").write_text(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
        return "scheduler.txt"
    if kind == "npz":
        import numpy as np

        rng = np.random.default_rng(0)
        np.savez(d / "valid.npz", x=rng.random((24, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 24))
        return "valid.npz"
    if kind == "text":
        name, _, content = rest.partition(":")
        (d / name).write_text(content)
        return name
    if kind == "journal":
        db = sqlite3.connect(d / "j.sqlite")
        if rest == "foreign":
            db.execute("CREATE TABLE people (name TEXT)")
        else:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE trials (trial INTEGER PRIMARY KEY, stratum TEXT NOT NULL, seed INTEGER NOT NULL, "
                       "n_faults INTEGER NOT NULL, faults TEXT NOT NULL, accuracy REAL, loss REAL, sdc INTEGER NOT NULL, "
                       "sdc_rate REAL NOT NULL, critical_sdc INTEGER NOT NULL, due INTEGER NOT NULL, duration REAL NOT NULL)")
            ident = "{not json" if rest == "badjson" else json.dumps({"model": "digits-mlp", "plan": {}})
            db.execute("INSERT INTO meta VALUES ('identity', ?)", (ident,))
            if rest == "good":
                db.execute("INSERT INTO trials VALUES (0, 'all', 1, 1, 'fc1.weight[0]', 0.9, 0.3, 1, 0.01, 0, 0, 0.01)")
        db.commit()
        db.close()
        return "j.sqlite"
    return None


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() or p.is_symlink()} | \
           {str(p.relative_to(d)) + "/" for p in d.rglob("*") if p.is_dir() and not p.is_symlink()}


def run_case(case, root: Path, cache: Path, timeout: float) -> dict:
    from hwfault.cli import main

    d = root / case.id.replace("/", "__")
    d.mkdir(parents=True)
    marker = root / f"PWNED-{case.id.replace('/', '__')}"
    cwd = os.getcwd()
    os.chdir(d)
    verdict = {"id": case.id, "category": case.category, "problems": []}
    t0 = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    code = None
    try:
        target = None
        for spec in (case.builder.split("+") if case.builder else []):
            made = _special(spec, d)
            if made is None:
                made = builders(str(marker), cache)[spec](d)
            target = made if target is None else target
        before = _files(d)
        argv = [a.replace("{file}", str(d / target) if target else "").replace("{dir}", str(d)) for a in case.argv]
        if target == "scheduler.txt":
            argv = [a.replace(str(d / target), (d / target).read_text()) for a in argv]
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(timeout))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if case.api == "load_model":
                    import hwfault as hw
                    from hwfault.errors import HwfaultError

                    try:
                        hw.load_model(d / target)
                        code = 0
                    except HwfaultError as e:
                        print(f"error: {e}", file=sys.stderr)
                        code = 2
                else:
                    code = main(argv)
        finally:
            signal.alarm(0)
    except CaseTimeout:
        verdict["problems"].append(f"timed out after {timeout:g} s")
    except BaseException as e:  # anything escaping main is a traceback the user would see
        verdict["problems"].append(f"escaped: {type(e).__name__}: {e}")
        err.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
    stderr, stdout = err.getvalue(), out.getvalue()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code is not None and code != case.code:
        verdict["problems"].append(f"exit code {code}, expected {case.code}")
    if "Traceback" in stderr or "Traceback" in stdout:
        verdict["problems"].append("traceback printed")
    if case.code == 2 and code == 2:
        errs = [ln for ln in lines if ln.startswith("error: ")]
        if case.extra.get("preamble"):
            if len(errs) != 1 or lines[-1] != errs[0]:
                verdict["problems"].append("expected the 'error:' line last and only once")
        elif len(lines) != 1 or len(errs) != 1:
            verdict["problems"].append(f"expected one 'error:' line, got {len(lines)} lines")
        elif case.needle and case.needle not in errs[0]:
            verdict["problems"].append(f"error line lacks '{case.needle}'")
    if marker.exists():
        verdict["problems"].append("PAYLOAD EXECUTED")
        marker.unlink()
    after = _files(d) if d.exists() else set()
    left = sorted(f for f in after - before if f not in case.outputs)
    if left:
        verdict["problems"].append(f"left behind: {left[:5]}")
    missing = [f for f in case.outputs if f not in after]
    if missing:
        verdict["problems"].append(f"outputs missing: {missing}")
    if case.id.endswith("json-through-a-symlink") and not (d / "link.json").is_symlink():
        verdict["problems"].append("the symlink was replaced by a regular file")
    verdict.update(code=code, seconds=round(time.perf_counter() - t0, 3),
                   stderr=stderr[-600:] if verdict["problems"] else (lines[-1] if lines else ""))
    return verdict


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--memory-gb", type=float, default=6.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()
    lim = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    import cases as cases_mod

    import artifacts

    root = Path(args.root)
    cache = root / "_cache"
    cache.mkdir(parents=True, exist_ok=True)
    by_id = {c.id: c for c in cases_mod.all_cases(*case_names())}
    ids = json.loads(Path(args.ids).read_text())
    results = []
    for i in ids:
        print(f"== {i}", flush=True)
        results.append(run_case(by_id[i], root, cache, args.timeout))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out).write_text(json.dumps({"results": results, "peak_rss": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
