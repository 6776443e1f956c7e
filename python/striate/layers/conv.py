"""Conv2d, the 2-D convolution layer over ``striate.functional.conv2d``.

Not here: the kernels (``striate.functional`` and the C++ core) and pooling.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

from .base import _int, _pair, _bool, _pair_out, _conv_out, _check_input, _as, _ops, Layer

_Pair = Union[int, Tuple[int, int]]  # an int for both axes, or (h, w)


class Conv2d(Layer):
    """2-D convolution, ``torch.nn.Conv2d`` semantics; weight (out, in/groups, kh, kw).

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size : int or (int, int)
    stride, dilation : int or (int, int), default 1
    padding : int, (int, int), "same" or "valid", default 0
        Zero padding on each side; "same" needs stride 1.
    groups : int, default 1
    bias : bool, default True

    Shape
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)`` with
    ``H_out = (H + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1``
    (the same for W).

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2d(1, 4, 3, padding=1)
    >>> conv(np.zeros((2, 1, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    >>> conv.weight.data.shape, conv.bias.data.shape
    ((4, 1, 3, 3), (4,))
    """

    _fresh_output = True  # a new output array the layer does not keep (see layers.chain)
    _fresh_grad = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Pair,
        stride: _Pair = 1,
        padding: Union[_Pair, str] = 0,
        dilation: _Pair = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = _int(in_channels, "in_channels")
        self.out_channels = _int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"`padding` must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"`padding`='same' needs stride 1, got stride {self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", lo=0)
        self.dilation = _pair(dilation, "dilation")
        self.groups = _int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"`groups` ({self.groups}) must divide in_channels ({self.in_channels}) "
                f"and out_channels ({self.out_channels})"
            )
        has_bias = _bool(bias, "bias")
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
        self.weight = self._add_param("weight", (self.out_channels, self.in_channels // self.groups, kh, kw), bound)
        self.bias = self._add_param("bias", (self.out_channels,), bound) if has_bias else None
        self._x = None

    def _conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, x):
        _check_input(x, "Conv2d", 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: input has {x.shape[1]} channels, expected in_channels={self.in_channels}")
        y = _ops(x.dtype).conv2d(x, *self._weights(x.dtype), **self._conv_args())
        self._x = x
        self._y_shape = y.shape
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, self._y_shape)
        needs = self._needs()
        if not needs:
            return self._store_grads(None, None, None)
        w, _ = self._weights(x.dtype)
        return self._store_grads(*_ops(x.dtype).conv2d_backward(_as(dy, x.dtype), x, w, **self._conv_args(), needs=needs))

    def output_shape(self, input_shape):
        c, h, w = input_shape
        if self.padding == "same":
            return (self.out_channels, h, w)
        ph, pw = (0, 0) if self.padding == "valid" else self.padding
        return (
            self.out_channels,
            _conv_out(h, self.kernel_size[0], self.stride[0], ph, self.dilation[0]),
            _conv_out(w, self.kernel_size[1], self.stride[1], pw, self.dilation[1]),
        )

    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else _pair_out(self.padding),
            "dilation": _pair_out(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None or "bias" in self._spec,
        }
