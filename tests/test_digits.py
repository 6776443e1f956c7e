"""Tests for striate.datasets.load_digits: the embedded UCI digits, resized and split."""

from __future__ import annotations

import numpy as np
import pytest

from striate.datasets import load_digits
from striate.datasets import digits as digits_mod


def test_shapes_dtypes_ranges():
    (x, y), (xt, yt) = load_digits()
    assert x.shape == (1438, 1, 32, 32) and xt.shape == (359, 1, 32, 32)
    assert x.dtype == xt.dtype == np.float32
    assert y.dtype == yt.dtype == np.int64
    assert x.flags.c_contiguous and xt.flags.c_contiguous
    assert 0.0 == min(x.min(), xt.min()) and max(x.max(), xt.max()) == 1.0
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))


def test_split_is_stratified_and_complete():
    raw_x, raw_y = digits_mod._read_raw()
    (x, y), (xt, yt) = load_digits(size=8)
    per_class = np.bincount(raw_y, minlength=10)
    np.testing.assert_array_equal(np.bincount(y, minlength=10) + np.bincount(yt, minlength=10), per_class)
    np.testing.assert_array_equal(np.bincount(yt, minlength=10), np.round(per_class * 0.2).astype(int))
    # every original image is in exactly one part
    both = np.concatenate([x, xt]).reshape(1797, 64)
    orig = raw_x.astype(np.float32) / 16
    key = lambda a: sorted(map(bytes, np.ascontiguousarray(a)))  # noqa: E731
    assert key(both) == key(orig)


def test_same_split_on_every_call():
    (a, b), (c, d) = load_digits(size=16)
    (a2, b2), (c2, d2) = load_digits(size=16)
    for u, v in ((a, a2), (b, b2), (c, c2), (d, d2)):
        np.testing.assert_array_equal(u, v)
    assert a is not a2  # fresh arrays: callers may modify them
    (_, y8), (_, yt8) = load_digits(size=8)
    np.testing.assert_array_equal(b, y8)
    np.testing.assert_array_equal(d, yt8)


def test_size_8_is_the_original_and_labels_match_the_file():
    raw_x, raw_y = digits_mod._read_raw()
    assert raw_x.shape == (1797, 64) and raw_y.shape == (1797,)
    (x, y), _ = load_digits(size=8)
    train_idx, _ = digits_mod._stratified_split(raw_y)
    np.testing.assert_array_equal(x.reshape(-1, 64), raw_x[train_idx].astype(np.float32) / 16)
    np.testing.assert_array_equal(y, raw_y[train_idx])


def test_bilinear_matrix_hand_computed():
    m = digits_mod.bilinear_matrix(2, 4)
    expected = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)
    for n_out in (3, 8, 13, 32):
        np.testing.assert_allclose(digits_mod.bilinear_matrix(8, n_out).sum(axis=1), 1.0, rtol=1e-15)
    with pytest.raises(ValueError, match="sizes must be positive"):
        digits_mod.bilinear_matrix(0, 4)


def test_upsampling_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    raw_x, raw_y = digits_mod._read_raw()
    train_idx, _ = digits_mod._stratified_split(raw_y)
    src = torch.tensor(raw_x[train_idx].reshape(-1, 1, 8, 8).astype(np.float64) / 16)
    for size in (32, 28, 5):
        (x, _), _ = load_digits(size=size)
        ref = torch.nn.functional.interpolate(src, size=(size, size), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(x, ref.numpy().astype(np.float32), rtol=0, atol=1e-7)


@pytest.mark.parametrize("size, exc", [(0, ValueError), (-3, ValueError), (5000, ValueError), ("32", TypeError),
                                       (True, TypeError), (32.0, TypeError)])
def test_size_is_validated(size, exc):
    with pytest.raises(exc, match="`size`"):
        load_digits(size=size)
