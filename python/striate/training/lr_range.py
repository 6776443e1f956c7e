"""The learning-rate range test: train briefly while the learning rate grows, record the loss.

``lr_range_test`` takes ``train_step`` (the step of ``fit``) once per rate on a
log-spaced grid, smooths the losses and suggests a rate (``suggest_lr``).
``striate.viz.lr_sweep`` runs it and draws the curve.

Not here: the picture (``striate.viz``) or any change to the model passed in
(a model is deep-copied; a factory is called for a fresh one).
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np

from .. import _args, losses, optim
from ..layers.chain import leaves
from .step import NonFiniteError, train_step

__all__ = ["lr_range_test", "suggest_lr", "curve_shape"]


FLAT_DROP = 0.1  # a smoothed loss that never falls by 10% of its starting level is "flat"
FLAT_BAND = 0.005  # on a flat curve, losses within 0.5% of the starting level of the lowest are as low


def _skip(n):
    """The first steps, dominated by the smoothing warm-up, that the rules ignore."""
    return max(1, n // 10)


def curve_shape(lrs, smooth):
    """``(shape, drop)``: what the smoothed loss did over the sweep, and by how much it fell.

    The warm-up steps (the first tenth, where the bias-corrected average is
    one or two batches' noise) are left out. ``drop`` is the fall from the
    starting level (the first step after the warm-up) to the lowest point
    after it, relative to the starting level. ``shape`` is ``"rising"`` when
    that lowest point comes right at the start and the loss ends higher (it
    only went up), else ``"flat"`` when ``drop`` is below ``FLAT_DROP`` (the
    sweep never found a rate that makes progress within its steps), else
    ``"falling"`` when the lowest point is in the last tenth (the loss still
    fell at ``lr_max``), else ``"valley"``.
    """
    smooth = np.asarray(smooth, np.float64)
    n = len(smooth)
    skip = min(_skip(n), n - 1)
    start = float(smooth[skip])
    ilow = skip + int(np.argmin(smooth[skip:]))
    drop = (start - float(smooth[ilow])) / abs(start) if start else 0.0
    if ilow < 2 * skip and float(smooth[-1]) > start + FLAT_DROP * abs(start):
        return "rising", drop
    if drop < FLAT_DROP:
        return "flat", drop
    if ilow >= n - _skip(n):
        return "falling", drop
    return "valley", drop


def suggest_lr(lrs, smooth):
    """``(suggested lr, method, lr of steepest descent or None, lr of the minimum)``.

    The suggestion is where the smoothed loss falls fastest against log(lr),
    searched only before the loss first leaves its running minimum (by a
    tenth of its total fall) and at points on that minimum (``"steepest"``),
    so noise on a plateau, a fall after a bump or the rise towards
    divergence is never picked. On a flat curve (see ``curve_shape``) it is
    the largest lr after the warm-up steps whose loss is within ``FLAT_BAND``
    (of the starting level) of the lowest, divided by 10: the top of the
    plateau, however the noise placed its lowest point. When the
    minimum comes within the first steps of a curve that then rises, the lr
    of the minimum / 10 (both ``"min/10"``): the rates just below divergence, divided by 10,
    train with SGD and momentum where the noise of a flat curve does not.
    """
    lrs = np.asarray(lrs, np.float64)
    smooth = np.asarray(smooth, np.float64)
    imin = int(np.argmin(smooth))
    lr_min_loss = float(lrs[imin])
    skip = _skip(len(lrs))
    shape, _ = curve_shape(lrs, smooth)
    if shape != "flat" and imin - skip >= 3:
        slope = np.gradient(smooth, np.log(lrs))
        running = np.minimum.accumulate(smooth)
        # the search stops where the loss first leaves its running minimum (by a tenth of its total fall)
        margin = 0.1 * (smooth[skip] - smooth[imin])
        left = np.flatnonzero(smooth[skip:] - running[skip:] > margin)
        end = min(imin + 1, skip + int(left[0]) if len(left) else len(lrs))
        idx = np.arange(skip, end)
        idx = idx[smooth[idx] <= running[idx]]  # on its running minimum: a new low
        if len(idx):
            k = int(idx[np.argmin(slope[idx])])
            if slope[k] < 0:
                lr = float(lrs[k])
                return lr, "steepest", lr, lr_min_loss
    if shape == "flat" and len(lrs) > skip:
        # On a flat curve where the lowest point falls is noise: take the largest lr (after the
        # warm-up, whose values are one or two batches' noise) still within FLAT_BAND of the lowest
        # loss, i.e. the top of the plateau just before the loss rises.
        after = smooth[skip:]
        near = np.flatnonzero(after <= after.min() + FLAT_BAND * abs(float(smooth[skip])))
        return float(lrs[skip + int(near[-1])]) / 10, "min/10", None, lr_min_loss
    return lr_min_loss / 10, "min/10", None, lr_min_loss


def _is_model(obj):
    return not isinstance(obj, type) and hasattr(obj, "parameters") and hasattr(obj, "backward")


def _fresh_model(model_factory_or_model):
    if _is_model(model_factory_or_model):
        return copy.deepcopy(model_factory_or_model)
    if callable(model_factory_or_model):
        model = model_factory_or_model()
        if not _is_model(model):
            raise TypeError(f"the model factory must return a Sequential, got {type(model).__name__}")
        return model
    raise TypeError(
        f"`model_factory_or_model` must be a Sequential or a callable returning one, "
        f"got {type(model_factory_or_model).__name__}"
    )


def _check(x, y, lr_min, lr_max, steps, batch_size, beta, diverge, seed):
    for name, v in (("lr_min", lr_min), ("lr_max", lr_max)):
        _args.positive_real(v, name)
    if lr_min >= lr_max:
        raise ValueError(f"`lr_min` must be below `lr_max`, got {lr_min!r} >= {lr_max!r}")
    _args.int_at_least(steps, "steps", 2)
    _args.int_at_least(batch_size, "batch_size", 1)
    _args.int_at_least(seed, "seed", 0)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ValueError(f"`beta` must be in [0, 1), got {beta!r}")
    if isinstance(diverge, bool) or not isinstance(diverge, numbers.Real) or not diverge > 1:
        raise ValueError(f"`diverge` must be a number > 1, got {diverge!r}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2 or x.shape[0] < 1:
        raise TypeError(
            f"`x` must be a non-empty float32 numpy.ndarray (N, ...), got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}"
        )
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` has shape {y.shape}, but `x` has {x.shape[0]} samples")
    return y


def lr_range_test(
    model_factory_or_model,
    x,
    y,
    lr_min=1e-5,
    lr_max=1.0,
    steps=100,
    *,
    batch_size=32,
    loss="cross_entropy",
    momentum=0.9,
    beta=0.98,
    diverge=4.0,
    seed=0,
):
    """Learning-rate range test: train briefly while the lr grows exponentially.

    Step ``i`` of ``steps`` takes ``train_step`` on one mini-batch with SGD at
    ``lr_min * (lr_max / lr_min) ** (i / (steps - 1))``, a log-spaced grid. The
    loss is smoothed with a bias-corrected exponential moving average
    (``beta``); the test stops early when the smoothed loss exceeds
    ``diverge`` times its best value, or when a loss or gradient is not
    finite. The model is never changed: a factory is called for a fresh
    model, a model is deep copied (so the test starts from its current
    weights). Batches are drawn from a generator seeded with ``seed``, and
    Dropout layers get their own seeded generators, so the test is
    reproducible and leaves striate's global RNG alone.

    Parameters
    ----------
    model_factory_or_model : Sequential or callable returning one
    x : ndarray, float32, (N, C, H, W)
    y : ndarray
        Labels or targets for ``loss``.
    lr_min, lr_max : float, default 1e-5 and 1.0
    steps : int, default 100
    batch_size : int, default 32
    loss : str or striate.losses.Loss, default "cross_entropy"
    momentum : float, default 0.9
    beta : float in [0, 1), default 0.98
    diverge : float > 1, default 4.0
    seed : int, default 0

    Returns
    -------
    dict
        ``lrs`` and ``losses`` (smoothed) for the steps run, ``raw_losses``,
        ``suggested_lr``, ``method`` (``"steepest"`` or ``"min/10"``, see
        ``suggest_lr``), ``lr_steepest`` (None when undefined),
        ``lr_min_loss``, ``diverged`` (whether the test stopped early), and
        ``shape`` and ``drop`` (see ``curve_shape``: ``"flat"`` when the
        smoothed loss never fell by 10%).
    """
    model = _fresh_model(model_factory_or_model)
    y = _check(x, y, lr_min, lr_max, steps, batch_size, beta, diverge, seed)
    loss_fn = losses.get_loss(loss)
    gen = np.random.default_rng(seed)
    for k, layer in enumerate(l for l in leaves(model) if hasattr(l, "set_rng")):
        layer.set_rng(np.random.default_rng([seed, k]))
    model.train()
    opt = optim.SGD(model.parameters(), lr=float(lr_min), momentum=float(momentum))
    grid = float(lr_min) * (float(lr_max) / float(lr_min)) ** (np.arange(steps) / (steps - 1))
    n = x.shape[0]
    order = gen.permutation(n)
    pos = 0
    lrs, raw, smooth = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    for i, lr in enumerate(grid):
        if pos + batch_size > n:
            order, pos = gen.permutation(n), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        opt.lr = float(lr)
        try:
            _, value = train_step(model, x[idx], y[idx], loss_fn, opt, epoch=1, step=i + 1)
        except NonFiniteError as exc:
            diverged = True
            if exc.loss is None:
                break
            value = exc.loss  # the loss was finite, a gradient was not: record it, then stop
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (i + 1))
        lrs.append(float(lr))
        raw.append(value)
        smooth.append(s)
        best = min(best, s)
        if diverged or (i > 0 and s > diverge * best):
            diverged = True
            break
    if not lrs:
        raise ValueError(f"lr_range_test: the loss is not finite at lr_min={lr_min!r}")
    suggested, method, steepest, at_min = suggest_lr(lrs, smooth)
    shape, drop = curve_shape(lrs, smooth)
    return {
        "shape": shape,
        "drop": drop,
        "lrs": lrs,
        "losses": smooth,
        "raw_losses": raw,
        "suggested_lr": suggested,
        "method": method,
        "lr_steepest": steepest,
        "lr_min_loss": at_min,
        "diverged": diverged,
    }
