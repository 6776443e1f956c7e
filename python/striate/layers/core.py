"""Linear, Dropout, Flatten and Identity: the fully connected layer and the shape/regularisation layers.

Not here: convolution, pooling, normalisation or activations.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _config, _core
from .._config import get_backend
from .base import _int, _float, _bool, _check_input, _as, _ops, Layer


class Dropout(Layer):
    """Inverted dropout: in training mode zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; the identity in evaluation mode.

    The mask is drawn from ``self.rng`` (``set_rng``); when that is None, from
    ``striate._config.rng()`` at call time: one number from the generator
    seeds a counter-based stream that decides every element (the same mask
    for any thread count, ISA path or backend).

    Parameters
    ----------
    p : float, default 0.5
        The probability of zeroing an element, in [0, 1).

    Shape
    -----
    Input ``(*)``, output ``(*)``: any shape, unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> drop = Dropout(0.5)
    >>> drop.eval()(np.ones(4, np.float32))  # evaluation mode: the identity
    array([1., 1., 1., 1.], dtype=float32)
    """

    _passthrough = True  # returns its input (or a view), or a fresh array it does not keep (see layers.chain)

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _float(p, "p", lo=0.0, hi=1.0, hi_open=True)
        self.rng = None
        self._mask = None

    def set_rng(self, gen):
        """Draw masks from ``gen`` (a ``numpy.random.Generator``, or None for the global RNG)."""
        if gen is not None and not isinstance(gen, np.random.Generator):
            raise TypeError(f"`gen` must be a numpy.random.Generator or None, got {type(gen).__name__}")
        self.rng = gen

    def forward(self, x):
        _check_input(x, "Dropout")
        if not self.training or self.p == 0.0:
            self._mask = False
            return x  # the identity, as torch returns its input
        gen = self.rng if self.rng is not None else _config.rng()
        mask = _keep_mask(gen, x.shape, self.p, x.dtype)
        self._mask = mask
        return x * mask

    def backward(self, dy):
        mask = self._mask
        if mask is None:
            raise RuntimeError("Dropout.backward called before forward")
        if not self.needs_input_grad:
            return None
        if mask is False:
            return dy
        self._check_dy(dy, mask.shape)
        return _as(dy, mask.dtype) * mask

    def config(self):
        return {"p": self.p}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _keep_mask(gen, shape, p, dtype):
    """Dropout's mask for an input of ``shape``: ``1 / (1 - p)`` (in ``dtype``) where kept, 0 where dropped.

    One 63-bit key drawn from ``gen`` seeds a counter-based stream
    (splitmix64): the 32-bit halves of its outputs, one per element, are
    compared with ``ceil(p * 2**32)``. ``_core.dropout_mask`` computes it at
    memory speed on any thread count (the same mask); ``_keep_mask_numpy`` is
    the same stream in NumPy, for the NumPy backend and other dtypes.
    """
    n = int(np.prod(shape, dtype=np.int64))
    key = int(gen.integers(0, 2**63, dtype=np.int64))
    threshold = min(2**32, math.ceil(p * 2**32))
    scale = 1.0 / (1.0 - p)
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64) and get_backend() != "numpy" and hasattr(_core, "dropout_mask"):
        return _core.dropout_mask(key, n, threshold, scale, dtype == np.float64).reshape(shape)
    return _keep_mask_numpy(key, n, threshold, dtype.type(scale)).reshape(shape)


def _keep_mask_numpy(key, n, threshold, scale):
    """``_core.dropout_mask`` in NumPy: element ``2j`` / ``2j + 1`` takes the low / high half of output ``j``."""
    z = np.uint64(key) + np.arange(1, (n + 1) // 2 + 1, dtype=np.uint64) * _GOLDEN  # wraps modulo 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    numbers = np.empty(2 * z.size, np.uint64)
    numbers[0::2] = z & np.uint64(0xFFFFFFFF)
    numbers[1::2] = z >> np.uint64(32)
    return (numbers[:n] >= threshold).astype(scale.dtype) * scale


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C order as ``torch.nn.Flatten``.

    Shape
    -----
    Input ``(N, *)``, output ``(N, prod(*))``.

    Examples
    --------
    >>> import numpy as np
    >>> Flatten()(np.zeros((2, 3, 4, 5), np.float32)).shape
    (2, 60)
    """

    _passthrough = True  # returns its input (or a view), or a fresh array it does not keep (see layers.chain)

    def forward(self, x):
        _check_input(x, "Flatten")
        if x.ndim < 2:
            raise ValueError(f"Flatten: input must have a batch dimension, got shape {x.shape}")
        self._xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        xshape = self._saved("_xshape")
        n = xshape[0]
        self._check_dy(dy, (n, int(np.prod(xshape[1:], dtype=np.int64))))
        if not self.needs_input_grad:
            return None
        return dy.reshape(xshape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)


class Identity(Layer):
    """``y = x``, as ``torch.nn.Identity``: what ``Sequential.fuse`` leaves where a folded BatchNorm2d was."""

    _passthrough = True  # returns its input (or a view), or a fresh array it does not keep (see layers.chain)

    def forward(self, x):
        _check_input(x, "Identity")
        self._shape = x.shape
        return x

    def backward(self, dy):
        self._check_dy(dy, self._saved("_shape"))
        return dy if self.needs_input_grad else None


class Linear(Layer):
    """``y = x @ W.T + b`` with weight (out_features, in_features), as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True

    Shape
    -----
    Input ``(N, in_features)``, output ``(N, out_features)``.

    Examples
    --------
    >>> import numpy as np
    >>> lin = Linear(3, 2)
    >>> lin(np.ones((4, 3), np.float32)).shape
    (4, 2)
    >>> lin.backward(np.ones((4, 2), np.float32)).shape
    (4, 3)
    >>> [(name, p.grad.shape) for name, p in lin.named_parameters()]
    [('weight', (2, 3)), ('bias', (2,))]
    """

    _fresh_output = True  # a new output array the layer does not keep (see layers.chain)
    _fresh_grad = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = _int(in_features, "in_features")
        self.out_features = _int(out_features, "out_features")
        has_bias = _bool(bias, "bias")
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = self._add_param("weight", (self.out_features, self.in_features), bound)
        self.bias = self._add_param("bias", (self.out_features,), bound) if has_bias else None
        self._x = None

    def forward(self, x):
        _check_input(x, "Linear", 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: input has shape {x.shape}, expected (N, {self.in_features})")
        y = _ops(x.dtype).linear(x, *self._weights(x.dtype))
        self._x = x
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, (x.shape[0], self.out_features))
        needs = self._needs()
        if not needs:
            return self._store_grads(None, None, None)
        w, _ = self._weights(x.dtype)
        return self._store_grads(*_ops(x.dtype).linear_backward(_as(dy, x.dtype), x, w, needs=needs))

    def output_shape(self, input_shape):
        return (self.out_features,)

    def config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None or "bias" in self._spec,
        }
