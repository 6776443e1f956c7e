"""Finite-difference gradient check of a whole model, in float64, on the reference backend.

``gradcheck(model, x, y)`` copies the model to float64, computes every
trainable parameter's gradient with ``model.backward`` and with central
differences of the loss, and reports the largest relative error per parameter.
It is the check a user runs after writing a layer, and the one the tests run
on whole stacks.

Deliberately not here: float32 checks (central differences in float32 are too
noisy to be useful), second derivatives, or any change to the model passed in:
it works on a deep copy, and the backend and the global RNG are restored.
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np

from . import _config
from . import layers as L
from .layers.chain import leaves
from .losses import get_loss

__all__ = ["gradcheck"]


def _relative_error(analytic, numeric, atol):
    """``max|a - n| / max(max|a|, max|n|, atol)``."""
    scale = max(float(np.max(np.abs(analytic), initial=0.0)), float(np.max(np.abs(numeric), initial=0.0)), atol)
    return float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale


def gradcheck(model, x, y, loss="cross_entropy", eps=1e-6, *, atol=1e-4, max_elements=None, input_grad=False, seed=0):
    """Compare ``model.backward``'s gradients with central finite differences.

    The model is deep-copied and converted to float64; ``x`` is cast to
    float64; every op runs on ``striate.reference`` (the backend is set to
    ``"numpy"`` for the duration and restored afterwards). The copy keeps the
    model's mode: in training mode BatchNorm uses batch statistics, and every
    Dropout layer draws the same mask for each evaluation (its generator is
    re-seeded from ``seed`` before every forward).

    The error of a parameter is ``max|analytic - numeric| / max(max|analytic|,
    max|numeric|, atol)`` over its checked elements: the max-norm relative
    error, so elements whose gradient is nearly zero do not dominate, and a
    parameter whose whole gradient is below ``atol`` (such as a conv bias
    followed by BatchNorm, whose gradient is exactly zero) is compared in
    absolute terms against the ~1e-10 rounding noise of the differences.
    Values around 1e-8 are normal; above 1e-5 something is wrong (or an input
    sits within ``eps`` of a kink of ReLU or max pooling).

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...)
        A small batch (every checked element costs two forward passes).
    y : ndarray
        Targets for ``loss``: int labels, or (N, classes) rows.
    loss : str or striate.losses.Loss, default "cross_entropy"
    eps : float, default 1e-6
        The finite-difference step.
    atol : float, default 1e-4
        The smallest gradient scale the error is divided by.
    max_elements : int, optional
        Check at most this many elements of each parameter, chosen at random
        (from ``seed``); default all.
    input_grad : bool, default False
        Also check the gradient with respect to ``x``, reported as ``"input"``.
    seed : int, default 0

    Returns
    -------
    dict of str to float
        ``{parameter name: max relative error}`` for every trainable
        parameter, in ``model.parameters()`` order (names as ``state_dict``).

    Examples
    --------
    >>> import numpy as np, striate as st
    >>> from striate import layers as L
    >>> m = st.Sequential([L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(8, 3)])
    >>> x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    >>> errors = gradcheck(m, x, np.array([0, 2]))
    >>> sorted(errors), max(errors.values()) < 1e-6
    (['0.bias', '0.weight', '3.bias', '3.weight'], True)
    """
    if not hasattr(model, "named_parameters") or not hasattr(model, "backward"):
        raise TypeError(f"`model` must be a striate Sequential, got {type(model).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"`x` must be a float numpy.ndarray, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a positive finite number, got {eps!r}")
    if isinstance(atol, bool) or not isinstance(atol, numbers.Real) or not (math.isfinite(atol) and atol > 0):
        raise ValueError(f"`atol` must be a positive finite number, got {atol!r}")
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, numbers.Integral) or max_elements < 1
    ):
        raise ValueError(f"`max_elements` must be a positive int or None, got {max_elements!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    loss_fn = get_loss(loss)
    if not isinstance(loss, str):
        loss_fn = copy.deepcopy(loss_fn)

    saved_backend = _config.get_backend()
    _config.set_backend("numpy")
    try:
        m = copy.deepcopy(model)
        m.astype(np.float64)
        for p in m.parameters():
            p.data = np.ascontiguousarray(p.data)
        x64 = np.array(x, dtype=np.float64, copy=True)
        dropouts = [layer for layer in leaves(m) if isinstance(layer, L.Dropout)]

        def loss_at(inp):
            for j, layer in enumerate(dropouts):
                layer.set_rng(np.random.default_rng([seed, j]))
            return float(loss_fn(m(inp), y))

        loss_at(x64)
        dx = m.backward(loss_fn.backward())
        params = [(name, p) for name, p in m.named_parameters() if p.trainable]
        for name, p in params:
            if p.grad is None:
                raise RuntimeError(f"gradcheck: backward left no gradient for {name}")
        targets = [(name, p.data, p.grad.copy()) for name, p in params]
        if input_grad:
            targets.append(("input", x64, np.asarray(dx, dtype=np.float64)))

        pick = np.random.default_rng(seed)
        errors = {}
        for name, data, analytic in targets:
            flat = data.reshape(-1)  # a view: every checked array is contiguous
            idx = np.arange(flat.size)
            if max_elements is not None and flat.size > max_elements:
                idx = np.sort(pick.choice(flat.size, size=int(max_elements), replace=False))
            numeric = np.empty(idx.size)
            for k, i in enumerate(idx):
                orig = flat[i]
                flat[i] = orig + eps
                up = loss_at(x64)
                flat[i] = orig - eps
                down = loss_at(x64)
                flat[i] = orig
                numeric[k] = (up - down) / (2 * eps)
            errors[name] = _relative_error(analytic.reshape(-1)[idx], numeric, float(atol))
        return errors
    finally:
        _config.set_backend(saved_backend)
