"""Data sets: the two shipped ones (generated locally, never downloaded) and users' ``.npz`` files.

:func:`load_data` returns a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` with ``x`` float32
and ``y`` int64 class labels; the tensors are ``dataset.tensors``. Shapes:

- ``digits``: sklearn's 8x8 digits, ``x`` of shape (N, 1, 8, 8) scaled to [0, 1]; a stratified
  70/30 train/test split with seed 0 (1257 train, 540 test).
- ``mnist1d``: MNIST-1D from the ``mnist1d`` package's ``make_dataset`` with its default
  arguments and seed 42, ``x`` of shape (N, 1, 40); 4000 train, 1000 test.
- a path to an ``.npz`` with arrays ``x`` (numeric, first axis = samples) and ``y`` (integer
  labels). If the file holds ``x_<split>``/``y_<split>`` those are used for that split; otherwise
  the same ``x``/``y`` serve every split.
"""

from __future__ import annotations

import functools
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import DataError, did_you_mean

SPLITS = ("train", "test")
DIGITS_SEED = 0
MNIST1D_SEED = 42


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, random_state=DIGITS_SEED, stratify=y
    )
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = MNIST1D_SEED
    d = make_dataset(args)  # procedural generation, no download
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def _mnist1d(split: str) -> tuple[np.ndarray, np.ndarray]:
    d = _mnist1d_arrays()
    x, y = (d["x"], d["y"]) if split == "train" else (d["x_test"], d["y_test"])
    return x.astype(np.float32)[:, None, :], y.astype(np.int64)


_BUILTIN = {"digits": _digits, "mnist1d": _mnist1d}


def list_datasets() -> list[str]:
    """Names of the shipped data sets."""
    return sorted(_BUILTIN)


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes available) of one array of an .npz, read from its header alone."""
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            shape, _, dtype = np.lib.format._read_array_header(fh, version)
        return tuple(int(d) for d in shape), dtype, info.file_size - fh.tell()


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        if path.is_dir():
            raise DataError(f"{path}: is a directory; expected an .npz file")
        raise DataError(f"data file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (expected a zip archive written by numpy.savez)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            kx, ky = (f"x_{split}", f"y_{split}") if f"x_{split}" in names else ("x", "y")
            missing = [k for k in (kx, ky) if k not in names]
            if missing:
                raise DataError(f"{path}: expected arrays 'x' and 'y', missing {missing} (found {sorted(names) or 'none'})")
            for key in (kx, ky):
                shape, dtype, available = _npy_header(zf, key + ".npy")
                if dtype.hasobject:
                    raise DataError(f"{path}: '{key}' is an object array (a pickle), which hwfault refuses to load")
                need = math.prod(shape) * dtype.itemsize
                if need > available:
                    raise DataError(f"{path}: '{key}' claims shape {shape} of {dtype} ({need:,} bytes) but the file "
                                    f"holds {max(available, 0):,} bytes for it (truncated or corrupt)")
        with np.load(path, allow_pickle=False) as f:
            x, y = f[kx], f[ky]
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e).strip()[:160]})") from None
    if x.dtype.kind not in "fiub" or x.ndim < 2:
        raise DataError(f"{path}: expected '{kx}' numeric with shape (N, ...), got {x.dtype} {x.shape}")
    if y.ndim != 1 or (y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y))
                                                          and np.all(y == np.round(y)))):
        raise DataError(f"{path}: expected '{ky}' integer labels of shape (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: '{kx}' has {len(x)} samples but '{ky}' has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{path}: '{kx}' contains NaN or Inf")
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: '{kx}' has values beyond float32's range")
    if y.dtype.kind == "u" and y.dtype.itemsize >= 8 and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{path}: '{ky}' has labels beyond int64")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{path}: '{ky}' has negative labels")
    return x, y


def has_split(name: str | Path, split: str) -> bool:
    """Whether a data set has its own ``split`` (the shipped sets do; an .npz needs ``x_<split>``)."""
    key = str(name)
    if key in _BUILTIN:
        return True
    path = Path(key)
    try:
        with zipfile.ZipFile(path) as zf:
            return f"x_{split}.npy" in zf.namelist() and f"y_{split}.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_data(name: str | Path, split: str = "test") -> TensorDataset:
    """Load a data set by name (``digits``, ``mnist1d``) or ``.npz`` path; see the module docstring."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}")
    key = str(name)
    if key in _BUILTIN:
        x, y = _BUILTIN[key](split)
    elif key.endswith(".npz") or Path(key).exists():
        x, y = _load_npz(Path(key), split)
    else:
        raise DataError(f"unknown data set '{key}'{did_you_mean(key, _BUILTIN)}; or give a path to an .npz with arrays x and y")
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def data_name(name: str | Path) -> str:
    """A stable label for a data argument (name or file path) used in results."""
    return str(name)
