"""Progress reporting: quiet for library callers, a rich bar on stderr when the CLI switches it on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_enabled = False


def enable(on: bool = True) -> None:
    """Show progress bars on stderr for long-running analyses (the CLI does this)."""
    global _enabled
    _enabled = on


_active = None  # the live bar display while one is shown; nested tasks add their rows to it


@contextlib.contextmanager
def task(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, total=None, description=None)`` (``total``: a new total, for work that grows
    as it goes; ``description``: a new label, e.g. the stage a multi-part run is in); draws a bar
    with rate and ETA while progress is enabled. A task started inside another one gets
    its own row under it (one live display), and the row goes when the task ends."""
    global _active
    if not _enabled or total <= 0:
        yield lambda n=1, total=None, description=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    outer = _active is None
    bar = _active or Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=True)
    if outer:
        bar.start()
        _active = bar
    tid = bar.add_task(description, total=total)

    def advance(n: int = 1, total: int | None = None, description: str | None = None) -> None:
        if total is not None or description is not None:
            bar.update(tid, **{k: v for k, v in (("total", total), ("description", description)) if v is not None})
        bar.advance(tid, n)

    try:
        yield advance
    finally:
        bar.remove_task(tid)
        if outer:
            bar.stop()
            _active = None
