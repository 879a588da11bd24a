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


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (expected a zip archive written by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    kx, ky = (f"x_{split}", f"y_{split}") if f"x_{split}" in arrays else ("x", "y")
    missing = [k for k in (kx, ky) if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: expected arrays 'x' and 'y', missing {missing} (found {sorted(arrays) or 'none'})"
        )
    x, y = arrays[kx], arrays[ky]
    if x.dtype.kind not in "fiub" or x.ndim < 2:
        raise DataError(f"{path}: expected '{kx}' numeric with shape (N, ...), got {x.dtype} {x.shape}")
    if y.ndim != 1 or (y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y)))):
        raise DataError(f"{path}: expected '{ky}' integer labels of shape (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: '{kx}' has {len(x)} samples but '{ky}' has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: '{kx}' contains NaN or Inf")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{path}: '{ky}' has negative labels")
    return x, y


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
