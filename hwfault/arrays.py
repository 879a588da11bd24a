"""Data that need not fit in memory: ``.npy`` files memory-mapped a batch at a time, and directories of
``.npy``/``.npz`` shards read one shard at a time.

:class:`ArrayDataset` is a map-style ``Dataset`` of ``(x, y)`` over such sources; ``batch(a, b)``
gives rows ``a..b`` as tensors. A ``.npy`` batch is read through a memory map of just its rows, which
is dropped afterwards, so a pass over the data keeps only one batch resident. Array headers are
checked against the bytes behind them before anything is read (a header claiming 10^12 rows costs
nothing); object arrays (pickles) are refused.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError


def npy_header(fh) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) from an open .npy stream positioned at its start."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        shape, fortran, dtype = np.lib.format._read_array_header(fh, version)
    return tuple(int(d) for d in shape), dtype, bool(fortran)


def check_header(where: str, key: str, shape, dtype: np.dtype, available: int) -> None:
    """Refuse an object array (a pickle) and a header that claims more bytes than the file holds."""
    if dtype.hasobject:
        raise DataError(f"{where}: '{key}' is an object array (a pickle), which hwfault refuses to load")
    need = math.prod(shape) * dtype.itemsize
    if need > available:
        raise DataError(f"{where}: '{key}' claims shape {tuple(shape)} of {dtype} ({need:,} bytes) but the file "
                        f"holds {max(available, 0):,} bytes for it (truncated or corrupt)")


def npz_keys(where, names: set[str], split: str) -> tuple[str, str]:
    """The (x, y) array names of an .npz for ``split``: ``x_<split>``/``y_<split>`` if present, else ``x``/``y``."""
    kx, ky = (f"x_{split}", f"y_{split}") if f"x_{split}" in names else ("x", "y")
    missing = [k for k in (kx, ky) if k not in names]
    if missing:
        raise DataError(f"{where}: expected arrays 'x' and 'y', missing {missing} (found {sorted(names) or 'none'})")
    return kx, ky


def _check(where: str, key: str, shape, dtype: np.dtype, available: int) -> None:
    check_header(where, key, shape, dtype, available)
    if dtype.kind not in "fiub" or not shape:
        raise DataError(f"{where}: '{key}' must be a numeric array with samples on its first axis, got {dtype} {tuple(shape)}")


class NpySource:
    """One ``.npy`` file, read a window of rows at a time through a memory map."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        try:
            with open(path, "rb") as fh:
                self.shape, self.dtype, fortran = npy_header(fh)
                self.offset = fh.tell()
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy file ({type(e).__name__}: {str(e).strip()[:160]})") from None
        _check(str(path), key, self.shape, self.dtype, path.stat().st_size - self.offset)
        if fortran and len(self.shape) > 1:
            raise DataError(f"{path}: Fortran-ordered arrays cannot be read by rows; save it C-ordered (np.ascontiguousarray)")
        self.row = math.prod(self.shape[1:]) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, a: int, b: int) -> np.ndarray:
        a, b = max(a, 0), min(b, self.shape[0])
        if b <= a or self.row == 0:
            return np.zeros((max(b - a, 0), *self.shape[1:]), self.dtype)
        m = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + a * self.row,
                      shape=(b - a, *self.shape[1:]))
        out = np.array(m)  # a copy; the map (and its resident pages) goes with ``m``
        del m
        return out

    def probe(self) -> np.ndarray:
        """A zero-cost stand-in with this source's shape and dtype (for shape/dtype checks)."""
        return np.lib.stride_tricks.as_strided(np.zeros(1, self.dtype), self.shape, (0,) * len(self.shape))


class NpzSource:
    """One array of one ``.npz`` shard; the shard's array is read whole when first touched."""

    _cache: dict = {}

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(key + ".npy")
                with zf.open(info) as fh:
                    self.shape, self.dtype, _ = npy_header(fh)
                    available = info.file_size - fh.tell()
        except KeyError:
            raise DataError(f"{path}: no array '{key}'") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e).strip()[:160]})") from None
        _check(str(path), key, self.shape, self.dtype, available)

    def __len__(self) -> int:
        return self.shape[0]

    def _array(self) -> np.ndarray:
        k = (str(self.path), self.key)
        if k not in NpzSource._cache:
            NpzSource._cache.clear()  # one shard array at a time
            with np.load(self.path, allow_pickle=False) as f:
                NpzSource._cache[k] = f[self.key]
        return NpzSource._cache[k]

    def read(self, a: int, b: int) -> np.ndarray:
        return np.array(self._array()[a:b])

    def probe(self) -> np.ndarray:
        return np.lib.stride_tricks.as_strided(np.zeros(1, self.dtype), self.shape, (0,) * len(self.shape))


def _tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    elif a.dtype.kind in "iu":
        a = a.astype(np.int64, copy=False)
    elif a.dtype.kind == "b":
        a = a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


class ArrayDataset(Dataset):
    """``(x, y)`` rows over one or more (x, y) array sources, read lazily. Inputs come back as float32
    or int64 (integer arrays stay integer), targets as int64 or float32."""

    def __init__(self, parts: list[tuple], label: str):
        if not parts:
            raise DataError(f"{label}: no arrays")
        self.parts, self.label = parts, label
        for x, y in parts:
            if len(x) != len(y):
                raise DataError(f"{x.path}: '{x.key}' has {len(x)} samples but '{y.key}' has {len(y)}")
            if x.shape[1:] != parts[0][0].shape[1:] or y.shape[1:] != parts[0][1].shape[1:]:
                raise DataError(f"{x.path}: shard shapes {x.shape}/{y.shape} differ from the first shard's "
                                f"{parts[0][0].shape}/{parts[0][1].shape}")
        self.starts = np.cumsum([0] + [len(x) for x, _ in parts])
        if self.starts[-1] == 0:
            raise DataError(f"{label}: no samples")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"ArrayDataset({self.label!r}, {len(self)} samples in {len(self.parts)} part(s))"

    def batch(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for k, (x, y) in enumerate(self.parts):
            lo, hi = int(self.starts[k]), int(self.starts[k + 1])
            i, j = max(a, lo), min(b, hi)
            if i < j:
                xs.append(x.read(i - lo, j - lo))
                ys.append(y.read(i - lo, j - lo))
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        y = np.concatenate(ys) if len(ys) > 1 else ys[0]
        return _tensor(x), _tensor(y)

    def __getitem__(self, i: int):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        x, y = self.batch(i, i + 1)
        return x[0], y[0]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything, in memory (for the analyses that need all of it at once)."""
        return self.batch(0, len(self))

    def probes(self) -> tuple[np.ndarray, np.ndarray]:
        """Zero-cost stand-ins for the whole x and y (shapes and dtypes of the concatenation)."""
        x0, y0 = self.parts[0]
        n = len(self)
        return (np.lib.stride_tricks.as_strided(np.zeros(1, x0.dtype), (n, *x0.shape[1:]), (0,) * len(x0.shape)),
                np.lib.stride_tricks.as_strided(np.zeros(1, y0.dtype), (n, *y0.shape[1:]), (0,) * len(y0.shape)))


def _pairs_in(folder: Path, split: str) -> list[tuple]:
    """(x, y) sources of a directory: ``x[_<split>].npy``/``y...`` pairs, or ``.npz`` shards in name order
    (those named ``<split>*`` when there are any)."""
    npys = sorted(p for p in folder.iterdir() if p.suffix == ".npy" and p.name.startswith("x"))
    mine = [p for p in npys if p.name.startswith(f"x_{split}")]
    npys = mine or [p for p in npys if not any(p.name.startswith(f"x_{s}") for s in ("train", "test"))]
    parts = []
    for xp in npys:
        yp = xp.with_name("y" + xp.name[1:])
        if not yp.is_file():
            raise DataError(f"{xp}: no matching targets file {yp.name}")
        parts.append((NpySource(xp, xp.stem), NpySource(yp, yp.stem)))
    if parts:
        return parts
    shards = sorted(p for p in folder.iterdir() if p.suffix == ".npz")
    shards = [p for p in shards if p.name.startswith(split)] or [
        p for p in shards if not any(p.name.startswith(s) for s in ("train", "test"))]
    for sp in shards:
        try:
            with zipfile.ZipFile(sp) as zf:
                names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{sp}: not a readable .npz file ({type(e).__name__})") from None
        kx, ky = npz_keys(sp, names, split)
        parts.append((NpzSource(sp, kx), NpzSource(sp, ky)))
    if not parts:
        raise DataError(f"{folder}: no data: expected x.npy/y.npy (or x_{split}.npy/y_{split}.npy) or .npz shards")
    return parts


def open_arrays(path: Path, split: str) -> ArrayDataset:
    """An ArrayDataset from a ``.npy`` file (its targets: the same name with ``y`` for the leading
    ``x``) or a directory (see :func:`_pairs_in`)."""
    if path.is_dir():
        return ArrayDataset(_pairs_in(path, split), str(path))
    if not path.name.startswith("x"):
        raise DataError(f"{path}: a .npy data file holds the inputs and is named x*.npy (targets in y*.npy beside it)")
    yp = path.with_name("y" + path.name[1:])
    if not yp.is_file():
        raise DataError(f"{path}: no matching targets file {yp.name} beside it")
    return ArrayDataset([(NpySource(path, path.stem), NpySource(yp, yp.stem))], str(path))


def has_split_dir(path: Path, split: str) -> bool:
    if path.is_dir():
        return any(p.name.startswith((f"x_{split}", split)) for p in path.iterdir())
    return path.name.startswith(f"x_{split}")
