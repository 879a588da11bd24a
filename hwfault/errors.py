"""One exception hierarchy for everything a user can get wrong.

The CLI turns any :class:`HwfaultError` into a one-line ``error: ...`` message on stderr and exit
code 2; library callers catch the subclasses they care about.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HwfaultError(Exception):
    """Base class: bad input from a user, reported in one line."""

    exit_code = 2


class DataError(HwfaultError):
    """A data set name, file or array that cannot be used."""


class ModelError(HwfaultError):
    """A model name, checkpoint or archive that cannot be loaded or does not fit the data."""


class SelectionError(HwfaultError):
    """A parameter selection (globs, component types, layer positions) that selects nothing or is malformed."""


class ConstraintError(HwfaultError):
    """A perturbation set with invalid parameters (eps, p, n)."""


class SpecError(HwfaultError):
    """A chip specification that fails validation."""


class ExportError(HwfaultError):
    """An export that cannot be done or fails its own parity check."""


class OutputError(HwfaultError):
    """An output path that cannot be written (a directory, under a file, a full disk, a bad suffix)."""


class LimitError(HwfaultError):
    """A request beyond a resource ceiling (trials, memory) that would otherwise allocate without bound."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or a list of choices when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if choices and len(choices) <= 12:
        return f" (choose from: {', '.join(choices)})"
    return ""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]
