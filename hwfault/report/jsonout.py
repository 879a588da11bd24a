"""Files for programs: strict JSON (written atomically), CSV and Parquet trial rows (streamed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import HwfaultError
from ..files import atomic_write


def _clean(obj):
    """Replace non-finite floats by None so the JSON is strict (RFC 8259)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(obj: dict, path: str | Path) -> None:
    """Write strict JSON to ``path`` atomically (``-`` = stdout)."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    atomic_write(path, lambda t: t.write_text(text), what="--json")


def write_csv(rows, path: str | Path) -> None:
    """Trial rows (any iterable of dicts, e.g. a journal cursor) as CSV, streamed to disk (``-`` = stdout)."""
    import csv

    def write(stream) -> None:
        w = None
        for r in rows:
            if w is None:
                w = csv.DictWriter(stream, fieldnames=list(r))
                w.writeheader()
            w.writerow(r)

    if str(path) == "-":
        write(sys.stdout)
        return

    def to_file(t: Path) -> None:
        with open(t, "w", newline="", encoding="utf-8") as f:
            write(f)

    atomic_write(path, to_file, what="--csv")


def write_parquet(rows, path: str | Path, batch: int = 65536) -> None:
    """Trial rows (any iterable of dicts) as Parquet, written in row groups of ``batch`` rows."""
    import itertools

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HwfaultError("--parquet needs the pyarrow package (pip install pyarrow)") from None

    def to_file(t: Path) -> None:
        it = iter(rows)
        writer = None
        try:
            while chunk := list(itertools.islice(it, batch)):
                table = pa.Table.from_pylist(chunk)
                if writer is None:
                    writer = pq.ParquetWriter(str(t), table.schema)
                writer.write_table(table.cast(writer.schema))
            if writer is None:
                pq.write_table(pa.table({}), str(t))
        finally:
            if writer is not None:
                writer.close()

    atomic_write(path, to_file, what="--parquet")
