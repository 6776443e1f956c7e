"""striate.reference: the pure-NumPy oracle for every convolution and pooling op.

Same signatures and semantics as ``striate.functional`` (and therefore as
``torch.nn.functional``): output sizes, "same"/"valid" padding (even kernels
pad ``total // 2`` at the top/left and the rest at the bottom/right),
``ceil_mode``, ``count_include_pad``, max-pool indices as flat ``h * W + w``
offsets into each input plane, the first maximum winning ties, NaN
propagating, and ``lp_pool2d``'s ``kh * kw / count`` scaling. It computes in
the dtype of its inputs and works in float32 and float64; the tests run it in
float64 as the ground truth, the benchmarks in float32 as the baseline.

The code is vectorised but deliberately plain: convolution is im2col (a
strided window view copied into per-image columns) followed by a batched
matmul (one GEMM per image and group), and col2im is a loop over the
``kh * kw`` kernel offsets, never over pixels.
Not here: argument dispatching to C++, threads, workspace reuse, or any
cleverness that would make it harder to trust.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _args

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "linear",
    "linear_backward",
    "lp_pool2d",
    "lp_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
]


def _arr(a, name, ndim=None):
    return _args.array(a, name, float32=False, ndim=ndim)


# --------------------------------------------------------------------------- shared window helpers


def _pad(x, top, bottom, left, right, value=0.0):
    """``x`` (N, C, H, W) padded with ``value``; a fresh array even without padding."""
    N, C, H, W = x.shape
    xp = np.full((N, C, H + top + bottom, W + left + right), value, dtype=x.dtype)
    xp[:, :, top : top + H, left : left + W] = x
    return xp


def _windows(xp, kh, kw, sh, sw, dh, dw, OH, OW):
    """Read-only view (N, C, OH, OW, kh, kw) of the (dilated, strided) windows of padded ``xp``."""
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    v = sliding_window_view(xp, (eff_h, eff_w), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :OH, :OW]


def _offsets(kh, kw, sh, sw, dh, dw, OH, OW):
    """For each kernel offset (i, j): the slices of the padded input it touches for every output."""
    for i in range(kh):
        hs = slice(i * dh, i * dh + sh * (OH - 1) + 1, sh)
        for j in range(kw):
            yield i, j, hs, slice(j * dw, j * dw + sw * (OW - 1) + 1, sw)


def _pool_padding(s):
    """Bottom/right padding so that every (ceil_mode) window lies inside the padded array."""
    need_h = (s.OH - 1) * s.sh + s.dh * (s.kh - 1) + 1
    need_w = (s.OW - 1) * s.sw + s.dw * (s.kw - 1) + 1
    return max(s.ph, need_h - s.H - s.ph), max(s.pw, need_w - s.W - s.pw)


def _window_extent(n_out, n_in, k, stride, pad):
    """Per output position along one axis: (size including padding, count of real inputs).

    PyTorch's avg-pool rule: the window [start, start + k) is clipped to the
    padded extent [-pad, n_in + pad) for the padded size, and to [0, n_in)
    for the count of real elements.
    """
    start = np.arange(n_out, dtype=np.int64) * stride - pad
    end = np.minimum(start + k, n_in + pad)
    size = end - start
    count = np.minimum(end, n_in) - np.maximum(start, 0)
    return size, count


# --------------------------------------------------------------------------- convolution


def _im2col(x, s):
    """Columns (N, groups, C/groups * kh * kw, OH * OW) of ``x`` for conv geometry ``s``."""
    xp = _pad(x, s.pt, s.pb, s.pl, s.pr)
    win = _windows(xp, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.OH, s.OW)  # (N, C, OH, OW, kh, kw)
    cols = win.transpose(0, 1, 4, 5, 2, 3)  # (N, C, kh, kw, OH, OW)
    return cols.reshape(s.N, s.groups, (s.C // s.groups) * s.kh * s.kw, s.OH * s.OW)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, ``torch.nn.functional.conv2d`` semantics.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (K, C // groups, kh, kw)
    bias : ndarray, shape (K,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), "same" or "valid"
        "same" needs stride 1; an even total pad puts ``total // 2`` on the
        top/left and the rest on the bottom/right, as PyTorch does.
    groups : int

    Returns
    -------
    y : ndarray, shape (N, K, OH, OW)

    Examples
    --------
    >>> import numpy as np
    >>> from striate import reference as R
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> R.conv2d(x, np.ones((1, 1, 2, 2)))[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
    x = _arr(x, "x", 4)
    weight = _arr(weight, "weight", 4)
    if bias is not None:
        bias = _arr(bias, "bias")
    s = _args.conv_spec(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation, groups)
    w = weight.reshape(s.groups, s.K // s.groups, -1)
    y = np.matmul(w, _im2col(x, s)).reshape(s.y_shape)  # one GEMM per image and group
    if bias is not None:
        y += bias.reshape(1, s.K, 1, 1)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, needs=("x", "weight", "bias")):
    """Gradients of :func:`conv2d` with respect to ``x``, ``weight`` and ``bias``.

    Parameters
    ----------
    dy : ndarray, shape (N, K, OH, OW)
        Gradient of the loss with respect to the conv output.
    x, weight, stride, padding, dilation, groups
        As passed to :func:`conv2d`.
    needs : collection of {"x", "weight", "bias"}
        Which gradients to compute; the others are returned as None.

    Returns
    -------
    dx, dweight, dbias : ndarray or None
        Shapes of ``x``, ``weight`` and ``(K,)``.
    """
    dy = _arr(dy, "dy", 4)
    x = _arr(x, "x", 4)
    weight = _arr(weight, "weight", 4)
    need = _args.needs_set(needs)
    s = _args.conv_spec(x.shape, weight.shape, None, stride, padding, dilation, groups)
    _args.same_shape(dy, s.y_shape, "dy", f"the output shape for `x` {x.shape} and `weight` {weight.shape}")
    dy3 = dy.reshape(s.N, s.groups, s.K // s.groups, s.OH * s.OW)
    dx = dw = db = None
    if "weight" in need:
        # per-image products, then the batch sum in a fixed order
        dw = np.matmul(dy3, _im2col(x, s).transpose(0, 1, 3, 2)).sum(axis=0).reshape(weight.shape)
    if "bias" in need:
        db = dy.sum(axis=(0, 2, 3))
    if "x" in need:
        w = weight.reshape(s.groups, s.K // s.groups, -1)
        dcols = np.matmul(w.transpose(0, 2, 1), dy3).reshape(s.N, s.C, s.kh, s.kw, s.OH, s.OW)
        dtype = np.result_type(dy, weight)
        dxp = np.zeros((s.N, s.C, s.H + s.pt + s.pb, s.W + s.pl + s.pr), dtype=dtype)
        for i, j, hs, ws in _offsets(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.OH, s.OW):
            dxp[:, :, hs, ws] += dcols[:, :, i, j]
        dx = np.ascontiguousarray(dxp[:, :, s.pt : s.pt + s.H, s.pl : s.pl + s.W])
    return dx, dw, db


# --------------------------------------------------------------------------- max pooling


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling with argmax indices, ``torch.nn.functional.max_pool2d(return_indices=True)``.

    Padding positions never win. Ties go to the first maximum in row-major
    window order; a NaN in the window makes the output NaN and its index that
    NaN's position (the last NaN when there are several, as PyTorch's CPU kernel).

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    indices : ndarray of int64, same shape
        Flat index ``h * W + w`` into each input (H, W) plane.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import reference as R
    >>> y, idx = R.max_pool2d(np.array([[[[1.0, 3.0], [3.0, 2.0]]]]), 2)
    >>> float(y[0, 0, 0, 0]), int(idx[0, 0, 0, 0])
    (3.0, 1)
    """
    x = _arr(x, "x", 4)
    s = _args.pool_spec(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    bottom, right = _pool_padding(s)
    xp = _pad(x, s.ph, bottom, s.pw, right, value=-np.inf)
    h0 = np.arange(s.OH, dtype=np.int64) * s.sh - s.ph  # top row of each window (may be padding)
    w0 = np.arange(s.OW, dtype=np.int64) * s.sw - s.pw
    offsets = list(_offsets(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.OH, s.OW))

    def position(i, j):  # flat input index of kernel offset (i, j) for every output, (OH, OW)
        return (h0 + i * s.dh)[:, None] * s.W + (w0 + j * s.dw)[None, :]

    # The values: the running maximum; np.maximum propagates NaN, padding (-inf) never raises it.
    y = xp[:, :, offsets[0][2], offsets[0][3]].copy()
    for _, _, hs, ws in offsets[1:]:
        np.maximum(y, xp[:, :, hs, ws], out=y)
    # The indices follow PyTorch's scan (start at -inf with the window's first real
    # position; an element replaces the running max when greater, or when NaN):
    # the first position equal to the maximum (scanning backwards, earlier ones overwrite) ...
    indices = np.zeros(s.y_shape, dtype=np.int64)
    for i, j, hs, ws in reversed(offsets):
        indices = np.where(xp[:, :, hs, ws] == y, position(i, j), indices)
    # ... the last NaN when there is one ...
    if np.isnan(y).any():
        for i, j, hs, ws in offsets:
            indices = np.where(np.isnan(xp[:, :, hs, ws]), position(i, j), indices)
    # ... and the first real position when every real value is -inf (never padding).
    all_ninf = y == -np.inf
    if all_ninf.any():
        first_h = h0 + (-(np.minimum(h0, 0) // s.dh)) * s.dh
        first_w = w0 + (-(np.minimum(w0, 0) // s.dw)) * s.dw
        indices = np.where(all_ninf, first_h[:, None] * s.W + first_w[None, :], indices)
    return y, indices


def max_pool2d_backward(dy, indices, x_shape):
    """Gradient of :func:`max_pool2d`: ``dy`` scattered (summed) into ``x_shape`` through ``indices``.

    Parameters
    ----------
    dy : ndarray, shape (N, C, OH, OW)
    indices : ndarray of int64, shape (N, C, OH, OW), from :func:`max_pool2d`
    x_shape : tuple of 4 ints, the shape of the pooled input

    Returns
    -------
    dx : ndarray, shape ``x_shape``
    """
    dy = _arr(dy, "dy", 4)
    N, C, H, W = _args.shape4(x_shape, "x_shape")
    if dy.shape[:2] != (N, C):
        raise ValueError(f"`dy` shape {dy.shape} does not match `x_shape` {(N, C, H, W)} in (N, C)")
    indices = _args.index_array(indices, "indices", dy.shape, H * W)
    planes = (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1)
    # bincount sums in float64, in index order, whatever the input dtype
    dx = np.bincount((indices + planes).ravel(), weights=dy.ravel(), minlength=N * C * H * W)
    return dx.astype(dy.dtype, copy=False).reshape(N, C, H, W)


# --------------------------------------------------------------------------- average pooling


def _avg_divisor(s, count_include_pad):
    size_h, count_h = _window_extent(s.OH, s.H, s.kh, s.sh, s.ph)
    size_w, count_w = _window_extent(s.OW, s.W, s.kw, s.sw, s.pw)
    if count_include_pad:
        return np.outer(size_h, size_w)
    return np.outer(count_h, count_w)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling, ``torch.nn.functional.avg_pool2d`` semantics.

    With ``count_include_pad`` the divisor counts padded positions but not the
    ``ceil_mode`` overhang beyond the padded edge; without it, only real inputs.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    x = _arr(x, "x", 4)
    count_include_pad = _args.flag(count_include_pad, "count_include_pad")
    s = _args.pool_spec(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    bottom, right = _pool_padding(s)
    acc = _window_sum(_pad(x, s.ph, bottom, s.pw, right), s)
    acc /= _avg_divisor(s, count_include_pad).astype(x.dtype)
    return acc


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Returns
    -------
    dx : ndarray, shape ``x_shape``
    """
    dy = _arr(dy, "dy", 4)
    x_shape = _args.shape4(x_shape, "x_shape")
    count_include_pad = _args.flag(count_include_pad, "count_include_pad")
    s = _args.pool_spec(x_shape, kernel_size, stride, padding, 1, ceil_mode)
    _args.same_shape(dy, s.y_shape, "dy", f"the pooled shape of `x_shape` {x_shape}")
    g = dy / _avg_divisor(s, count_include_pad).astype(dy.dtype)
    return _scatter_windows(g, s)


def _window_sum(xp, s):
    """Sum of padded ``xp`` over every window of pool geometry ``s``: (N, C, OH, OW)."""
    acc = np.zeros(s.y_shape, dtype=xp.dtype)
    for _, _, hs, ws in _offsets(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.OH, s.OW):
        acc += xp[:, :, hs, ws]
    return acc


def _scatter_windows(g, s):
    """Sum of ``g`` (N, C, OH, OW) over every window that covers each input position."""
    bottom, right = _pool_padding(s)
    dxp = np.zeros((s.N, s.C, s.H + s.ph + bottom, s.W + s.pw + right), dtype=g.dtype)
    for _, _, hs, ws in _offsets(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.OH, s.OW):
        dxp[:, :, hs, ws] += g
    return np.ascontiguousarray(dxp[:, :, s.ph : s.ph + s.H, s.pw : s.pw + s.W])


# --------------------------------------------------------------------------- power-average pooling


def _lp_scale(s):
    """PyTorch's factor kh*kw / (real elements in the window); 1 except for clipped ceil_mode windows."""
    _, count_h = _window_extent(s.OH, s.H, s.kh, s.sh, 0)
    _, count_w = _window_extent(s.OW, s.W, s.kw, s.sw, 0)
    return (s.kh * s.kw) / np.outer(count_h, count_w)


def lp_pool2d(x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Power-average pooling, ``torch.nn.functional.lp_pool2d`` semantics.

    ``y = (avg_pool2d(x ** p, kernel_size, stride, 0, ceil_mode) * kh * kw) ** (1 / p)``:
    the window sum of ``x ** p``, rescaled by ``kh * kw / count`` for windows that
    ``ceil_mode`` clips at the edge. A negative sum (odd ``p``) gives NaN, as in PyTorch.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    x = _arr(x, "x", 4)
    p = _args.norm_type(norm_type)
    s = _args.pool_spec(x.shape, kernel_size, stride, 0, 1, ceil_mode, pad_rule=False)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bottom, right = _pool_padding(s)
        acc = _window_sum(_pad(np.power(x, x.dtype.type(p)), 0, bottom, 0, right), s)
        acc *= _lp_scale(s).astype(x.dtype)
        return np.power(acc, x.dtype.type(1.0 / p))


def lp_pool2d_backward(dy, x, y, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Gradient of :func:`lp_pool2d`.

    ``dx = sum over windows of dy * y ** (1 - p) * scale * x ** (p - 1)``, with
    ``scale = kh * kw / count``; outputs where ``y == 0`` pass no gradient.

    Parameters
    ----------
    dy : ndarray, shape (N, C, OH, OW)
    x : ndarray, shape (N, C, H, W), the forward input
    y : ndarray, shape (N, C, OH, OW), the forward output
    """
    dy = _arr(dy, "dy", 4)
    x = _arr(x, "x", 4)
    y = _arr(y, "y", 4)
    p = _args.norm_type(norm_type)
    s = _args.pool_spec(x.shape, kernel_size, stride, 0, 1, ceil_mode, pad_rule=False)
    _args.same_shape(dy, s.y_shape, "dy", f"the pooled shape of `x` {x.shape}")
    _args.same_shape(y, s.y_shape, "y", f"the pooled shape of `x` {x.shape}")
    dtype = np.result_type(dy, x, y)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = np.where(y != 0, dy * np.power(y, dtype.type(1.0 - p)) * _lp_scale(s).astype(dtype), dtype.type(0))
        return _scatter_windows(g.astype(dtype, copy=False), s) * np.power(x, dtype.type(p - 1.0))


# --------------------------------------------------------------------------- adaptive average pooling


def _adaptive_matrix(n_in, n_out, dtype):
    """(n_out, n_in) averaging matrix: row i is 1/len over [floor(i*n/o), ceil((i+1)*n/o))."""
    i = np.arange(n_out, dtype=np.int64)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    j = np.arange(n_in, dtype=np.int64)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling, ``torch.nn.functional.adaptive_avg_pool2d`` semantics.

    Output ``(i, j)`` averages rows ``[floor(i*H/OH), ceil((i+1)*H/OH))`` and the
    matching columns. ``output_size`` is an int or a pair; a None entry keeps that size.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
    """
    x = _arr(x, "x", 4)
    oh, ow = _args.adaptive_size(x.shape, output_size)
    ah = _adaptive_matrix(x.shape[2], oh, x.dtype)
    aw = _adaptive_matrix(x.shape[3], ow, x.dtype)
    return np.ascontiguousarray(np.matmul(np.matmul(ah, x), aw.T))


def adaptive_avg_pool2d_backward(dy, x_shape, output_size):
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    Returns
    -------
    dx : ndarray, shape ``x_shape``
    """
    dy = _arr(dy, "dy", 4)
    x_shape = _args.shape4(x_shape, "x_shape")
    oh, ow = _args.adaptive_size(x_shape, output_size)
    _args.same_shape(dy, x_shape[:2] + (oh, ow), "dy", f"the pooled shape of `x_shape` {x_shape}")
    ah = _adaptive_matrix(x_shape[2], oh, dy.dtype)
    aw = _adaptive_matrix(x_shape[3], ow, dy.dtype)
    return np.ascontiguousarray(np.matmul(np.matmul(ah.T, dy), aw))


# --------------------------------------------------------------------------- fully connected


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias`` for ``x`` (N, in) and ``weight`` (out, in)."""
    x = _arr(x, "x", 2)
    weight = _arr(weight, "weight", 2)
    _args.linear_check(x.shape, weight.shape, None if bias is None else np.shape(bias))
    y = x @ weight.T
    if bias is not None:
        y += _arr(bias, "bias", 1)
    return y


def linear_backward(dy, x, weight, needs=("x", "weight", "bias")):
    """Gradients of :func:`linear`: ``(dy @ weight, dy.T @ x, dy.sum(0))``, None where not needed."""
    dy = _arr(dy, "dy", 2)
    x = _arr(x, "x", 2)
    weight = _arr(weight, "weight", 2)
    need = _args.needs_set(needs)
    _args.linear_check(x.shape, weight.shape, None)
    _args.same_shape(dy, (x.shape[0], weight.shape[0]), "dy", f"the output shape for `x` {x.shape} and `weight` {weight.shape}")
    dx = dy @ weight if "x" in need else None
    dw = dy.T @ x if "weight" in need else None
    db = dy.sum(axis=0) if "bias" in need else None
    return dx, dw, db
