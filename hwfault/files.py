"""Writing results: checked before the work, written atomically, never over what the target is not.

Every file hwfault writes (JSON, figures, reports, CSV/Parquet, checkpoints, ONNX) goes through
:func:`atomic_write`:

- a regular file (or a missing path) is replaced atomically: the bytes go to a temporary file in the
  same directory, which is renamed over the target only once it is complete, so a crash, a full disk
  or a signal leaves either the old file or the new one, never a torn one;
- a symbolic link is followed: the file it points to is replaced and the link stays a link;
- a character device, FIFO or socket (``/dev/stdout``, ``/dev/null``, a named pipe) is written
  through in place; it is never replaced by a regular file;
- a directory, or a path under an existing file, is a one-line :class:`~hwfault.errors.OutputError`.

:func:`check_output` runs the same checks (and the suffix check of a figure or report) before an
analysis starts, so a bad ``--json``/``--plot``/``--out`` costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import OutputError

STDOUT = "-"


def _resolve(path: Path) -> Path:
    """The path a write lands on: symbolic links followed (also dangling ones), the rest as given."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _special(path: Path) -> bool:
    """True for a device, FIFO or socket: written through, never replaced."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_output(path: str | Path | None, *, what: str = "output", suffixes: Iterable[str] | None = None,
                 allow_stdout: bool = False) -> Path | None:
    """Check an output path before any work: ``None`` passes; ``-`` passes where stdout is allowed;
    otherwise the target must not be a directory, no ancestor may be a non-directory, and with
    ``suffixes`` the name must end in one of them. Returns the path (``None`` for stdout/None)."""
    if path is None:
        return None
    if str(path) == STDOUT:
        if allow_stdout:
            return None
        raise OutputError(f"{what}: expected a file path, got '-' (this output cannot go to stdout)")
    p = Path(path)
    if not str(path).strip():
        raise OutputError(f"{what}: expected a file path, got an empty string")
    target = _resolve(p)
    if target.is_dir():
        raise OutputError(f"{what} {p}: is a directory; expected a file path")
    for anc in target.parents:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(f"{what} {p}: '{anc}' is a file, not a directory")
            break
    if suffixes is not None and not _special(target):
        allowed = tuple(s.lower() for s in suffixes)
        if p.suffix.lower() not in allowed:
            raise OutputError(f"{what} {p}: expected a file name ending in {', '.join(allowed)}, "
                              f"got '{p.suffix or p.name}'")
    return p


def atomic_write(path: str | Path, write: Callable[[Path], None], *, what: str = "output") -> Path:
    """Write a file with ``write(tmp_path)`` and move it into place (see the module docstring).

    ``write`` receives the path to write to: a temporary sibling of the target, or the target itself
    when it is a device, FIFO or socket. Any ``OSError`` becomes one line naming the path; the
    temporary file never survives, whatever ``write`` raises."""
    p = check_output(path, what=what)
    target = _resolve(p)
    if _special(target):
        try:
            write(target)
        except OSError as e:
            raise OutputError(f"cannot write {p}: {_why(e)}") from None
        return p
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    ok = False
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot write {p}: cannot create its directory ({_why(e)})") from None
        try:
            write(tmp)
            with contextlib.suppress(OSError):  # keep the mode of the file being replaced
                os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
            os.replace(tmp, target)
            ok = True
        except OSError as e:
            raise OutputError(f"cannot write {p}: {_why(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()
        if not ok:  # folders made for a file that never came: gone again (deepest first, only if empty)
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
    return p


def write_text(path: str | Path, text: str, *, what: str = "output") -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"), what=what)


def write_bytes(path: str | Path, data: bytes, *, what: str = "output") -> Path:
    """:func:`atomic_write` of a binary file."""
    return atomic_write(path, lambda t: t.write_bytes(data), what=what)


FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp", ".svgz")
REPORT_SUFFIXES = (".html", ".htm", ".md")
