"""Shipped data sets and user .npz files."""

import numpy as np
import pytest
import torch

import hwfault as hw
from hwfault.errors import DataError


def test_digits_split_is_fixed_and_stratified():
    tr, te = hw.load_data("digits", "train"), hw.load_data("digits", "test")
    (xtr, ytr), (xte, yte) = tr.tensors, te.tensors
    assert xtr.shape == (1257, 1, 8, 8) and xte.shape == (540, 1, 8, 8)
    assert xtr.dtype == torch.float32 and yte.dtype == torch.int64
    assert 0 <= float(xte.min()) and float(xte.max()) <= 1
    frac_tr = np.bincount(ytr.numpy()) / len(ytr)
    frac_te = np.bincount(yte.numpy()) / len(yte)
    assert np.abs(frac_tr - frac_te).max() < 0.01
    assert torch.equal(hw.load_data("digits").tensors[0], xte)


def test_mnist1d_is_generated_deterministically():
    x, y = hw.load_data("mnist1d", "test").tensors
    assert x.shape == (1000, 1, 40) and y.shape == (1000,)
    assert hw.load_data("mnist1d", "train").tensors[0].shape == (4000, 1, 40)
    from hwfault.data import _mnist1d_arrays

    _mnist1d_arrays.cache_clear()
    assert torch.equal(hw.load_data("mnist1d", "test").tensors[0], x)


def test_npz_user_data(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.rand(20, 1, 8, 8), y=np.arange(20) % 10)
    x, y = hw.load_data(p).tensors
    assert x.shape == (20, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    q = tmp_path / "s.npz"
    np.savez(q, x_train=np.zeros((5, 3)), y_train=np.zeros(5, int), x_test=np.ones((4, 3)), y_test=np.ones(4, int))
    assert len(hw.load_data(q, "train")) == 5 and len(hw.load_data(q, "test")) == 4


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((3, 2))}, "missing \\['y'\\]"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(4, int)}, "3 samples but 'y' has 4"),
    ({"x": np.zeros((3, 2)), "y": np.full(3, 0.5)}, "integer labels"),
    ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, "numeric"),
    ({"x": np.full((2, 2), np.nan), "y": np.zeros(2, int)}, "NaN"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "negative"),
])
def test_malformed_npz(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match):
        hw.load_data(p)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        hw.load_data(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        hw.load_data(junk)
    with pytest.raises(DataError, match="did you mean 'mnist1d'"):
        hw.load_data("mnist1")
    with pytest.raises(DataError, match="unknown split"):
        hw.load_data("digits", "valid")
