"""Pictures of a model: conv filters, activation maps, training curves and an LR range test.

Every picture is drawn with matplotlib's Agg canvas straight into a file
(PNG, or whatever the path's extension names), so no display and no pyplot
global state is involved. matplotlib is the optional extra ``[viz]``: without
it each drawing function raises ImportError naming ``pip install
'striate[viz]'``. ``lr_sweep`` computes without matplotlib and needs it only to
draw (when ``path`` is given): the test itself is
``striate.training.lr_range_test``, whose step is the one ``fit`` takes, and
this module only draws its result.

Deliberately not here: interactive plots, anything that changes the model
passed in (``activation_maps`` restores its modes, ``lr_sweep`` trains a copy),
or text tables (``striate.introspect``).
"""

from __future__ import annotations

import math

import numpy as np

from . import _args
from . import layers as L
from ._plot import check_path as _check_path
from ._plot import figure as _figure
from ._plot import plot_history  # noqa: F401  (re-exported)
from ._plot import save as _save
from ._profile import _Preserved
from .layers.chain import layers_of
from .training.lr_range import lr_range_test
from .training.lr_range import suggest_lr as _suggest  # noqa: F401  (the suggestion rule, by its old name)

__all__ = ["filters", "activation_maps", "plot_history", "lr_sweep"]


def _mosaic(tiles, cols, pad=1, fill=1.0):
    """Tiles (n, h, w[, 3]) in [0, 1] laid out ``cols`` per row with ``pad`` pixels of ``fill``
    between (NaN draws as the background)."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + tiles.shape[3:]
    out = np.full(shape, fill, dtype=np.float64)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tiles[k]
    return out


def _int_arg(value, name, lo=1):
    return _args.int_at_least(value, name, lo)


# ----------------------------------------------------------------------------- filters


def filters(layer, path, *, max_filters=64, max_inputs=16):
    """Draw a grid of a convolution's filters.

    A filter with 3 input channels is drawn as one colour tile. Otherwise
    each (output, input) kernel slice is a grey tile: one row per output
    channel and one column per input channel, or, with a single input
    channel, the filters in a near-square grid. All tiles share one scale,
    symmetric about zero (mid-grey is 0, white the largest positive weight),
    so magnitudes compare across filters.

    Parameters
    ----------
    layer : striate.layers.Conv2d
    path : str or os.PathLike
        The image file to write (the extension picks the format).
    max_filters : int, default 64
        Draw at most this many output channels.
    max_inputs : int, default 16
        Draw at most this many input channels per filter.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> import striate as st
    >>> filters(st.zoo.lenet5()[0], "/tmp/striate_filters.png")
    '/tmp/striate_filters.png'
    """
    if not isinstance(layer, L.Conv2d):
        raise TypeError(f"`layer` must be a striate.layers.Conv2d, got {type(layer).__name__}")
    path = _check_path(path)
    max_filters = _int_arg(max_filters, "max_filters")
    max_inputs = _int_arg(max_inputs, "max_inputs")
    w = np.asarray(layer.weight.data, dtype=np.float64)[:max_filters]
    out_c, in_c, kh, kw = w.shape
    scale = float(np.max(np.abs(w))) or 1.0
    norm = np.clip(w / (2 * scale) + 0.5, 0.0, 1.0)
    if in_c == 3:
        tiles = norm.transpose(0, 2, 3, 1)  # (out, kh, kw, 3)
        cols = math.ceil(math.sqrt(out_c))
        note = "RGB"
    elif in_c == 1:
        tiles = norm[:, 0]
        cols = math.ceil(math.sqrt(out_c))
        note = "1 input channel"
    else:
        shown = min(in_c, max_inputs)
        tiles = norm[:, :shown].reshape(out_c * shown, kh, kw)
        cols = shown
        note = f"rows: output channels, columns: input channels ({shown} of {in_c})"
    grid = _mosaic(tiles, cols)
    height = max(2.0, min(10.0, grid.shape[0] / 8))
    width = max(4.0, min(14.0, height * grid.shape[1] / grid.shape[0]))
    # The title is wrapped to the figure's width (about 15 characters per inch at 8 points) and
    # given the room its lines need, so neither side nor top clips it.
    lines = _wrap(f"{layer!r}: {out_c} filters", width) + _wrap(f"{note}; grey 0, |w| <= {scale:.3g}", width)
    top = 0.2 + 0.16 * len(lines)
    fig = _figure("filters", (width, height + top))
    ax = fig.add_axes((0.02, 0.02, 0.96, height / (height + top) - 0.04))
    ax.imshow(grid, cmap=None if grid.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle("\n".join(lines), fontsize=8, y=1 - 0.08 / (height + top), va="top")
    return _save(fig, path)


def _wrap(text, width_in):
    """``text`` wrapped to lines that fit ``width_in`` inches at 8 points (long words are split)."""
    import textwrap

    return textwrap.wrap(text, max(20, int(width_in * 15) - 4)) or [""]


# ----------------------------------------------------------------------------- activation maps


def _as_sample(x):
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"`x` must be a float numpy.ndarray, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"`x` must be one image (C, H, W) or (1, C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _unit(a):
    """Scale to [0, 1] (a constant map becomes 0)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a, dtype=np.float64)


def activation_maps(model, x, path, *, max_maps=16):
    """Draw the input and the output maps of every Conv2d layer for one image.

    The model runs in evaluation mode (its modes are restored afterwards).
    Row 0 is the input (colour for 3 channels, else channel 0); each further
    row shows the first ``max_maps`` channels of one convolution's output,
    each map scaled to its own min..max.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (C, H, W) or (1, C, H, W)
    path : str or os.PathLike
    max_maps : int, default 16

    Returns
    -------
    str
        ``path``.
    """
    path = _check_path(path)
    max_maps = _int_arg(max_maps, "max_maps")
    x = _as_sample(x)
    layers = layers_of(model)
    convs = [i for i, l in enumerate(layers) if isinstance(l, L.Conv2d)]
    if not convs:
        raise ValueError("activation_maps: `model` has no Conv2d layer")
    maps = {}
    with _Preserved(model):
        model.eval()
        a = x
        for i, layer in enumerate(layers[: convs[-1] + 1]):
            a = layer(a)
            if i in convs:
                maps[i] = np.asarray(a[0], dtype=np.float64)
    rows = 1 + len(convs)
    widest = max(min(max_maps, maps[i].shape[0]) for i in convs)
    fig = _figure("activation_maps", (min(16.0, 0.9 * widest + 2.0), 1.25 * rows + 0.4))
    top = 1.0 - 0.4 / (1.25 * rows + 0.4)
    h = top / rows
    inp = x[0].astype(np.float64)
    img = _unit(inp.transpose(1, 2, 0)) if inp.shape[0] == 3 else _unit(inp[0])
    ax = fig.add_axes((0.1, top - h + 0.01, 0.12, h - 0.02))
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
    ax.set_anchor("W")
    ax.set_axis_off()
    ax.set_title(f"input {tuple(x.shape[1:])}", fontsize=8)
    for r, i in enumerate(convs, start=1):
        m = maps[i][:max_maps]
        tiles = np.stack([_unit(t) for t in m])
        ax = fig.add_axes((0.1, top - (r + 1) * h + 0.01, 0.88, h - 0.02))
        ax.imshow(_mosaic(tiles, len(tiles), fill=np.nan), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_anchor("W")
        ax.set_axis_off()
        ax.text(-0.01, 0.5, f"layer {i}\n{maps[i].shape[0]} maps\n{maps[i].shape[1]}x{maps[i].shape[2]}",
                transform=ax.transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("activation maps of the Conv2d layers (each map scaled to its range)", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- LR range test


def _sweep_ylim(smooth):
    """y-limits for the sweep plot: the lowest smoothed loss up to a little above the starting level."""
    smooth = np.asarray(smooth, np.float64)
    lo = float(smooth.min())
    start = float(smooth[: int(np.argmin(smooth)) + 1].max())
    span = max(start - lo, 0.02 * abs(lo), 1e-3)
    return lo - 0.1 * span, start + 0.5 * span


def lr_sweep(
    model_factory_or_model,
    x,
    y,
    path=None,
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
    """Learning-rate range test (``striate.training.lr_range_test``), drawn when ``path`` is given.

    Step ``i`` of ``steps`` trains one mini-batch with SGD at
    ``lr_min * (lr_max / lr_min) ** (i / (steps - 1))``, a log-spaced grid. The
    loss is smoothed with a bias-corrected exponential moving average
    (``beta``); the test stops early when the smoothed loss exceeds
    ``diverge`` times its best value or a loss is not finite. The model is
    never changed: a factory is called for a fresh model, a model is deep
    copied (so the sweep starts from its current weights). Batches are drawn
    from a generator seeded with ``seed``, and Dropout layers get their own
    seeded generators, so the sweep is reproducible and leaves striate's
    global RNG alone.

    The suggested lr is where the smoothed loss falls fastest against
    log(lr), searched only where it is at its running minimum, before its
    overall minimum; on a flat curve (the smoothed loss never falls by 10%),
    or when the minimum comes within the first steps, it is the lr of the
    minimum / 10 (``striate.training.lr_range.suggest_lr``). The plot's y-axis
    is clipped to the useful range: from just below the lowest smoothed loss
    to a little above the starting level, so a spike near divergence does
    not squash the curve.

    Parameters
    ----------
    model_factory_or_model : Sequential or callable returning one
    x : ndarray, float32, (N, C, H, W)
    y : ndarray
        Labels or targets for ``loss``.
    path : str or os.PathLike, optional
        Draw loss against lr (log axis) to this file; needs matplotlib.
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
        ``suggested_lr``, ``method`` (``"steepest"`` or ``"min/10"``),
        ``lr_steepest`` (None when undefined), ``lr_min_loss``, ``diverged``
        (whether the test stopped early), ``shape`` and ``drop`` (``"flat"``
        when the smoothed loss never fell by 10%; see
        ``striate.training.lr_range.curve_shape``) and ``path``.
    """
    if path is not None:
        path = _check_path(path)
        _figure("lr_sweep", (1, 1))  # fail before training when matplotlib is missing
    result = lr_range_test(
        model_factory_or_model, x, y, lr_min, lr_max, steps, batch_size=batch_size, loss=loss,
        momentum=momentum, beta=beta, diverge=diverge, seed=seed,
    )
    result["path"] = path
    lrs, raw, smooth = result["lrs"], result["raw_losses"], result["losses"]
    suggested, method = result["suggested_lr"], result["method"]
    if path is not None:
        fig = _figure("lr_sweep", (6.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(lrs, raw, color="0.75", linewidth=0.8, label="loss")
        ax.plot(lrs, smooth, color="C0", label=f"smoothed (beta={beta:g})")
        ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested lr {suggested:.3g} ({method})")
        ax.set_xscale("log")
        ax.set_ylim(*_sweep_ylim(smooth))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        flat = f" (flat: the loss fell {100 * result['drop']:.1f}%)" if result["shape"] == "flat" else ""
        ax.set_title("learning-rate range test" + flat)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
        _save(fig, path)
    return result
