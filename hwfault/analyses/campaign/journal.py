"""The campaign journal: SQLite, one row per trial, committed per chunk.

A journal holds the campaign's identity (model, data, chip, selection, seed, plan) in ``meta`` and the
trials in ``trials``. A chunk of trials is written in one transaction (WAL, synchronous=FULL), so a
process killed at any moment leaves only whole chunks; resuming runs exactly the planned trials that
are missing. Trial results are a pure function of (campaign seed, trial id), so a trial computed twice
(a rescheduled Dask task) writes the same row, and ``INSERT OR IGNORE`` keeps the first.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...errors import HwfaultError

COLUMNS = ("trial", "stratum", "seed", "n_faults", "faults", "accuracy", "loss", "sdc", "sdc_rate",
           "critical_sdc", "due", "duration")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial INTEGER PRIMARY KEY, stratum TEXT NOT NULL, seed INTEGER NOT NULL, n_faults INTEGER NOT NULL,
    faults TEXT NOT NULL, accuracy REAL, loss REAL, sdc INTEGER NOT NULL, sdc_rate REAL NOT NULL,
    critical_sdc INTEGER NOT NULL, due INTEGER NOT NULL, duration REAL NOT NULL
);
"""


class JournalError(HwfaultError):
    """A journal that cannot be opened, or belongs to another campaign."""


_SIDE_FILES = ("-wal", "-shm", "-journal")


def _sqlite_error(path: Path, e: sqlite3.Error, doing: str) -> JournalError:
    """One line for an SQLite failure: a full disk and an unopenable path are not 'not a journal'."""
    text = str(e)
    low = text.lower()
    if "full" in low:
        return JournalError(f"cannot {doing} journal {path}: disk full")
    if "unable to open" in low or "readonly" in low or "read-only" in low or "disk i/o" in low:
        return JournalError(f"cannot {doing} journal {path}: {text}")
    if "not a database" in low or "malformed" in low or "no such table" in low or "no such column" in low:
        return JournalError(f"{path}: not a campaign journal ({text})")
    return JournalError(f"cannot {doing} journal {path}: {text}")


def _essential(identity: dict) -> dict:
    """The part of a campaign identity that decides its rows: the chip spec without its prose
    (description, references, each fault's source), so rewording a preset keeps its journals resumable."""
    out = dict(identity)
    chip = out.get("chip")
    if isinstance(chip, dict):
        chip = {k: v for k, v in chip.items() if k not in ("description", "references")}
        if isinstance(chip.get("faults"), list):
            chip["faults"] = [{k: v for k, v in f.items() if k != "source"} if isinstance(f, dict) else f
                              for f in chip["faults"]]
        out["chip"] = chip
    return out


class Journal:
    """An open campaign journal. ``created`` tells whether opening it created the file."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        memory = str(path) == ":memory:"
        if not memory and self.path.exists() and not self.path.is_file():
            raise JournalError(f"--db {self.path}: is not a regular file")
        self.created = not memory and not readonly and not self.path.exists()
        try:
            if readonly:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
                self.db.execute("SELECT COUNT(*) FROM meta").fetchone()
                self.db.execute("SELECT COUNT(*) FROM trials").fetchone()
                return
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            err = _sqlite_error(self.path, e, "create" if self.created else "open")
            with contextlib.suppress(Exception):
                self.db.close()
            if self.created:
                self._remove_files()
            raise err from None

    def _remove_files(self) -> None:
        for suffix in ("",) + _SIDE_FILES:
            with contextlib.suppress(OSError):
                Path(str(self.path) + suffix).unlink()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def discard(self) -> None:
        """Close and remove a journal this process created (a campaign that failed before any trial)."""
        self.close()
        if self.created:
            self._remove_files()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- identity
    def identity(self) -> dict | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None
        if not row:
            return None
        try:
            ident = json.loads(row[0])
        except (json.JSONDecodeError, TypeError, RecursionError):
            raise JournalError(f"{self.path}: not a campaign journal (its identity is not valid JSON)") from None
        if not isinstance(ident, dict):
            raise JournalError(f"{self.path}: not a campaign journal (its identity is not a JSON object)")
        return ident

    def bind(self, identity: dict, *, resume: bool) -> None:
        """Claim the journal for a campaign: a new journal takes ``identity``; an existing one must hold
        the same identity and ``resume`` must be set."""
        have = self.identity()
        if have is None:
            try:
                with self.db:
                    self.db.execute("INSERT INTO meta VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))
            except sqlite3.Error as e:
                raise _sqlite_error(self.path, e, "write") from None
            return
        want = json.loads(json.dumps(identity, sort_keys=True))
        if _essential(have) != _essential(want):
            diff = sorted(k for k in set(have) | set(want) if _essential(have).get(k) != _essential(want).get(k))
            raise JournalError(f"{self.path} was written for another campaign (differs in: {', '.join(diff)}); "
                               f"use a new --db")
        if not resume and self.count():
            raise JournalError(f"{self.path} already holds {self.count()} trials of this campaign; "
                               f"pass --resume to continue it or use a new --db")

    def set_meta(self, key: str, value) -> None:
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "write") from None

    def meta(self, key: str, default=None):
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0]) if row else default
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None
        except (json.JSONDecodeError, TypeError):
            raise JournalError(f"{self.path}: not a campaign journal (meta '{key}' is not valid JSON)") from None

    # -- trials
    def done_ranges(self) -> list[tuple[int, int]]:
        """The trial ids already in the journal as sorted, merged half-open ranges [a, b): constant
        memory per contiguous run, however many trials a resumed campaign holds."""
        out: list[tuple[int, int]] = []
        try:
            cur = self.db.execute("SELECT trial FROM trials ORDER BY trial")
            while batch := cur.fetchmany(65536):
                for (t,) in batch:
                    if out and out[-1][1] == t:
                        out[-1] = (out[-1][0], t + 1)
                    else:
                        out.append((t, t + 1))
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None
        return out

    def done(self) -> set[int]:
        return {t for a, b in self.done_ranges() for t in range(a, b)}

    def count(self) -> int:
        try:
            return self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None

    def write(self, rows: Iterable[dict]) -> None:
        """Write a chunk of trial rows in one transaction."""
        try:
            with self.db:
                self.db.executemany(f"INSERT OR IGNORE INTO trials ({', '.join(COLUMNS)}) VALUES "
                                    f"({', '.join('?' * len(COLUMNS))})",
                                    [tuple(r[c] for c in COLUMNS) for r in rows])
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "write") from None

    def iter_rows(self, batch: int = 4096) -> Iterator[dict]:
        """The trial rows in trial order, streamed from the database (constant memory)."""
        try:
            cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM trials ORDER BY trial")
            while chunk := cur.fetchmany(batch):
                for r in chunk:
                    yield dict(zip(COLUMNS, r))
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e, "read") from None

    def rows(self) -> list[dict]:
        return list(self.iter_rows())


def open_existing(path: str | Path) -> Journal:
    """Open a journal that must exist (for ``hwfault results``)."""
    p = Path(path)
    if not p.is_file():
        raise JournalError(f"journal not found: {p}" if not p.exists() else f"{p}: is not a regular file")
    j = Journal(p, readonly=True)
    try:
        ident = j.identity()
    except JournalError:
        j.close()
        raise
    if ident is None:
        j.close()
        raise JournalError(f"{p}: not a campaign journal (no campaign identity)")
    return j
