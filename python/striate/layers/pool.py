"""The pooling layers: MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d, GlobalAvgPool2d.

Each calls the matching ``striate.functional`` op, so the backend switch applies.
Not here: the kernels themselves, or convolution.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union


from .base import _int, _pair, _float, _bool, _pair_out, _pool_out, _check_input, _as, _ops, Layer

_Pair = Union[int, Tuple[int, int]]  # an int for both axes, or (h, w)


class _Pool(Layer):
    def _window(self, kernel_size, stride, padding, dilation=(1, 1)):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding", lo=0)
        self.dilation = dilation
        # torch's rule, the one the forward applies: padding <= kernel_size // 2 per axis, whatever the
        # dilation (so a layer that builds also runs)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"`padding` must be at most half of `kernel_size` per axis, got padding "
                f"{self.padding} with kernel_size {self.kernel_size}"
            )
        self._xshape = None

    def output_shape(self, input_shape):
        c, h, w = input_shape
        return (
            c,
            _pool_out(h, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode),
            _pool_out(w, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode),
        )

    def _shape_op_forward(self, x, op, *args):
        """Run ``op(x, *args)``, remembering what ``op_backward(dy, x_shape, *args)`` needs."""
        _check_input(x, type(self).__name__, 4)
        y = getattr(_ops(x.dtype), op)(x, *args)
        self._xshape, self._y_shape, self._dtype = x.shape, y.shape, x.dtype
        return y

    def _shape_op_backward(self, dy, op, *args):
        xshape = self._saved("_xshape")
        self._check_dy(dy, self._y_shape)
        if not self.needs_input_grad:
            return None
        return getattr(_ops(self._dtype), op + "_backward")(_as(dy, self._dtype), xshape, *args)

    def _window_config(self):
        return {
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "padding": _pair_out(self.padding),
        }


class MaxPool2d(_Pool):
    """Max pooling (``torch.nn.MaxPool2d``); ``dilation`` is an addition, keyword only.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    padding : int or (int, int), default 0
        Implicit -inf padding; at most ``kernel_size // 2`` per axis (torch's rule).
    ceil_mode : bool, default False
    dilation : int or (int, int), default 1

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, H_out, W_out)``: ``H_out = (H + 2 * padding
    - dilation * (kernel_size - 1) - 1) // stride + 1`` (rounded up with ``ceil_mode``,
    as torch; the same for W).

    Examples
    --------
    >>> import numpy as np
    >>> MaxPool2d(2)(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """

    # The layer keeps its output (so it is not a private array the next layer
    # may overwrite): a ReLU just before it has its backward taken into this
    # one's, masked by that output's sign (see layers.chain).
    _fresh_grad = True
    _absorbs_relu = True

    def __init__(self, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
                 ceil_mode: bool = False, *, dilation: _Pair = 1) -> None:
        super().__init__()
        self._window(kernel_size, stride, padding, _pair(dilation, "dilation"))
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        _check_input(x, "MaxPool2d", 4)
        y, idx = _ops(x.dtype).max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        self._xshape, self._idx, self._y_shape, self._dtype, self._y = x.shape, idx, y.shape, x.dtype, y
        return y

    def _backward_after_relu(self, dy, relu):
        """The input gradient of ``relu`` then this layer: ``relu``'s mask applied to ``dy``, then the scatter.

        Each output is ``relu``'s output at its window's argmax, the only
        position it sends gradient to, so ``dy * (y > 0)`` scattered equals
        the scatter masked by ``relu``'s output, except that a masked position
        holds +0.0 where the two-pass order gives ``-0.0`` for a negative dy.
        """
        self._check_dy(dy, self._y_shape)
        return self.backward(relu._mask(dy, self._saved("_y")))

    def backward(self, dy):
        xshape = self._saved("_xshape")
        self._check_dy(dy, self._y_shape)
        if not self.needs_input_grad:
            return None
        return _ops(self._dtype).max_pool2d_backward(_as(dy, self._dtype), self._idx, xshape)

    def config(self):
        c = self._window_config()
        c["ceil_mode"] = self.ceil_mode
        if self.dilation != (1, 1):
            c["dilation"] = _pair_out(self.dilation)
        return c


class AvgPool2d(_Pool):
    """Average pooling (``torch.nn.AvgPool2d``).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    padding : int or (int, int), default 0
        Zero padding, at most ``kernel_size // 2`` per axis.
    ceil_mode : bool, default False
    count_include_pad : bool, default True
        Whether the padded zeros count in the window's average.

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, H_out, W_out)``: ``H_out = (H + 2 * padding
    - kernel_size) // stride + 1`` (rounded up with ``ceil_mode``,
    as torch; the same for W).

    Examples
    --------
    >>> import numpy as np
    >>> AvgPool2d(2)(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]], dtype=float32)
    """

    _fresh_output = True  # a new output array the layer does not keep (see layers.chain)
    _fresh_grad = True

    def __init__(self, kernel_size: _Pair, stride: Optional[_Pair] = None, padding: _Pair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        super().__init__()
        self._window(kernel_size, stride, padding)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")
        self.count_include_pad = _bool(count_include_pad, "count_include_pad")

    def _args(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def forward(self, x):
        return self._shape_op_forward(x, "avg_pool2d", *self._args())

    def backward(self, dy):
        return self._shape_op_backward(dy, "avg_pool2d", *self._args())

    def config(self):
        c = self._window_config()
        c["ceil_mode"] = self.ceil_mode
        c["count_include_pad"] = self.count_include_pad
        return c


class LPPool2d(_Pool):
    """Power-average pooling: ``(sum over window of x**p) ** (1/p)`` (``torch.nn.LPPool2d``).

    Parameters
    ----------
    norm_type : float
        The power ``p`` (> 0).
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    ceil_mode : bool, default False

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, (H - kernel_size) // stride + 1, ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> LPPool2d(2, 2)(np.full((1, 1, 2, 2), 3.0, np.float32))
    array([[[[6.]]]], dtype=float32)
    """

    def __init__(self, norm_type: float, kernel_size: _Pair, stride: Optional[_Pair] = None,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.norm_type = _float(norm_type, "norm_type", lo=0.0, lo_open=True)
        self._window(kernel_size, stride, 0)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        _check_input(x, "LPPool2d", 4)
        y = _ops(x.dtype).lp_pool2d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)
        self._x, self._y = x, y
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, self._y.shape)
        if not self.needs_input_grad:
            return None
        return _ops(x.dtype).lp_pool2d_backward(_as(dy, x.dtype), x, self._y, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)

    def config(self):
        return {
            "norm_type": self.norm_type,
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "ceil_mode": self.ceil_mode,
        }


class AdaptiveAvgPool2d(_Pool):
    """Adaptive average pooling to ``output_size`` (an int or an (h, w) pair; None keeps that input size).

    Windows as ``torch.nn.AdaptiveAvgPool2d``: output row ``i`` averages input rows
    ``floor(i * H / OH)`` to ``ceil((i + 1) * H / OH)`` (exclusive).

    Parameters
    ----------
    output_size : int or (int or None, int or None)

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, OH, OW)`` (``OH = H`` where None).

    Examples
    --------
    >>> import numpy as np
    >>> AdaptiveAvgPool2d((None, 1))(np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))
    array([[[[1.],
             [4.]]]], dtype=float32)
    """

    def __init__(self, output_size: Union[int, Tuple[Optional[int], Optional[int]]]) -> None:
        super().__init__()
        if isinstance(output_size, (tuple, list)) and len(output_size) == 2 and None in output_size:
            self.output_size = tuple(None if v is None else _int(v, "output_size") for v in output_size)
        else:
            self.output_size = _pair(output_size, "output_size")
        self._xshape = None

    def resolved_size(self, hw):
        """``output_size`` for an input of spatial size ``hw`` (None entries take the input's)."""
        return tuple(int(n) if o is None else o for o, n in zip(self.output_size, hw))

    def forward(self, x):
        return self._shape_op_forward(x, "adaptive_avg_pool2d", self.output_size)

    def backward(self, dy):
        return self._shape_op_backward(dy, "adaptive_avg_pool2d", self.output_size)

    def output_shape(self, input_shape):
        return (input_shape[0],) + self.resolved_size(input_shape[1:])

    def config(self):
        if None in self.output_size:
            return {"output_size": list(self.output_size)}
        return {"output_size": _pair_out(self.output_size)}


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """``AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1).

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, 1, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> GlobalAvgPool2d()(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 1, 1)
    """

    def __init__(self) -> None:
        super().__init__(1)

    def config(self):
        return {}
