"""Data sets: the shipped ones (generated locally, never downloaded) and users' files.

:func:`load_data` returns a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` (the tensors are
``dataset.tensors``) for the shipped sets and ``.npz`` files, and a lazily read
:class:`~hwfault.arrays.ArrayDataset` for ``.npy`` files and shard directories. Inputs are float32,
or int64 for a task that feeds token ids (``lm``); targets are int64 labels or token ids, or float32
for ``regression``. What the targets must be is the task's (:mod:`hwfault.tasks`). Shapes:

- ``digits``: sklearn's 8x8 digits, ``x`` of shape (N, 1, 8, 8) scaled to [0, 1]; a stratified
  70/30 train/test split with seed 0 (1257 train, 540 test).
- ``mnist1d``: MNIST-1D from the ``mnist1d`` package's ``make_dataset`` with its default
  arguments and seed 42, ``x`` of shape (N, 1, 40); 4000 train, 1000 test.
- a path to an ``.npz`` with arrays ``x`` (numeric, first axis = samples) and ``y`` (integer
  labels). If the file holds ``x_<split>``/``y_<split>`` those are used for that split; otherwise
  the same ``x``/``y`` serve every split. Only the split's arrays are read.
- ``pycode`` (task ``lm``): the shipped Python standard-library corpus (:mod:`hwfault.text`) as
  64-character windows, ``x`` and next characters ``y`` of shape (N, 64), int64.
- a ``.npy`` file ``x*.npy`` (targets in ``y*.npy`` beside it) or a directory holding
  ``x[_<split>].npy``/``y[_<split>].npy`` or ``.npz`` shards (``<split>*.npz`` when present), read a
  batch (a shard) at a time.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .arrays import check_header, has_split_dir, npy_header, npz_keys, open_arrays
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


def _pycode(split: str) -> tuple[np.ndarray, np.ndarray]:
    from .text import text_arrays

    return text_arrays(split)


_BUILTIN = {"digits": _digits, "mnist1d": _mnist1d, "pycode": _pycode}
DATA_TASKS = {"pycode": "lm"}  # the shipped sets that are not classification


def list_datasets() -> list[str]:
    """Names of the shipped data sets."""
    return sorted(_BUILTIN)


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes available) of one array of an .npz, read from its header alone."""
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        shape, dtype, _ = npy_header(fh)
        return shape, dtype, info.file_size - fh.tell()


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (expected a zip archive written by numpy.savez)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            kx, ky = npz_keys(path, names, split)
            for key in (kx, ky):
                check_header(str(path), key, *_npy_header(zf, key + ".npy"))
        with np.load(path, allow_pickle=False) as f:
            x, y = f[kx], f[ky]
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e).strip()[:160]})") from None
    return x, y, kx, ky


def _check_arrays(where: str, x: np.ndarray, y: np.ndarray, kx: str, ky: str, task) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert in-memory arrays for ``task``: inputs float32 (integers stay int64 for a
    task that feeds token ids), targets int64 or float32."""
    if x.dtype.kind not in "fiub" or x.ndim < 2 and not task.integer_inputs or x.ndim < 1:
        raise DataError(f"{where}: expected '{kx}' numeric with shape (N, ...), got {x.dtype} {x.shape}")
    if y.ndim < 1 or y.dtype.kind not in "fiub":
        raise DataError(f"{where}: expected '{ky}' numeric targets with samples on the first axis, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: '{kx}' has {len(x)} samples but '{ky}' has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{where}: no samples")
    if y.dtype.kind == "u" and y.dtype.itemsize >= 8 and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{where}: '{ky}' has labels beyond int64")
    if task.name == "classification" and y.dtype.kind == "f" and y.ndim == 1 and bool(np.all(np.isfinite(y))) \
            and bool(np.all(y == np.round(y))):
        y = y.astype(np.int64)  # integral float labels
    task.check_data(x, y, where)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{where}: '{kx}' contains NaN or Inf")
    if x.dtype.kind in "iu" and task.integer_inputs:
        x = x.astype(np.int64)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{where}: '{kx}' has values beyond float32's range")
    y = y.astype(np.int64) if y.dtype.kind in "iub" else y.astype(np.float32)
    return x, y


def has_split(name: str | Path, split: str) -> bool:
    """Whether a data set has its own ``split`` (the shipped sets do; an .npz needs ``x_<split>``, a
    directory ``x_<split>*.npy`` files or ``<split>*`` shards)."""
    key = str(name)
    if key in _BUILTIN:
        return True
    path = Path(key)
    if path.is_dir() or path.suffix == ".npy":
        return has_split_dir(path, split)
    try:
        with zipfile.ZipFile(path) as zf:
            return f"x_{split}.npy" in zf.namelist() and f"y_{split}.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_data(name: str | Path, split: str = "test", *, task=None):
    """Load a data set by name (``digits``, ``mnist1d``, ``pycode``), an ``.npz`` path (read into a
    TensorDataset), or a ``.npy`` file or directory of shards (an :class:`~hwfault.arrays.ArrayDataset`
    read lazily); see the module docstring. ``task`` (default: the current task, i.e. classification)
    decides what the targets must be."""
    from .tasks import get_task

    t = get_task(DATA_TASKS.get(str(name)) if task is None and str(name) in DATA_TASKS else task)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}")
    key = str(name)
    if key in _BUILTIN:
        x, y = _BUILTIN[key](split)
        x, y = _check_arrays(key, x, y, "x", "y", t)
    else:
        path = Path(key)
        if path.is_dir() and path.suffix == ".npz":
            raise DataError(f"{path}: is a directory; expected an .npz file (a directory of shards is not named .npz)")
        if path.is_dir() or path.suffix == ".npy":
            if not path.exists():
                raise DataError(f"data file not found: {path}")
            ds = open_arrays(path, split)
            px, py = ds.probes()
            t.check_data(px, py, key)
            return ds
        if key.endswith(".npz") or path.exists():
            x, y, kx, ky = _load_npz(path, split)
            x, y = _check_arrays(key, x, y, kx, ky, t)
        else:
            raise DataError(f"unknown data set '{key}'{did_you_mean(key, _BUILTIN)}; or give a path to an .npz "
                            f"with arrays x and y, a .npy file or a directory of shards")
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def data_name(name: str | Path) -> str:
    """A stable label for a data argument (name or file path) used in results."""
    return str(name)
