"""Tests of the pooling kernels in striate._core (csrc/pool2d.cpp, csrc/bind_pool.cpp).

The oracle is written here with NumPy sliding windows in float64, independent of
striate.reference; the full grid against the reference lives in
tests/test_functional.py. When PyTorch is importable the kernels are also
compared with torch.nn.functional. Not here: the user-level argument handling
of striate.functional.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from isa_paths import SUPPORTED_ISAS
from numpy.lib.stride_tricks import sliding_window_view

import striate as st
from striate import _core

# ---------------------------------------------------------------------------
# The float64 oracle.


def out_size(n, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size along one axis."""
    eff = d * (k - 1) + 1
    num = n + 2 * p - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _windows(a, fill, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """(N, C, OH, OW, kh*kw) windows of `a` padded with `fill`, plus their (h, w) input positions."""
    n, c, h, w = a.shape
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    extra_h = max(0, (oh - 1) * sh + eh - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + ew - (w + 2 * pw))
    ap = np.pad(a, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=fill)
    win = sliding_window_view(ap, (eh, ew), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]
    win = win[..., ::dh, ::dw].reshape(n, c, oh, ow, kh * kw)
    rows = (np.arange(oh) * sh - ph)[:, None, None, None] + (np.arange(kh) * dh)[None, None, :, None]
    cols = (np.arange(ow) * sw - pw)[None, :, None, None] + (np.arange(kw) * dw)[None, None, None, :]
    rows = np.broadcast_to(rows, (oh, ow, kh, kw)).reshape(oh, ow, kh * kw)
    cols = np.broadcast_to(cols, (oh, ow, kh, kw)).reshape(oh, ow, kh * kw)
    return win, rows, cols


def ref_max(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode):
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    oh = out_size(h, kh, sh, ph, dh, ceil_mode)
    ow = out_size(w, kw, sw, pw, dw, ceil_mode)
    win, rows, cols = _windows(x, -np.inf, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    win = np.where(inside, win, -np.inf)
    isnan = np.isnan(win)
    # The first maximum wins; with NaNs in the window, the last NaN does (as in PyTorch).
    win_nf = np.where(isnan, -np.inf, win)
    best = win_nf.max(axis=-1, keepdims=True)
    first_max = np.argmax((win_nf == best) & inside, axis=-1)
    last_nan = win.shape[-1] - 1 - np.argmax(isnan[..., ::-1], axis=-1)
    pos = np.where(isnan.any(axis=-1), last_nan, first_max)
    y = np.take_along_axis(win, pos[..., None], axis=-1)[..., 0]
    r = np.take_along_axis(np.broadcast_to(rows, win.shape), pos[..., None], axis=-1)[..., 0]
    q = np.take_along_axis(np.broadcast_to(cols, win.shape), pos[..., None], axis=-1)[..., 0]
    return y, r * w + q


def ref_max_backward(dy, idx, h, w):
    n, c = dy.shape[:2]
    dx = np.zeros((n * c, h * w))
    flat_dy = dy.reshape(n * c, -1).astype(np.float64)
    flat_idx = idx.reshape(n * c, -1)
    for p in range(n * c):
        np.add.at(dx[p], flat_idx[p], flat_dy[p])
    return dx.reshape(n, c, h, w)


def _avg_parts(shape, kh, kw, sh, sw, ph, pw, ceil_mode):
    n, c, h, w = shape
    oh = out_size(h, kh, sh, ph, 1, ceil_mode)
    ow = out_size(w, kw, sw, pw, 1, ceil_mode)
    ones = np.ones((1, 1, h, w))
    _, rows, cols = _windows(ones, 0.0, kh, kw, sh, sw, ph, pw, 1, 1, oh, ow)
    real = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    in_padded = (rows >= -ph) & (rows < h + ph) & (cols >= -pw) & (cols < w + pw)
    return oh, ow, rows, cols, real, in_padded


def ref_avg(x, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad):
    x = x.astype(np.float64)
    oh, ow, rows, cols, real, in_padded = _avg_parts(x.shape, kh, kw, sh, sw, ph, pw, ceil_mode)
    win, _, _ = _windows(x, 0.0, kh, kw, sh, sw, ph, pw, 1, 1, oh, ow)
    div = (in_padded if count_include_pad else real).sum(axis=-1)
    return np.where(real, win, 0.0).sum(axis=-1) / div


def ref_avg_backward(dy, h, w, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad):
    n, c = dy.shape[:2]
    oh, ow, rows, cols, real, in_padded = _avg_parts((n, c, h, w), kh, kw, sh, sw, ph, pw, ceil_mode)
    div = (in_padded if count_include_pad else real).sum(axis=-1)
    g = dy.astype(np.float64) / div
    dx = np.zeros((n, c, h * w))
    for i in range(oh):
        for j in range(ow):
            sel = real[i, j]
            flat = rows[i, j][sel] * w + cols[i, j][sel]
            dx[:, :, flat] += g[:, :, i, j][..., None]
    return dx.reshape(n, c, h, w)


def ref_lp(x, p, kh, kw, sh, sw, ceil_mode):
    x = x.astype(np.float64)
    oh, ow, rows, cols, real, _ = _avg_parts(x.shape, kh, kw, sh, sw, 0, 0, ceil_mode)
    win, _, _ = _windows(x, 0.0, kh, kw, sh, sw, 0, 0, 1, 1, oh, ow)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(real, win**p, 0.0).sum(axis=-1) * (kh * kw) / real.sum(axis=-1)
        return np.sign(s) * np.abs(s) ** (1.0 / p) if p == 1 else s ** (1.0 / p)


def ref_lp_backward(dy, x, y, p, kh, kw, sh, sw, ceil_mode):
    n, c, h, w = x.shape
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    oh, ow, rows, cols, real, _ = _avg_parts(x.shape, kh, kw, sh, sw, 0, 0, ceil_mode)
    scale = (kh * kw) / real.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(y == 0, 0.0, dy * y ** (1 - p) * scale)
        xp = x.reshape(n, c, h * w) ** (p - 1)
    dx = np.zeros((n, c, h * w))
    for i in range(oh):
        for j in range(ow):
            flat = rows[i, j][real[i, j]] * w + cols[i, j][real[i, j]]
            dx[:, :, flat] += g[:, :, i, j][..., None] * xp[:, :, flat]
    return dx.reshape(n, c, h, w)


def _adaptive_bounds(i, n_in, n_out):
    return (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)


def ref_adaptive(x, oh, ow):
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        h0, h1 = _adaptive_bounds(i, h, oh)
        for j in range(ow):
            w0, w1 = _adaptive_bounds(j, w, ow)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return y


def ref_adaptive_backward(dy, h, w):
    n, c, oh, ow = dy.shape
    dx = np.zeros((n, c, h, w))
    for i in range(oh):
        h0, h1 = _adaptive_bounds(i, h, oh)
        for j in range(ow):
            w0, w1 = _adaptive_bounds(j, w, ow)
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i, j][..., None, None] / ((h1 - h0) * (w1 - w0))
    return dx


def close(actual, expected, k=1, rtol=1e-5):
    """float32 kernel against the float64 oracle; k is the reduction length."""
    np.testing.assert_allclose(actual, expected, rtol=rtol * math.sqrt(k), atol=1e-6 * math.sqrt(k), equal_nan=True)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Max pooling.

# (shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
MAX_CASES = [
    ((2, 3, 8, 8), 2, 2, 2, 2, 0, 0, 1, 1, False),
    ((2, 3, 9, 7), 2, 2, 2, 2, 0, 0, 1, 1, False),
    ((2, 3, 9, 7), 2, 2, 2, 2, 0, 0, 1, 1, True),
    ((1, 2, 11, 13), 3, 3, 2, 2, 0, 0, 1, 1, False),
    ((1, 2, 11, 13), 3, 3, 2, 2, 1, 1, 1, 1, True),
    ((2, 1, 10, 12), 3, 2, 1, 2, 1, 1, 1, 1, False),
    ((1, 2, 12, 11), 3, 3, 2, 3, 1, 0, 2, 2, True),
    ((1, 1, 9, 10), 2, 3, 3, 2, 1, 1, 3, 2, False),
    ((1, 1, 1, 1), 1, 1, 1, 1, 0, 0, 1, 1, False),
    ((1, 1, 5, 5), 1, 1, 2, 2, 0, 0, 1, 1, True),
    ((3, 1, 5, 6), 5, 6, 1, 1, 2, 3, 1, 1, False),
    ((1, 2, 7, 7), 4, 4, 3, 3, 2, 2, 1, 1, True),
    # widths that exercise the vector paths' tails
    ((2, 2, 6, 70), 2, 2, 2, 2, 0, 0, 1, 1, False),
    ((2, 2, 7, 71), 2, 2, 2, 2, 0, 0, 1, 1, True),
    ((2, 2, 9, 67), 3, 3, 2, 2, 0, 0, 1, 1, False),
    ((2, 2, 9, 68), 3, 3, 2, 2, 0, 0, 1, 1, True),
    ((1, 3, 32, 32), 2, 2, 2, 2, 0, 0, 1, 1, False),
    ((1, 3, 33, 33), 3, 3, 2, 2, 0, 0, 1, 1, False),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_matches_oracle(case, rng, isa):
    shape, *args = case
    x = randn(rng, *shape)
    y, idx = _core.max_pool2d_forward(x, *args)
    ey, eidx = ref_max(x, *args)
    assert y.dtype == np.float32 and idx.dtype == np.int64
    assert y.shape == ey.shape == idx.shape
    np.testing.assert_array_equal(y, ey.astype(np.float32))
    np.testing.assert_array_equal(idx, eidx)
    dy = randn(rng, *y.shape)
    dx = _core.max_pool2d_backward(dy, idx, shape[2], shape[3])
    assert dx.shape == shape and dx.dtype == np.float32
    close(dx, ref_max_backward(dy, idx, shape[2], shape[3]), k=4)


@pytest.mark.parametrize(("kh", "sh", "h"), [(2, 2, 8), (2, 2, 9), (3, 2, 9), (3, 2, 40), (2, 2, 66)])
def test_max_pool_ties_take_first_index(kh, sh, h, isa):
    x = np.ones((2, 2, h, h), np.float32)
    x[:, :, ::3, :] = 0.5  # ties among the remaining ones
    y, idx = _core.max_pool2d_forward(x, kh, kh, sh, sh, 0, 0, 1, 1, False)
    ey, eidx = ref_max(x, kh, kh, sh, sh, 0, 0, 1, 1, False)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(idx, eidx)
    # all-equal planes: every window reports its first element
    z = np.full((1, 1, h, h), -np.inf, np.float32)
    _, idx = _core.max_pool2d_forward(z, kh, kh, sh, sh, 0, 0, 1, 1, False)
    oh = out_size(h, kh, sh, 0, 1, False)
    starts = (np.arange(oh) * sh)[:, None] * h + (np.arange(oh) * sh)[None, :]
    np.testing.assert_array_equal(idx[0, 0], starts)


@pytest.mark.parametrize(("k", "w"), [(2, 8), (2, 70), (3, 9), (3, 71)])
def test_max_pool_nan_propagates(k, w, rng, isa):
    x = randn(rng, 1, 2, w, w)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 5] = np.nan
    x[0, 1, 4, 6] = np.nan  # two NaNs in one window: the later one is reported
    y, idx = _core.max_pool2d_forward(x, k, k, 2, 2, 0, 0, 1, 1, False)
    ey, eidx = ref_max(x, k, k, 2, 2, 0, 0, 1, 1, False)
    np.testing.assert_array_equal(y, ey.astype(np.float32))  # NaN == NaN here
    np.testing.assert_array_equal(idx, eidx)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1 * w + 1
    dx = _core.max_pool2d_backward(np.ones_like(y), idx, w, w)
    assert dx[0, 0, 1, 1] >= 1


def test_max_pool_padding_never_wins():
    x = np.full((1, 1, 3, 3), -5.0, np.float32)
    y, idx = _core.max_pool2d_forward(x, 3, 3, 1, 1, 1, 1, 1, 1, False)
    assert np.all(y == -5.0)
    np.testing.assert_array_equal(idx[0, 0], [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


def test_max_pool_window_of_padding_only():
    """Dilation can leave a window with no input element: -inf and, as in PyTorch, an index past
    the plane, which the backward pass rejects instead of writing out of bounds."""
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    y, idx = _core.max_pool2d_forward(x, 2, 2, 1, 1, 1, 1, 3, 3, False)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf
    assert idx[0, 0, 0, 0] == 6  # torch.nn.functional.max_pool2d gives the same
    with pytest.raises(ValueError, match="`indices`"):
        _core.max_pool2d_backward(np.ones_like(y), idx, 2, 2)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_backward_any_valid_indices(k, rng, isa):
    """Indices need not come from the forward pass: repeats accumulate in output order."""
    h = w = 12
    y, idx = _core.max_pool2d_forward(randn(rng, 2, 3, h, w), k, k, 2, 2, 0, 0, 1, 1, False)
    dy = randn(rng, *y.shape)
    for bad_idx in (np.zeros_like(idx), rng.integers(0, h * w, idx.shape), idx[:, :, ::-1, :].copy()):
        dx = _core.max_pool2d_backward(dy, bad_idx, h, w)
        close(dx, ref_max_backward(dy, bad_idx, h, w), k=idx[0, 0].size)
    # one window in one plane pointing elsewhere
    idx2 = idx.copy()
    idx2[1, 2, 0, 0] = h * w - 1
    dx = _core.max_pool2d_backward(dy, idx2, h, w)
    close(dx, ref_max_backward(dy, idx2, h, w), k=4)


@pytest.mark.parametrize("bad", [-1, 64, 10**12, -(2**63)])
@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_backward_rejects_bad_indices(bad, k, rng):
    y, idx = _core.max_pool2d_forward(randn(rng, 2, 3, 8, 8), k, k, 2, 2, 0, 0, 1, 1, False)
    idx[1, 1, -1, -1] = bad
    with pytest.raises(ValueError, match="`indices`"):
        _core.max_pool2d_backward(np.ones_like(y), idx, 8, 8)
    idx[1, 1, -1, -1] = 0
    idx[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="`indices`"):
        _core.max_pool2d_backward(np.ones_like(y), idx, 8, 8)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.uint64, np.float32])
def test_max_pool_backward_index_dtype_is_type_error(dtype, rng):
    y, idx = _core.max_pool2d_forward(randn(rng, 1, 2, 4, 4), 2, 2, 2, 2, 0, 0, 1, 1, False)
    with pytest.raises(TypeError, match="`indices`"):
        _core.max_pool2d_backward(y, idx.astype(dtype), 4, 4)
    with pytest.raises(TypeError, match="`indices`"):
        _core.max_pool2d_backward(y, np.asfortranarray(np.swapaxes(idx, 2, 3)), 4, 4)


def test_max_pool_backward_shape_errors(rng):
    y, idx = _core.max_pool2d_forward(randn(rng, 1, 2, 4, 4), 2, 2, 2, 2, 0, 0, 1, 1, False)
    with pytest.raises(ValueError, match=r"`indices`.*\(1, 2, 2, 2\).*\(1, 2, 2, 1\)"):
        _core.max_pool2d_backward(y, idx[:, :, :, :1].copy(), 4, 4)
    with pytest.raises(ValueError, match="`dy`"):
        _core.max_pool2d_backward(y[0], idx[0], 4, 4)
    with pytest.raises(ValueError, match="`H`"):
        _core.max_pool2d_backward(y, idx, 0, 4)
    with pytest.raises(ValueError, match="`W`"):
        _core.max_pool2d_backward(y, idx, 4, -1)


# ---------------------------------------------------------------------------
# Average pooling.

# (shape, kh, kw, sh, sw, ph, pw, ceil_mode)
AVG_CASES = [
    ((2, 3, 8, 8), 2, 2, 2, 2, 0, 0, False),
    ((2, 3, 9, 7), 3, 3, 2, 2, 1, 1, True),
    ((2, 3, 9, 7), 3, 3, 2, 2, 1, 1, False),
    ((1, 2, 10, 11), 3, 2, 1, 2, 1, 0, True),
    ((1, 2, 10, 11), 4, 5, 3, 2, 2, 2, True),
    ((1, 1, 1, 1), 1, 1, 1, 1, 0, 0, False),
    ((1, 1, 6, 6), 1, 1, 3, 3, 0, 0, True),
    ((3, 1, 5, 6), 5, 6, 1, 1, 2, 3, False),
    ((1, 2, 7, 7), 4, 4, 3, 3, 2, 2, True),
]


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_matches_oracle(case, count_include_pad, rng, isa):
    shape, *args = case
    x = randn(rng, *shape)
    y = _core.avg_pool2d_forward(x, *args, count_include_pad)
    k = args[0] * args[1]
    close(y, ref_avg(x, *args, count_include_pad), k=k)
    dy = randn(rng, *y.shape)
    dx = _core.avg_pool2d_backward(dy, shape[2], shape[3], *args, count_include_pad)
    assert dx.shape == shape
    close(dx, ref_avg_backward(dy, shape[2], shape[3], *args, count_include_pad), k=k)


def test_avg_pool_backward_dy_shape_checked(rng):
    dy = randn(rng, 1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"`dy`.*\(1, 2, 4, 4\).*\(1, 2, 3, 3\)"):
        _core.avg_pool2d_backward(dy, 8, 8, 2, 2, 2, 2, 0, 0, False, True)
    with pytest.raises(ValueError, match="`H`"):
        _core.avg_pool2d_backward(dy, 0, 8, 2, 2, 2, 2, 0, 0, False, True)


# ---------------------------------------------------------------------------
# Power-average pooling.

LP_CASES = [
    ((2, 3, 8, 8), 2, 2, 2, 2, False),
    ((2, 3, 9, 7), 3, 3, 2, 2, True),
    ((2, 3, 9, 7), 3, 2, 2, 3, False),
    ((1, 2, 10, 11), 4, 3, 3, 2, True),
    ((1, 1, 1, 1), 1, 1, 1, 1, False),
    ((1, 2, 5, 5), 2, 2, 1, 1, True),
]


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 2.5, 0.7])
@pytest.mark.parametrize("case", LP_CASES, ids=str)
def test_lp_pool_matches_oracle(case, p, rng, isa):
    shape, *args = case
    x = rng.uniform(0.1, 2.0, shape).astype(np.float32)
    y = _core.lp_pool2d_forward(x, p, *args)
    k = args[0] * args[1]
    close(y, ref_lp(x, p, *args), k=k, rtol=3e-5)
    dy = randn(rng, *y.shape)
    dx = _core.lp_pool2d_backward(dy, x, y, p, *args)
    close(dx, ref_lp_backward(dy, x, y, p, *args), k=k, rtol=3e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_lp_pool_signed_inputs_and_zero_windows(p, rng):
    x = randn(rng, 2, 2, 7, 7)
    x[0, 0, :2, :2] = 0.0  # an all-zero window: y == 0 and its gradient is 0
    args = (2, 2, 2, 2, True)
    y = _core.lp_pool2d_forward(x, p, *args)
    close(y, ref_lp(x, p, *args), k=4, rtol=3e-5)
    assert y[0, 0, 0, 0] == 0.0
    dy = randn(rng, *y.shape)
    dx = _core.lp_pool2d_backward(dy, x, y, p, *args)
    close(dx, ref_lp_backward(dy, x, y, p, *args), k=4, rtol=3e-5)
    assert np.all(dx[0, 0, :2, :2] == 0.0)


def test_lp_pool_argument_errors(rng):
    x = randn(rng, 1, 2, 6, 6)
    y = _core.lp_pool2d_forward(x, 2.0, 2, 2, 2, 2, False)
    for bad_p in (0.0, math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="`p`"):
            _core.lp_pool2d_forward(x, bad_p, 2, 2, 2, 2, False)
        with pytest.raises(ValueError, match="`p`"):
            _core.lp_pool2d_backward(y, x, y, bad_p, 2, 2, 2, 2, False)
    with pytest.raises(ValueError, match="`y`"):
        _core.lp_pool2d_backward(y, x, y[:, :, :2].copy(), 2.0, 2, 2, 2, 2, False)
    with pytest.raises(ValueError, match="`dy`"):
        _core.lp_pool2d_backward(y[:, :1].copy(), x, y, 2.0, 2, 2, 2, 2, False)
    with pytest.raises(ValueError, match="`x`"):
        _core.lp_pool2d_backward(y, x[0], y, 2.0, 2, 2, 2, 2, False)


# ---------------------------------------------------------------------------
# Adaptive average pooling.


@pytest.mark.parametrize(
    ("hw", "out"), [((8, 8), (4, 4)), ((7, 9), (3, 4)), ((5, 5), (7, 6)), ((1, 1), (1, 1)), ((6, 10), (1, 1))]
)
def test_adaptive_avg_pool_matches_oracle(hw, out, rng, isa):
    x = randn(rng, 2, 3, *hw)
    y = _core.adaptive_avg_pool2d_forward(x, *out)
    assert y.shape == (2, 3, *out)
    k = math.ceil(hw[0] / out[0] + 1) * math.ceil(hw[1] / out[1] + 1)
    close(y, ref_adaptive(x, *out), k=k)
    dy = randn(rng, *y.shape)
    dx = _core.adaptive_avg_pool2d_backward(dy, *hw)
    close(dx, ref_adaptive_backward(dy, *hw), k=k)


def test_adaptive_avg_pool_argument_errors(rng):
    x = randn(rng, 1, 2, 6, 6)
    with pytest.raises(ValueError, match="`oh`"):
        _core.adaptive_avg_pool2d_forward(x, -1, 2)
    with pytest.raises(ValueError, match="`ow`"):
        _core.adaptive_avg_pool2d_forward(x, 2, -3)
    with pytest.raises(ValueError, match="`x`"):
        _core.adaptive_avg_pool2d_forward(x[0], 2, 2)
    with pytest.raises(ValueError, match="`W`"):
        _core.adaptive_avg_pool2d_backward(x, 6, 0)
    with pytest.raises(ValueError, match="`dy`"):
        _core.adaptive_avg_pool2d_backward(x[0], 6, 6)
    assert _core.adaptive_avg_pool2d_forward(x, 0, 2).shape == (1, 2, 0, 2)


# ---------------------------------------------------------------------------
# Every kernel: argument errors, determinism, empty batch, zero dy, fresh outputs.


def _calls(x):
    """One call per windowed kernel on x, taking the window arguments as keywords."""
    return {
        "max": lambda **k: _core.max_pool2d_forward(x, *_args(k, max_=True), False),
        "avg": lambda **k: _core.avg_pool2d_forward(x, *_args(k), False, True),
        "avg_backward": lambda **k: _core.avg_pool2d_backward(
            np.zeros((1, 2, 3, 3), np.float32), 6, 6, *_args(k), False, True
        ),
        "lp": lambda **k: _core.lp_pool2d_forward(x, 2.0, *_args(k, lp=True), False),
    }


def _args(over, max_=False, lp=False):
    a = dict(kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, dh=1, dw=1)
    a.update(over)
    if lp:
        return [a[n] for n in ("kh", "kw", "sh", "sw")]
    names = ("kh", "kw", "sh", "sw", "ph", "pw") + (("dh", "dw") if max_ else ())
    return [a[n] for n in names]


@pytest.mark.parametrize("kind", ["max", "avg", "avg_backward", "lp"])
@pytest.mark.parametrize(
    ("over", "name"),
    [
        ({"kh": 0}, "kh"),
        ({"kw": -1}, "kw"),
        ({"sh": 0}, "sh"),
        ({"sw": -2}, "sw"),
        ({"dh": 0}, "dh"),
        ({"dw": -1}, "dw"),
        ({"ph": 2}, "ph"),
        ({"pw": -1}, "pw"),
        ({"kh": 7}, "height"),
        ({"kw": 9}, "width"),
        ({"kh": 3, "dh": 3}, "height"),
    ],
)
def test_window_argument_errors_name_the_argument(kind, over, name, rng):
    x = randn(rng, 1, 2, 6, 6)
    if kind != "max" and ("dh" in over or "dw" in over) or kind == "lp" and ("ph" in over or "pw" in over):
        pytest.skip("argument not taken by this kernel")
    with pytest.raises(ValueError, match=f"`{name}`" if len(name) == 2 else name):
        _calls(x)[kind](**over)


@pytest.mark.parametrize(
    "bad_x",
    [np.zeros((2, 6, 6), np.float32), np.zeros((1, 0, 6, 6), np.float32), np.zeros((1, 2, 0, 6), np.float32)],
    ids=["ndim3", "C0", "H0"],
)
def test_bad_input_shape_is_value_error(bad_x):
    with pytest.raises(ValueError, match="`x`"):
        _core.max_pool2d_forward(bad_x, 1, 1, 1, 1, 0, 0, 1, 1, False)
    with pytest.raises(ValueError, match="`x`"):
        _core.avg_pool2d_forward(bad_x, 1, 1, 1, 1, 0, 0, False, True)
    with pytest.raises(ValueError, match="`x`"):
        _core.lp_pool2d_forward(bad_x, 2.0, 1, 1, 1, 1, False)
    with pytest.raises(ValueError, match="`x`"):
        _core.adaptive_avg_pool2d_forward(bad_x, 1, 1)


def test_wrong_float_dtype_or_layout_is_type_error():
    x64 = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError):
        _core.max_pool2d_forward(x64, 2, 2, 2, 2, 0, 0, 1, 1, False)
    with pytest.raises(TypeError):
        _core.avg_pool2d_forward(np.zeros((1, 1, 4, 4), np.int32), 2, 2, 2, 2, 0, 0, False, True)
    with pytest.raises(TypeError):
        _core.adaptive_avg_pool2d_forward(np.zeros((1, 1, 4, 8), np.float32)[..., ::2], 2, 2)


def _run_all(x, dy_max, dy3):
    """Forward and backward of every kind on x; max 2x2/2 and 3x3/2, the others 3x3/2 pad 1."""
    h, w = x.shape[2:]
    out = {}
    for k in (2, 3):
        y, idx = _core.max_pool2d_forward(x, k, k, 2, 2, 0, 0, 1, 1, False)
        out[f"max{k}"] = (y, idx, _core.max_pool2d_backward(dy_max[k], idx, h, w))
    y = _core.max_pool2d_forward(x, 3, 3, 2, 2, 1, 1, 1, 1, True)
    out["max_pad"] = (*y, _core.max_pool2d_backward(dy3, y[1], h, w))
    out["avg"] = (
        _core.avg_pool2d_forward(x, 3, 3, 2, 2, 1, 1, True, False),
        _core.avg_pool2d_backward(dy3, h, w, 3, 3, 2, 2, 1, 1, True, False),
    )
    xa = np.abs(x)
    y = _core.lp_pool2d_forward(xa, 3.0, 3, 3, 2, 2, True)
    dy_lp = dy3[:, :, : y.shape[2], : y.shape[3]].copy()
    out["lp"] = (y, _core.lp_pool2d_backward(dy_lp, xa, y, 3.0, 3, 3, 2, 2, True))
    out["adaptive"] = (
        _core.adaptive_avg_pool2d_forward(x, 7, 5),
        _core.adaptive_avg_pool2d_backward(dy3[:, :, :7, :5].copy(), h, w),
    )
    return out


def _shapes_for(x):
    h, w = x.shape[2:]
    n, c = x.shape[:2]
    dy_max = {k: (n, c, out_size(h, k, 2, 0, 1, False), out_size(w, k, 2, 0, 1, False)) for k in (2, 3)}
    dy3 = (n, c, out_size(h, 3, 2, 1, 1, True), out_size(w, 3, 2, 1, 1, True))
    return dy_max, dy3


def test_bitwise_identical_for_any_thread_count(rng, isa):
    x = randn(rng, 4, 16, 33, 40)  # large enough for the kernels to use every thread
    dy_max, dy3 = _shapes_for(x)
    dy_max = {k: randn(rng, *s) for k, s in dy_max.items()}
    dy3 = randn(rng, *dy3)
    results = []
    for t in (1, 2, 3, 8):
        st.set_num_threads(t)
        results.append(_run_all(x, dy_max, dy3))
        again = _run_all(x, dy_max, dy3)
        for key in again:
            for a, b in zip(results[-1][key], again[key]):
                assert a.tobytes() == b.tobytes(), f"{key}: second run differs at {t} threads"
    for r in results[1:]:
        for key in r:
            for a, b in zip(results[0][key], r[key]):
                assert a.tobytes() == b.tobytes(), key


def test_empty_batch(rng):
    x = np.zeros((0, 3, 9, 9), np.float32)
    dy_max, dy3 = _shapes_for(x)
    out = _run_all(x, {k: np.zeros(s, np.float32) for k, s in dy_max.items()}, np.zeros(dy3, np.float32))
    assert out["max2"][0].shape == (0, 3, 4, 4) and out["max2"][1].dtype == np.int64
    assert out["max2"][2].shape == (0, 3, 9, 9)
    assert out["avg"][0].shape == dy3
    assert out["avg"][1].shape == (0, 3, 9, 9)
    assert out["lp"][1].shape == (0, 3, 9, 9)
    assert out["adaptive"][0].shape == (0, 3, 7, 5)
    assert out["adaptive"][1].shape == (0, 3, 9, 9)


def test_zero_dy_gives_zero_dx_and_outputs_are_fresh(rng, isa):
    x = randn(rng, 2, 3, 13, 36)
    dy_max, dy3 = _shapes_for(x)
    zeros = {k: np.zeros(s, np.float32) for k, s in dy_max.items()}
    dz = np.zeros(dy3, np.float32)
    out = _run_all(x, zeros, dz)
    for key in ("max2", "max3", "max_pad"):
        dx = out[key][2]
        assert dx.shape == x.shape
        assert np.all(dx == 0) and not np.signbit(dx).any(), key
    for key in ("avg", "lp", "adaptive"):
        assert np.all(out[key][1] == 0), key
    for key, arrays in out.items():
        for a in arrays:
            assert a.flags.c_contiguous and a.flags.owndata, key
            for src in (x, dz, *zeros.values()):
                assert not np.shares_memory(a, src), key


def test_negative_zero_gradient_is_positive_zero(rng, isa):
    y, idx = _core.max_pool2d_forward(randn(rng, 1, 2, 8, 32), 2, 2, 2, 2, 0, 0, 1, 1, False)
    dx = _core.max_pool2d_backward(np.full_like(y, -0.0), idx, 8, 32)
    assert np.all(dx == 0) and not np.signbit(dx).any()


def test_kernels_release_the_gil_and_agree_across_python_threads(rng):
    from concurrent.futures import ThreadPoolExecutor

    x = randn(rng, 4, 8, 32, 32)
    y0, i0 = _core.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
    d0 = _core.max_pool2d_backward(y0, i0, 32, 32)

    def job(_):
        y, i = _core.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
        return y.tobytes() + i.tobytes() + _core.max_pool2d_backward(y, i, 32, 32).tobytes()

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(job, range(16)))
    assert all(r == y0.tobytes() + i0.tobytes() + d0.tobytes() for r in results)


# ---------------------------------------------------------------------------
# Against torch.nn.functional, when it is installed.

TORCH_MAX = MAX_CASES + [
    ((2, 3, 16, 16), 3, 3, 1, 1, 1, 1, 1, 1, True),
    ((2, 3, 15, 17), 2, 3, 2, 1, 1, 1, 2, 1, False),
]


@pytest.mark.parametrize("case", TORCH_MAX, ids=str)
def test_max_pool_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode = case
    x = randn(rng, *shape)
    x[0, 0, 0, : shape[3] // 2] = np.nan
    y, idx = _core.max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    xt = torch.from_numpy(x).requires_grad_()
    ty, tidx = F.max_pool2d(xt, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    dy = randn(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(_core.max_pool2d_backward(dy, idx, *shape[2:]), xt.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_matches_torch(case, count_include_pad, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, kh, kw, sh, sw, ph, pw, ceil_mode = case
    x = randn(rng, *shape)
    y = _core.avg_pool2d_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)
    xt = torch.from_numpy(x).requires_grad_()
    ty = F.avg_pool2d(xt, (kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = randn(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    dx = _core.avg_pool2d_backward(dy, *shape[2:], kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1, 2, 3, 1.5])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize(
    ("shape", "k", "s"),
    [((2, 3, 9, 7), (3, 3), (2, 2)), ((2, 2, 10, 11), (2, 3), (2, 2)), ((1, 2, 7, 8), (4, 3), (3, 2)), ((1, 1, 5, 5), (2, 2), (1, 1))],
)
def test_lp_pool_matches_torch(shape, k, s, ceil_mode, p, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = randn(rng, *shape)
    if p not in (1, 2):
        x = np.abs(x) + 0.05
    x[0, 0, :4, :4] = 0.0  # zero windows: y == 0 and zero gradient
    y = _core.lp_pool2d_forward(x, float(p), *k, *s, ceil_mode)
    xt = torch.from_numpy(x).requires_grad_()
    ty = F.lp_pool2d(xt, p, k, s, ceil_mode)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=3e-5, atol=1e-6)
    dy = randn(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    dx = _core.lp_pool2d_backward(dy, x, y, float(p), *k, *s, ceil_mode)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("hw", "out"), [((8, 8), (4, 4)), ((7, 9), (3, 4)), ((5, 5), (7, 6)), ((10, 6), (1, 1))])
def test_adaptive_avg_pool_matches_torch(hw, out, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = randn(rng, 2, 3, *hw)
    y = _core.adaptive_avg_pool2d_forward(x, *out)
    xt = torch.from_numpy(x).requires_grad_()
    ty = F.adaptive_avg_pool2d(xt, out)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = randn(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(_core.adaptive_avg_pool2d_backward(dy, *hw), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# The vector kernels (AVX-512, AVX2) against the portable code: same bits.


@pytest.fixture
def isa_levels():
    """The ISA paths this CPU offers, narrowest (generic) first; the global guard restores the path."""
    return list(SUPPORTED_ISAS)


def _tricky(rng, shape):
    """Random values with ties, NaNs and infinities sprinkled in."""
    x = rng.integers(-3, 4, shape).astype(np.float32)  # many ties
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)
    flat[picks[0::3]] = np.nan
    flat[picks[1::3]] = -np.inf
    flat[picks[2::3]] = np.inf
    return x


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("hw", [(3, 3), (4, 5), (6, 33), (7, 34), (5, 64), (9, 65), (8, 66), (3, 97), (14, 14),
                                (15, 15), (28, 28), (10, 10)])
def test_max_pool_vector_paths_match_portable(hw, k, ceil_mode, isa_levels, rng):
    x = _tricky(rng, (2, 3, *hw))
    h, w = hw
    results = []
    for level in isa_levels:
        st.set_isa(level)
        y, idx = _core.max_pool2d_forward(x, k, k, 2, 2, 0, 0, 1, 1, ceil_mode)
        dy = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
        dy.reshape(-1)[::5] = -0.0
        dx = _core.max_pool2d_backward(dy, idx, h, w)
        results.append((y, idx, dx))
    ey, eidx = ref_max(x, k, k, 2, 2, 0, 0, 1, 1, ceil_mode)
    np.testing.assert_array_equal(results[0][0], ey.astype(np.float32))
    np.testing.assert_array_equal(results[0][1], eidx)
    close(results[0][2], ref_max_backward(dy, eidx, h, w), k=4)
    for level, r in zip(isa_levels[1:], results[1:]):
        for a, b in zip(results[0], r):
            assert a.tobytes() == b.tobytes(), f"level {level} differs from generic"


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("hw", [(3, 3), (4, 5), (7, 34), (9, 65), (8, 66), (3, 97), (14, 14), (15, 15), (28, 28),
                                (10, 10)])
def test_avg_pool_vector_paths_match_portable(hw, k, ceil_mode, count_include_pad, isa_levels, rng):
    x = randn(rng, 2, 3, *hw)
    x.reshape(-1)[::7] = -0.0
    args = (k, k, 2, 2, 0, 0, ceil_mode, count_include_pad)
    h, w = hw
    results = []
    for level in isa_levels:
        st.set_isa(level)
        y = _core.avg_pool2d_forward(x, *args)
        dy = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
        dy.reshape(-1)[::5] = -0.0
        results.append((y, _core.avg_pool2d_backward(dy, h, w, *args)))
    close(results[0][0], ref_avg(x, *args), k=k * k)
    close(results[0][1], ref_avg_backward(dy, h, w, *args), k=k * k)
    for level, r in zip(isa_levels[1:], results[1:]):
        for a, b in zip(results[0], r):
            assert a.tobytes() == b.tobytes(), f"level {level} differs from generic"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_max_pool_backward_block_fallback(where, isa_levels, rng):
    """An index outside its 2x2 block (but inside the plane) anywhere still scatters correctly."""
    h, w = 10, 38
    x = randn(rng, 2, 2, h, w)
    y, idx = _core.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
    pos = {"first": (0, 0, 0, 0), "middle": (1, 0, 2, 9), "last": (1, 1, 4, 18)}[where]
    idx[pos] = 0
    dy = randn(rng, *y.shape)
    expected = ref_max_backward(dy, idx, h, w)
    for level in isa_levels:
        st.set_isa(level)
        close(_core.max_pool2d_backward(dy, idx, h, w), expected, k=4)
        bad = idx.copy()
        bad[pos] = h * w
        with pytest.raises(ValueError, match="`indices`"):
            _core.max_pool2d_backward(dy, bad, h, w)


# ---------------------------------------------------------------------------
# Generated geometries: valid ones match the oracle, invalid ones raise cleanly.


@hs.composite
def pool_geometry(draw):
    h, w = draw(hs.integers(1, 12)), draw(hs.integers(1, 12))
    kh, kw = draw(hs.integers(-1, 5)), draw(hs.integers(-1, 5))
    sh, sw = draw(hs.integers(-1, 4)), draw(hs.integers(-1, 4))
    ph, pw = draw(hs.integers(-1, 3)), draw(hs.integers(-1, 3))
    dh, dw = draw(hs.integers(0, 3)), draw(hs.integers(0, 3))
    return (h, w, kh, kw, sh, sw, ph, pw, dh, dw, draw(hs.booleans()), draw(hs.booleans()))


def _valid(h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    if min(kh, kw, sh, sw, dh, dw) <= 0 or not (0 <= ph <= kh // 2 and 0 <= pw <= kw // 2):
        return False
    return dh * (kh - 1) + 1 <= h + 2 * ph and dw * (kw - 1) + 1 <= w + 2 * pw


@settings(max_examples=150, deadline=None)
@given(geom=pool_geometry(), seed=hs.integers(0, 2**16))
def test_generated_geometries(geom, seed):
    h, w, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, cip = geom
    rng = np.random.default_rng(seed)
    x = randn(rng, 2, 3, h, w)
    margs = (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    if not _valid(h, w, kh, kw, sh, sw, ph, pw, dh, dw):
        with pytest.raises(ValueError):
            _core.max_pool2d_forward(x, *margs)
        return
    y, idx = _core.max_pool2d_forward(x, *margs)
    ey, eidx = ref_max(x, *margs)
    np.testing.assert_array_equal(y, ey.astype(np.float32))
    if np.isfinite(ey).all():  # windows holding only padding report an index past the plane
        np.testing.assert_array_equal(idx, eidx)
        dy = randn(rng, *y.shape)
        close(_core.max_pool2d_backward(dy, idx, h, w), ref_max_backward(dy, idx, h, w), k=kh * kw)
    if _valid(h, w, kh, kw, sh, sw, ph, pw, 1, 1):
        aargs = (kh, kw, sh, sw, ph, pw, ceil_mode, cip)
        ya = _core.avg_pool2d_forward(x, *aargs)
        close(ya, ref_avg(x, *aargs), k=kh * kw)
        dy = randn(rng, *ya.shape)
        close(_core.avg_pool2d_backward(dy, h, w, *aargs), ref_avg_backward(dy, h, w, *aargs), k=kh * kw)
    if _valid(h, w, kh, kw, sh, sw, 0, 0, 1, 1):
        xa = np.abs(x) + 0.1
        yl = _core.lp_pool2d_forward(xa, 2.0, kh, kw, sh, sw, ceil_mode)
        close(yl, ref_lp(xa, 2.0, kh, kw, sh, sw, ceil_mode), k=kh * kw, rtol=3e-5)
