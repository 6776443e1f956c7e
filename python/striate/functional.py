"""striate.functional: convolution, pooling and linear ops on the C++ kernels.

Each op checks every argument (shared with ``striate.reference`` through
``striate._args``), requires float32 arrays, makes any layout copy explicitly
with ``np.ascontiguousarray`` (non-contiguous, Fortran-ordered and NHWC views
give the same results as C-contiguous inputs), then calls ``striate._core``
with plain ints. Outputs are always fresh arrays. When
``striate.get_backend() == "numpy"`` the same checks run and the op is
computed by ``striate.reference`` instead.

Not here: numerics (see ``csrc/`` and ``reference.py``), dtype conversion
(float64 or int inputs are rejected, never silently cast), layers or caching.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _args, _core, reference
from ._config import get_backend

__all__ = list(reference.__all__)  # the same ops, the same signatures

_Pair = Union[int, Tuple[int, int]]  # an int for both axes, or (h, w)
_OptPair = Union[int, Tuple[Optional[int], Optional[int]]]  # None: keep that input size


def _f32(a, name, ndim):
    """``a`` checked as a float32 ndarray of ``ndim`` dimensions."""
    return _args.array(a, name, float32=True, ndim=ndim)


def _c(a):
    """``a`` itself when C-contiguous and aligned, else an explicit C-contiguous copy.

    Applied to every array before dispatching, on both backends, so that a
    view, a Fortran-ordered or an NHWC-strided input gives bit-for-bit the
    result of its contiguous copy.
    """
    if a.flags.c_contiguous:
        return a if a.flags.aligned else a.copy()
    return np.ascontiguousarray(a)


def _numpy_backend() -> bool:
    return get_backend() == "numpy"


# --------------------------------------------------------------------------- convolution


def conv2d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride: _Pair = 1,
           padding: Union[_Pair, str] = 0, dilation: _Pair = 1, groups: int = 1) -> np.ndarray:
    """2-D convolution (cross-correlation), ``torch.nn.functional.conv2d`` semantics.

    Parameters
    ----------
    x : ndarray, float32, shape (N, C, H, W)
    weight : ndarray, float32, shape (K, C // groups, kh, kw)
    bias : ndarray, float32, shape (K,), optional
    stride, dilation : int or (int, int), positive
    padding : int, (int, int), "same" or "valid"
        "same" requires stride 1; for an even effective kernel the extra
        row/column of padding goes at the bottom/right, as in PyTorch.
    groups : int, positive, divides C and K

    Returns
    -------
    y : ndarray, float32, shape (N, K, OH, OW)
        ``OH = (H + pad_top + pad_bottom - dilation*(kh-1) - 1) // stride + 1``.

    Raises
    ------
    TypeError
        An array that is not float32, or an argument of the wrong type.
    ValueError
        Bad shapes, non-positive stride/dilation/groups, a kernel larger than
        the padded input, or an output whose size overflows int64.

    Examples
    --------
    >>> import numpy as np
    >>> import striate.functional as F
    >>> x = np.ones((1, 1, 4, 4), np.float32)
    >>> F.conv2d(x, np.ones((2, 1, 3, 3), np.float32), padding=1).shape
    (1, 2, 4, 4)
    """
    x = _c(_f32(x, "x", 4))
    weight = _c(_f32(weight, "weight", 4))
    if bias is not None:
        bias = _c(_f32(bias, "bias", 1))
    s = _args.conv_spec(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation, groups)
    if _numpy_backend():
        return reference.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _core.conv2d_forward(x, weight, bias, *s.core_args())


def conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: _Pair = 1,
                    padding: Union[_Pair, str] = 0, dilation: _Pair = 1, groups: int = 1,
                    needs: Sequence[str] = ("x", "weight", "bias")) -> Tuple[Any, Any, Any]:
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    dy : ndarray, float32, shape (N, K, OH, OW)
    x, weight, stride, padding, dilation, groups
        As passed to :func:`conv2d`.
    needs : collection of {"x", "weight", "bias"}
        The gradients to compute. Leaving out "x" (e.g. for a network's first
        layer) skips the most expensive part.

    Returns
    -------
    dx, dweight, dbias : ndarray or None
        None for what is not in ``needs``. ``dweight`` and ``dbias`` are
        reduced over the batch in a fixed order: bit-identical for any thread count.
    """
    dy = _c(_f32(dy, "dy", 4))
    x = _c(_f32(x, "x", 4))
    weight = _c(_f32(weight, "weight", 4))
    need = _args.needs_set(needs)
    s = _args.conv_spec(x.shape, weight.shape, None, stride, padding, dilation, groups)
    _args.same_shape(dy, s.y_shape, "dy", f"the output shape for `x` {x.shape} and `weight` {weight.shape}")
    if _numpy_backend():
        return reference.conv2d_backward(dy, x, weight, stride, padding, dilation, groups, needs=need)
    dx, dw, db = _core.conv2d_backward(
        dy, x, weight, *s.core_args(), "x" in need, "weight" in need, "bias" in need
    )
    return dx, dw, db


# --------------------------------------------------------------------------- max pooling


def max_pool2d(x: np.ndarray, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
               dilation: _Pair = 1, ceil_mode: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Max pooling returning the argmax, ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Parameters
    ----------
    x : ndarray, float32, shape (N, C, H, W)
    kernel_size, stride, padding, dilation : int or (int, int)
        ``stride`` defaults to ``kernel_size``; ``padding <= kernel_size // 2`` per axis.
    ceil_mode : bool

    Returns
    -------
    y : ndarray, float32, shape (N, C, OH, OW)
    indices : ndarray, int64, shape (N, C, OH, OW)
        Flat index ``h * W + w`` into each input plane. The first maximum wins
        ties; a NaN in the window propagates to the output.

    Examples
    --------
    >>> import numpy as np
    >>> import striate.functional as F
    >>> y, idx = F.max_pool2d(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), 2)
    >>> idx[0, 0].tolist()
    [[5, 7], [13, 15]]
    """
    x = _c(_f32(x, "x", 4))
    s = _args.pool_spec(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if _numpy_backend():
        return reference.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _core.max_pool2d_forward(x, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw, s.ceil_mode)


def max_pool2d_backward(dy: np.ndarray, indices: np.ndarray, x_shape: Sequence[int]) -> np.ndarray:
    """Gradient of :func:`max_pool2d`: ``dy`` summed into ``x_shape`` through ``indices``.

    Parameters
    ----------
    dy : ndarray, float32, shape (N, C, OH, OW)
    indices : ndarray, int64, shape (N, C, OH, OW), values in ``[0, H*W)``
    x_shape : tuple of 4 ints

    Returns
    -------
    dx : ndarray, float32, shape ``x_shape``
    """
    dy = _c(_f32(dy, "dy", 4))
    N, C, H, W = _args.shape4(x_shape, "x_shape")
    if dy.shape[:2] != (N, C):
        raise ValueError(f"`dy` shape {dy.shape} does not match `x_shape` {(N, C, H, W)} in (N, C)")
    # values outside [0, H*W) are rejected by the reference and by the C++ kernel
    # (in its scatter pass, with the plane and position), so no extra pass here
    indices = _c(_args.index_array(indices, "indices", dy.shape, H * W, check_range=False))
    if _numpy_backend():
        return reference.max_pool2d_backward(dy, indices, (N, C, H, W))
    return _core.max_pool2d_backward(dy, indices, H, W)


# --------------------------------------------------------------------------- average pooling


def avg_pool2d(x: np.ndarray, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """Average pooling, ``torch.nn.functional.avg_pool2d`` semantics.

    Parameters
    ----------
    x : ndarray, float32, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
        ``stride`` defaults to ``kernel_size``; ``padding <= kernel_size // 2``.
    ceil_mode, count_include_pad : bool
        With ``count_include_pad`` padded positions count in the divisor (the
        ``ceil_mode`` overhang past the padded edge does not).

    Returns
    -------
    y : ndarray, float32, shape (N, C, OH, OW)
    """
    x = _c(_f32(x, "x", 4))
    cip = _args.flag(count_include_pad, "count_include_pad")
    s = _args.pool_spec(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    if _numpy_backend():
        return reference.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, cip)
    return _core.avg_pool2d_forward(x, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.ceil_mode, cip)


def avg_pool2d_backward(dy: np.ndarray, x_shape: Sequence[int], kernel_size: _Pair, stride: Optional[_Pair] = None,
                        padding: _Pair = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Returns
    -------
    dx : ndarray, float32, shape ``x_shape``
    """
    dy = _c(_f32(dy, "dy", 4))
    x_shape = _args.shape4(x_shape, "x_shape")
    cip = _args.flag(count_include_pad, "count_include_pad")
    s = _args.pool_spec(x_shape, kernel_size, stride, padding, 1, ceil_mode)
    _args.same_shape(dy, s.y_shape, "dy", f"the pooled shape of `x_shape` {x_shape}")
    if _numpy_backend():
        return reference.avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, cip)
    return _core.avg_pool2d_backward(dy, s.H, s.W, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.ceil_mode, cip)


# --------------------------------------------------------------------------- power-average pooling


def lp_pool2d(x: np.ndarray, norm_type: float, kernel_size: _Pair, stride: Optional[_Pair] = None,
              ceil_mode: bool = False) -> np.ndarray:
    """Power-average pooling, ``torch.nn.functional.lp_pool2d`` semantics.

    ``y = (sum over the window of x ** p) ** (1 / p)``, where windows clipped by
    ``ceil_mode`` have their sum scaled by ``kh * kw / count`` as PyTorch does.
    ``norm_type=2`` is L2 pooling.

    Returns
    -------
    y : ndarray, float32, shape (N, C, OH, OW)
    """
    x = _c(_f32(x, "x", 4))
    p = _args.norm_type(norm_type)
    s = _args.pool_spec(x.shape, kernel_size, stride, 0, 1, ceil_mode, pad_rule=False)
    if _numpy_backend():
        return reference.lp_pool2d(x, p, kernel_size, stride, ceil_mode)
    return _core.lp_pool2d_forward(x, p, s.kh, s.kw, s.sh, s.sw, s.ceil_mode)


def lp_pool2d_backward(dy: np.ndarray, x: np.ndarray, y: np.ndarray, norm_type: float, kernel_size: _Pair,
                       stride: Optional[_Pair] = None, ceil_mode: bool = False) -> np.ndarray:
    """Gradient of :func:`lp_pool2d`; outputs where ``y == 0`` pass no gradient.

    Parameters
    ----------
    dy : ndarray, float32, shape (N, C, OH, OW)
    x : ndarray, float32, the forward input
    y : ndarray, float32, the forward output

    Returns
    -------
    dx : ndarray, float32, shape of ``x``
    """
    dy = _c(_f32(dy, "dy", 4))
    x = _c(_f32(x, "x", 4))
    y = _c(_f32(y, "y", 4))
    p = _args.norm_type(norm_type)
    s = _args.pool_spec(x.shape, kernel_size, stride, 0, 1, ceil_mode, pad_rule=False)
    _args.same_shape(dy, s.y_shape, "dy", f"the pooled shape of `x` {x.shape}")
    _args.same_shape(y, s.y_shape, "y", f"the pooled shape of `x` {x.shape}")
    if _numpy_backend():
        return reference.lp_pool2d_backward(dy, x, y, p, kernel_size, stride, ceil_mode)
    return _core.lp_pool2d_backward(dy, x, y, p, s.kh, s.kw, s.sh, s.sw, s.ceil_mode)


# --------------------------------------------------------------------------- adaptive average pooling


def adaptive_avg_pool2d(x: np.ndarray, output_size: _OptPair) -> np.ndarray:
    """Adaptive average pooling, ``torch.nn.functional.adaptive_avg_pool2d`` semantics.

    Output ``i`` averages input rows ``[floor(i*H/OH), ceil((i+1)*H/OH))``.

    Parameters
    ----------
    x : ndarray, float32, shape (N, C, H, W)
    output_size : int or (int or None, int or None)
        None keeps that input size.

    Returns
    -------
    y : ndarray, float32, shape (N, C, OH, OW)
    """
    x = _c(_f32(x, "x", 4))
    oh, ow = _args.adaptive_size(x.shape, output_size)
    if _numpy_backend():
        return reference.adaptive_avg_pool2d(x, (oh, ow))
    return _core.adaptive_avg_pool2d_forward(x, oh, ow)


def adaptive_avg_pool2d_backward(dy: np.ndarray, x_shape: Sequence[int], output_size: _OptPair) -> np.ndarray:
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    Returns
    -------
    dx : ndarray, float32, shape ``x_shape``
    """
    dy = _c(_f32(dy, "dy", 4))
    x_shape = _args.shape4(x_shape, "x_shape")
    oh, ow = _args.adaptive_size(x_shape, output_size)
    _args.same_shape(dy, x_shape[:2] + (oh, ow), "dy", f"the pooled shape of `x_shape` {x_shape}")
    if _numpy_backend():
        return reference.adaptive_avg_pool2d_backward(dy, x_shape, (oh, ow))
    return _core.adaptive_avg_pool2d_backward(dy, x_shape[2], x_shape[3])


# --------------------------------------------------------------------------- fully connected


def linear(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """Fully-connected layer: ``y = x @ weight.T + bias`` (``torch.nn.functional.linear``).

    Parameters
    ----------
    x : ndarray, float32, shape (N, in_features)
    weight : ndarray, float32, shape (out_features, in_features)
    bias : ndarray, float32, shape (out_features,), optional

    Returns
    -------
    y : ndarray, float32, shape (N, out_features)
    """
    x = _c(_f32(x, "x", 2))
    weight = _c(_f32(weight, "weight", 2))
    if bias is not None:
        bias = _c(_f32(bias, "bias", 1))
    _args.linear_check(x.shape, weight.shape, None if bias is None else bias.shape)
    if _numpy_backend():
        return reference.linear(x, weight, bias)
    y = _core.matmul(x, weight, False, True, True)  # row-invariant: batch-independent results
    if bias is not None:
        y += bias
    return y


def linear_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray,
                    needs: Sequence[str] = ("x", "weight", "bias")) -> Tuple[Any, Any, Any]:
    """Gradients of :func:`linear`: ``dx = dy @ weight``, ``dweight = dy.T @ x``, ``dbias = dy.sum(0)``.

    Returns
    -------
    dx, dweight, dbias : ndarray or None
        None for what is not in ``needs``.
    """
    dy = _c(_f32(dy, "dy", 2))
    x = _c(_f32(x, "x", 2))
    weight = _c(_f32(weight, "weight", 2))
    need = _args.needs_set(needs)
    _args.linear_check(x.shape, weight.shape, None)
    _args.same_shape(dy, (x.shape[0], weight.shape[0]), "dy", f"the output shape for `x` {x.shape} and `weight` {weight.shape}")
    if _numpy_backend():
        return reference.linear_backward(dy, x, weight, needs=need)
    dx = _core.matmul(dy, weight, False, False, True) if "x" in need else None
    dw = _core.matmul(dy, x, True, False) if "weight" in need else None
    db = dy.sum(axis=0, dtype=np.float32) if "bias" in need else None
    return dx, dw, db
