"""Drawing into files with matplotlib's Agg canvas: the figure helpers and the training curves.

``figure`` makes a Figure on an Agg canvas (no display, no pyplot global
state) or raises ImportError naming the ``[viz]`` extra; ``save`` writes it to
a path whose extension picks the format. ``plot_history`` draws the loss and
accuracy curves of a ``History``; ``History.plot`` and ``striate.viz`` use it.

Not here: any computation on a model (``striate.viz`` draws what others
compute), and nothing imports matplotlib before a drawing is asked for.
"""

from __future__ import annotations

import os

__all__ = ["figure", "check_path", "save", "plot_history"]

_DPI = 100
_EXTRA = "pip install 'striate[viz]'"


def figure(func, figsize):
    """A matplotlib Figure on an Agg canvas, or ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"striate.viz.{func} needs matplotlib, the [viz] extra: {_EXTRA}") from None
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save(fig, path):
    fig.savefig(path, dpi=_DPI)
    return path


def plot_history(history, path):
    """Draw training and validation loss and accuracy against the epoch.

    Parameters
    ----------
    history : striate.training.History or dict of str to list
        Uses ``loss``, ``val_loss``, ``accuracy`` and ``val_accuracy`` when
        present; ``History.epoch`` (0-based) gives the x values, else 1, 2, ...
    path : str or os.PathLike

    Returns
    -------
    str
        ``path``.
    """
    path = check_path(path)
    data = getattr(history, "history", history)
    if not isinstance(data, dict):
        raise TypeError(f"`history` must be a History or a dict of lists, got {type(history).__name__}")
    if not data.get("loss"):
        raise ValueError("`history` has no 'loss' values to plot")
    n = len(data["loss"])
    epochs = [e + 1 for e in getattr(history, "epoch", [])] or list(range(1, n + 1))
    metrics = [m for m in ("loss", "accuracy") if data.get(m) or data.get("val_" + m)]
    fig = figure("plot_history", (4.5 * len(metrics), 3.5))
    axes = [fig.add_subplot(1, len(metrics), k + 1) for k in range(len(metrics))]
    for ax, metric in zip(axes, metrics):
        for key, style, label in ((metric, "o-", "train"), ("val_" + metric, "s--", "validation")):
            values = data.get(key)
            if values:
                ax.plot(epochs[: len(values)], values, style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.88, wspace=0.3)
    return save(fig, path)
