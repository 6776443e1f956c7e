"""The element-wise activations (ReLU, LeakyReLU, GELU, SiLU, Tanh, Sigmoid) and Softmax, in NumPy.

Each matches its ``torch.nn`` namesake forward and backward. Not here: losses
(``striate.losses`` fuses softmax with cross-entropy), learnable activations
(PReLU) and in-place variants.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _core
from .._config import get_backend
from .base import _float, _int, _check_input, _as, Layer

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_BETA = math.sqrt(2.0 / math.pi)
_TANH_KAPPA = 0.044715
# erfc(z) = t * exp(-z*z + P(t)), t = 1 / (1 + z / 2), z >= 0: a Chebyshev fit with
# a relative error below 1.2e-7 everywhere (the classic one of Numerical Recipes).
_ERFC_COEFFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                0.09678418, 0.37409196, 1.00002368, -1.26551223)


_erfc_exact = np.frompyfunc(math.erfc, 1, 1)


def _on_core(*arrays):
    """True when every array is float32, C-contiguous and aligned and the C++ backend is on.

    The core's element-wise kernels (csrc/elementwise.cpp) then give NumPy's
    bits on all threads.
    """
    return get_backend() != "numpy" and all(
        a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned for a in arrays)


def _erfc(z, exact=False):
    """``erfc(z)`` in float64, element-wise: to 1.2e-7 relative, or to float64 rounding when ``exact``.

    The fast fit serves float32 layers; float64 ones (gradient checks) use
    ``math.erfc`` element by element, which is slower.
    """
    z = np.asarray(z, np.float64)
    if exact:
        return _erfc_exact(z).astype(np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.zeros_like(t)
    for c in _ERFC_COEFFS:
        poly = poly * t + c
    r = t * np.exp(-a * a + poly)
    return np.where(z >= 0, r, 2.0 - r)


class _Elementwise(Layer):
    """``y = f(x)`` element by element, with ``dx = dy * f'``.

    The derivative is written in terms of what the layer keeps: its output
    ``y`` (``_keeps = "_y"``, the default) or, for ``_SavesInput``, its input
    ``x`` (``_keeps = "_x"``).
    """

    _keeps = "_y"

    def _f(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _df(self, kept):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        _check_input(x, type(self).__name__)
        y = self._f(x)
        setattr(self, self._keeps, y if self._keeps == "_y" else x)
        return y

    def backward(self, dy):
        kept = self._saved(self._keeps)
        self._check_dy(dy, kept.shape)
        if not self.needs_input_grad:
            return None
        return _as(dy, kept.dtype) * self._df(kept)


class ReLU(_Elementwise):
    """``max(x, 0)``, as ``torch.nn.ReLU``; NaN propagates.

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> ReLU()(np.array([-1.0, 0.5], np.float32))
    array([0. , 0.5], dtype=float32)
    """

    # Inside a Sequential, after a layer whose output nobody else holds (a conv's,
    # a Linear's), the chain walk sets _inplace for one call: the forward then
    # clamps that array in place (the conv's bias + ReLU epilogue, without a
    # second buffer) and the backward masks its own private dy in place.
    # max(x, 0) and dy * mask are exact, so the bits are those of the
    # out-of-place path. Float32 arrays run on the core's threaded kernels
    # (csrc/elementwise.cpp), which give NumPy's bits.
    _can_inplace = True
    _inplace = False

    def forward(self, x):
        _check_input(x, "ReLU")
        if self._inplace:
            if _on_core(x):
                _core.relu(x, x)
            else:
                np.maximum(x, 0, out=x)
            self._y = x
            return x
        self._y = self._f(x)
        return self._y

    # A MaxPool2d right after this layer in a chain takes this backward into
    # its own (see layers.chain): the pool's output at a window is this layer's
    # output at the window's argmax, so masking the pool's dy by its output
    # sign masks every position that receives a gradient, on a quarter of the
    # elements for 2 x 2 windows.
    _absorbed_by_max_pool = True

    def backward(self, dy):
        y = self._saved("_y")
        self._check_dy(dy, y.shape)
        if not self.needs_input_grad:
            return None
        return self._mask(dy, y, self._inplace and dy.flags.writeable)

    def _mask(self, dy, y, own=False):
        """``dy * (y > 0)``, in ``dy`` itself when ``own``."""
        if dy.dtype != y.dtype:
            dy, own = _as(dy, y.dtype), True
        if _on_core(dy, y):
            out = dy if own else np.empty_like(dy)
            _core.relu_backward(dy, y, out)
            return out
        return np.multiply(dy, self._df(y), out=dy if own else None)

    def _f(self, x):
        if _on_core(x):
            y = np.empty_like(x)
            _core.relu(x, y)
            return y
        return np.maximum(x, 0)

    def _df(self, y):
        # Multiplying by the mask is ~30x faster than np.where here; a non-finite dy
        # where y <= 0 becomes NaN instead of 0 (fit stops on non-finite gradients anyway).
        return y > 0


class _SavesInput(_Elementwise):
    """``y = f(x)`` element by element, with ``dx = dy * f'(x)`` (the derivative needs ``x``, not ``y``)."""

    _keeps = "_x"


class LeakyReLU(_SavesInput):
    """``x`` where ``x > 0``, else ``negative_slope * x``, as ``torch.nn.LeakyReLU``.

    Parameters
    ----------
    negative_slope : float, default 0.01
        The slope for ``x <= 0`` (any finite number, as torch).

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import layers as L
    >>> L.LeakyReLU(0.1)(np.array([-2.0, 0.0, 3.0], np.float32))
    array([-0.2,  0. ,  3. ], dtype=float32)
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = _float(negative_slope, "negative_slope")

    def _f(self, x):
        return np.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def _df(self, x):
        return np.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))

    def config(self):
        return {"negative_slope": self.negative_slope}


class GELU(_SavesInput):
    """Gaussian error linear unit ``x * Phi(x)``, as ``torch.nn.GELU``.

    ``approximate="none"`` is exact (``Phi`` the standard normal CDF, through
    ``erf``); ``"tanh"`` is ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x**3)))``.
    Computed in float64 and returned in the input's dtype.

    Parameters
    ----------
    approximate : {"none", "tanh"}, default "none"

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import layers as L
    >>> L.GELU()(np.array([-1.0, 0.0, 1.0], np.float32)).round(4)
    array([-0.1587,  0.    ,  0.8413], dtype=float32)
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"`approximate` must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _f(self, x):
        x64 = x.astype(np.float64)
        if self.approximate == "tanh":
            y = 0.5 * x64 * (1.0 + np.tanh(_TANH_BETA * (x64 + _TANH_KAPPA * x64 ** 3)))
        else:
            y = 0.5 * x64 * _erfc(-x64 * _SQRT1_2, exact=x.dtype == np.float64)
        return y.astype(x.dtype, copy=False)

    def _df(self, x):
        x64 = x.astype(np.float64)
        if self.approximate == "tanh":
            th = np.tanh(_TANH_BETA * (x64 + _TANH_KAPPA * x64 ** 3))
            d = 0.5 * (1.0 + th) + 0.5 * x64 * (1.0 - th * th) * _TANH_BETA * (1.0 + 3.0 * _TANH_KAPPA * x64 * x64)
        else:
            d = 0.5 * _erfc(-x64 * _SQRT1_2, exact=x.dtype == np.float64) + x64 * _INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)
        return d.astype(x.dtype, copy=False)

    def config(self):
        return {"approximate": self.approximate}


class SiLU(_SavesInput):
    """Sigmoid linear unit (swish) ``x * sigmoid(x)``, as ``torch.nn.SiLU``.

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import layers as L
    >>> L.SiLU()(np.array([-1.0, 0.0, 2.0], np.float32)).round(4)
    array([-0.2689,  0.    ,  1.7616], dtype=float32)
    """

    @staticmethod
    def _sigmoid(x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def _f(self, x):
        return x * self._sigmoid(x)

    def _df(self, x):
        s = self._sigmoid(x)
        return s * (1 + x * (1 - s))


class Tanh(_Elementwise):
    """Hyperbolic tangent, as ``torch.nn.Tanh``.

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> Tanh()(np.array([0.0], np.float32))
    array([0.], dtype=float32)
    """

    def _f(self, x):
        return np.tanh(x)

    def _df(self, y):
        return 1 - y * y


class Sigmoid(_Elementwise):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, computed without overflow for large |x|.

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> Sigmoid()(np.array([0.0, 1000.0], np.float32))
    array([0.5, 1. ], dtype=float32)
    """

    def _f(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def _df(self, y):
        return y * (1 - y)


class Softmax(Layer):
    """Softmax along ``axis`` (max-shifted, so large inputs do not overflow).

    Parameters
    ----------
    axis : int, default -1

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged; sums to 1 along ``axis``.

    Examples
    --------
    >>> import numpy as np
    >>> Softmax()(np.zeros((1, 4), np.float32))
    array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = _int(axis, "axis", lo=-64, hi=63)

    def forward(self, x):
        _check_input(x, "Softmax")
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Softmax: `axis` {self.axis} is out of range for input of shape {x.shape}")
        z = x - x.max(axis=self.axis, keepdims=True)
        e = np.exp(z)
        y = e / e.sum(axis=self.axis, keepdims=True)
        self._y = y
        return y

    def backward(self, dy):
        y = self._saved("_y")
        self._check_dy(dy, y.shape)
        if not self.needs_input_grad:
            return None
        dy = _as(dy, y.dtype)
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))

    def config(self):
        return {"axis": self.axis}
