"""BatchNorm2d: batch normalisation per channel, ``torch.nn.BatchNorm2d`` semantics.

Float32 inputs on the C++ backend run the core's kernels
(``_core.batch_norm_*``, csrc/batchnorm.cpp): float64 per-channel sums in one
fixed order, bit-identical for any thread count and ISA path. Float64 inputs,
and every input on the "numpy" backend, run the NumPy code below, which
``gradcheck`` relies on. Both keep the running statistics here, in float64
arithmetic, the same way.

Not here: layer or group normalisation, BatchNorm folding into a convolution
(``layers.container.fuse_conv_bn``).
"""

from __future__ import annotations


import numpy as np

from .. import _core
from .._config import get_backend
from .base import _int, _float, _check_input, _as, Layer


def _f32c(a):
    """``a`` as a C-contiguous, aligned float32 array (no copy when it already is one)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.aligned else a.copy()


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, ``torch.nn.BatchNorm2d`` semantics.

    Training mode normalises with the batch mean and the biased variance and
    updates ``running_mean`` / ``running_var`` (unbiased) with
    ``r = (1 - momentum) * r + momentum * batch_stat``. Evaluation mode, and a
    frozen layer (weight and bias not trainable), use the running statistics.

    Parameters
    ----------
    num_features : int
        The channels C.
    eps : float, default 1e-5
        Added to the variance.
    momentum : float, default 0.1
        Weight of the batch statistic in the running averages.

    Shape
    -----
    Input ``(N, C, H, W)``, output ``(N, C, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm2d(3)
    >>> y = bn(np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32))
    >>> y.shape, bool(abs(y.mean()) < 1e-6)
    ((4, 3, 2, 2), True)
    """

    _fresh_output = True  # a new output array the layer does not keep (see layers.chain)
    _fresh_grad = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = _int(num_features, "num_features")
        self.eps = _float(eps, "eps", lo=0.0, lo_open=True)
        self.momentum = _float(momentum, "momentum", lo=0.0, hi=1.0)
        c = self.num_features
        self.weight = self._add_param("weight", (c,), fill=1.0)
        self.bias = self._add_param("bias", (c,), fill=0.0)
        self._add_buffer("running_mean", (c,), np.float32, 0.0)
        self._add_buffer("running_var", (c,), np.float32, 1.0)
        self._add_buffer("num_batches_tracked", (), np.int64, 0)
        self._cache = None

    @property
    def running_mean(self):
        return self._buffers["running_mean"]

    @property
    def running_var(self):
        return self._buffers["running_var"]

    @property
    def num_batches_tracked(self):
        return self._buffers["num_batches_tracked"]

    def _uses_batch_stats(self):
        return self.training and (self.weight.trainable or self.bias.trainable)

    def _track(self, mean, var, n):
        """Update the running statistics from a batch's float64 mean and biased variance over n values."""
        m = self.momentum
        rm, rv = self.running_mean, self.running_var
        rm[...] = (1.0 - m) * rm + m * mean
        rv[...] = (1.0 - m) * rv + m * var * (n / (n - 1))
        self.num_batches_tracked[...] += 1

    def forward(self, x):
        _check_input(x, "BatchNorm2d", 4)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: input has {x.shape[1]} channels, expected num_features={self.num_features}")
        # NumPy's reductions sum in an order that depends on the memory layout:
        # an explicit C-contiguous copy makes the result layout-independent.
        x = np.ascontiguousarray(x)
        # An empty batch has no statistics: it takes the running-stats path (empty output, zero grads).
        batch = bool(self._uses_batch_stats() and x.size)
        if batch:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            if n <= 1:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel when training, got input {x.shape}")
        if x.dtype == np.float32 and get_backend() != "numpy":
            return self._forward_core(x if x.flags.aligned else x.copy(), batch)
        dt = x.dtype
        shape = (1, -1, 1, 1)
        if batch:
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            xc = x - mean.astype(dt).reshape(shape)
            var = np.mean(np.square(xc, dtype=np.float64), axis=(0, 2, 3))
            self._track(mean, var, n)
            invstd = (1.0 / np.sqrt(var + self.eps)).astype(dt)
        else:
            xc = x - _as(self.running_mean, dt).reshape(shape)
            invstd = (1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)).astype(dt)
        xhat = xc * invstd.reshape(shape)
        y = xhat * _as(self.weight.data, dt).reshape(shape) + _as(self.bias.data, dt).reshape(shape)
        self._cache = (False, xhat, None, invstd, batch)
        return y

    def _forward_core(self, x, batch):
        """The float32 forward on the C++ kernels; caches x (not a normalised copy) for backward."""
        w, b = _f32c(self.weight.data), _f32c(self.bias.data)
        if batch:
            y, mean, var, invstd = _core.batch_norm_forward_train(x, w, b, self.eps)
            self._track(mean, var, x.shape[0] * x.shape[2] * x.shape[3])
            mean = mean.astype(np.float32)
        else:
            mean, scale, invstd = self._running_affine()
            y = _core.batch_norm_forward_apply(x, mean, scale, b)
        self._cache = (True, x, mean, invstd, batch)
        return y

    def _running_affine(self):
        """``(mean, scale, invstd)`` in float32 for ``y = (x - mean) * scale + bias`` with the running statistics.

        Computed in float64 from the live buffers and weight; the planned
        inference forward (``striate._plan``) calls it too, so both give the same bits.
        """
        inv64 = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        scale = (inv64 * self.weight.data.astype(np.float64)).astype(np.float32)
        return _f32c(self.running_mean), scale, inv64.astype(np.float32)

    def backward(self, dy):
        core, saved, mean, invstd, batch = self._saved("_cache")
        self._check_dy(dy, saved.shape)
        if core:
            dx, dgamma, dbeta = _core.batch_norm_backward(
                _f32c(dy), saved, mean, invstd, _f32c(self.weight.data), batch,
                self.needs_input_grad, self.weight.trainable, self.bias.trainable)
            self._store_grad(self.weight, dgamma)
            self._store_grad(self.bias, dbeta)
            return dx if self.needs_input_grad else None
        xhat = saved
        dt = xhat.dtype
        dy = np.ascontiguousarray(dy, dtype=dt)
        axes = (0, 2, 3)
        shape = (1, -1, 1, 1)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        self._store_grad(self.weight, dgamma if self.weight.trainable else None)
        self._store_grad(self.bias, dbeta if self.bias.trainable else None)
        if not self.needs_input_grad:
            return None
        g = _as(self.weight.data, dt).reshape(shape)
        if not batch:
            return dy * (g * invstd.reshape(shape))
        n = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        # dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        return (g * invstd.reshape(shape)) * (
            dy - (dbeta / n).reshape(shape) - xhat * (dgamma / n).reshape(shape)
        )

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}
