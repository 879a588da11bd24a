"""The campaign journal: SQLite, one row per trial, committed per chunk.

A journal holds the campaign's identity (model, data, chip, selection, seed, plan) in ``meta`` and the
trials in ``trials``. A chunk of trials is written in one transaction (WAL, synchronous=FULL), so a
process killed at any moment leaves only whole chunks; resuming runs exactly the planned trials that
are missing. Trial results are a pure function of (campaign seed, trial id), so a trial computed twice
(a rescheduled Dask task) writes the same row, and ``INSERT OR IGNORE`` keeps the first.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ..errors import HwfaultError

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


class Journal:
    """An open campaign journal."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: not a campaign journal ({e})") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- identity
    def identity(self) -> dict | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        return json.loads(row[0]) if row else None

    def bind(self, identity: dict, *, resume: bool) -> None:
        """Claim the journal for a campaign: a new journal takes ``identity``; an existing one must hold
        the same identity and ``resume`` must be set."""
        have = self.identity()
        if have is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))
            return
        if have != json.loads(json.dumps(identity, sort_keys=True)):
            diff = sorted(k for k in set(have) | set(identity) if have.get(k) != identity.get(k))
            raise JournalError(f"{self.path} was written for another campaign (differs in: {', '.join(diff)}); "
                               f"use a new --db")
        if not resume and self.count():
            raise JournalError(f"{self.path} already holds {self.count()} trials of this campaign; "
                               f"pass --resume to continue it or use a new --db")

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- trials
    def done(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT trial FROM trials")}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    def write(self, rows: Iterable[dict]) -> None:
        """Write a chunk of trial rows in one transaction."""
        with self.db:
            self.db.executemany(f"INSERT OR IGNORE INTO trials ({', '.join(COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(COLUMNS))})",
                                [tuple(r[c] for c in COLUMNS) for r in rows])

    def rows(self) -> list[dict]:
        cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM trials ORDER BY trial")
        return [dict(zip(COLUMNS, r)) for r in cur]


def open_existing(path: str | Path) -> Journal:
    """Open a journal that must exist (for ``hwfault results``)."""
    p = Path(path)
    if not p.is_file():
        raise JournalError(f"journal not found: {p}")
    j = Journal(p)
    if j.identity() is None:
        j.close()
        raise JournalError(f"{p}: not a campaign journal (no campaign identity)")
    return j
