"""Boundary checks shared by the library and the CLI: every bad number gets one line, before any work.

Each check names the option as the CLI spells it (``--trials``), says what was expected and what
was given, and raises :class:`~hwfault.errors.ConstraintError` (or :class:`LimitError` past a
resource ceiling). Library callers get the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import ConstraintError, LimitError

#: Most Monte-Carlo draws one analysis may hold results for (sweep random trials, estimate chips,
#: harden report chips, bits runs): each is a full evaluation, so a million is days of work, and
#: a per-trial list of that length is still small.
MAX_TRIALS = 1_000_000
#: Most trials one campaign may plan: trial ids stream lazily, but a plan beyond this would not finish.
MAX_CAMPAIGN_TRIALS = 1_000_000_000
MAX_SEED = 2**63 - 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(name: str, v, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer in [lo, hi] (either bound optional)."""
    if not _is_int(v):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ConstraintError(f"expected {name} as an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ConstraintError(f"expected {name} >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConstraintError(f"expected {name} <= {hi:,}, got {v:,}")
    return v


def trials(name: str, v, *, ceiling: int = MAX_TRIALS) -> int:
    """A count of Monte-Carlo draws: >= 1 and within the ceiling (a one-line LimitError above it)."""
    v = integer(name, v, lo=1)
    if v > ceiling:
        raise LimitError(f"expected {name} <= {ceiling:,}, got {v:,}: each is a full evaluation and "
                         f"their results are kept; run a campaign (hwfault campaign --db) for more")
    return v


def seed(v, name: str = "--seed") -> int:
    """A seed in [0, 2^63 - 1] (numpy's SeedSequence takes no negative entropy)."""
    return integer(name, v, lo=0, hi=MAX_SEED)


def number(name: str, v, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """A finite float within the given bounds (open or closed)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConstraintError(f"expected {name} as a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ConstraintError(f"expected {name} as a finite number, got {v}")
    bad_lo = lo is not None and (x <= lo if lo_open else x < lo)
    bad_hi = hi is not None and (x >= hi if hi_open else x > hi)
    if bad_lo or bad_hi:
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            want = f"{'<' if hi_open else '<='} {hi:g}"
        raise ConstraintError(f"expected {name} {want}, got {v}")
    return x


def positive(name: str, v) -> float:
    """A finite float > 0."""
    return number(name, v, lo=0.0, lo_open=True)


def probability(name: str, v, *, open_: bool = True) -> float:
    """A probability: in (0, 1) by default (coverage, confidence), [0, 1] with ``open_=False``."""
    return number(name, v, lo=0.0, hi=1.0, lo_open=open_, hi_open=open_)


def epsilons(values: Sequence[float], *, allow_zero: bool = True, name: str = "eps") -> list[float]:
    """A non-empty list of finite eps >= 0 (> 0 without ``allow_zero``)."""
    if isinstance(values, (int, float)):
        values = [values]
    eps = []
    for e in values:
        try:
            x = float(e)
        except (TypeError, ValueError):
            raise ConstraintError(f"expected {name} as numbers, got {e!r}") from None
        if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
            raise ConstraintError(f"expected {name} {'>=' if allow_zero else '>'} 0 and finite, got {e}")
        eps.append(x)
    if not eps:
        raise ConstraintError(f"expected at least one {name}")
    return eps


def parse_eps(text: str) -> list[float]:
    """``--eps`` as the CLI takes it: comma-separated numbers, each > 0."""
    vals = []
    for part in str(text).split(","):
        try:
            vals.append(float(part.strip()))
        except ValueError:
            raise ConstraintError(f"expected --eps as comma-separated numbers, got '{part.strip()}'") from None
    return epsilons(vals, allow_zero=False)
