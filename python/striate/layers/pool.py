"""The pooling layers: MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d, GlobalAvgPool2d.

Each calls the matching ``striate.functional`` op, so the backend switch applies.
Not here: the kernels themselves, or convolution.
"""

from __future__ import annotations


from .base import _int, _pair, _float, _bool, _pair_out, _pool_out, _check_input, _as, _ops, Layer


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
    """Max pooling (``torch.nn.MaxPool2d``); ``dilation`` is an addition, keyword only."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, dilation=1):
        super().__init__()
        self._window(kernel_size, stride, padding, _pair(dilation, "dilation"))
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        _check_input(x, "MaxPool2d", 4)
        y, idx = _ops(x.dtype).max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        self._xshape, self._idx, self._y_shape, self._dtype = x.shape, idx, y.shape, x.dtype
        return y

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
    """Average pooling (``torch.nn.AvgPool2d``)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
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
    """Power-average pooling: ``(sum over window of x**p) ** (1/p)`` (``torch.nn.LPPool2d``)."""

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
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
    """Adaptive average pooling to ``output_size`` (an int or an (h, w) pair; None keeps that input size)."""

    def __init__(self, output_size):
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
    """``AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self):
        super().__init__(1)

    def config(self):
        return {}
