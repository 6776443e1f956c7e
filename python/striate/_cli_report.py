"""``striate evaluate --report / --plot``: the per-class report, the confusion matrix as text, and its figure.

``report`` prints ``striate.metrics.classification_report`` and the
confusion matrix (rows the true class, columns the predicted one, as
``striate.metrics.confusion_matrix``), and draws the matrix with class names
through matplotlib's Agg canvas (``striate._plot``) when a path is given.

Not here: computing predictions (``striate.cli``) or the metrics themselves.
"""

from __future__ import annotations

import numpy as np

from . import _plot, metrics

__all__ = ["confusion_text", "plot_confusion", "report"]


def _names(names, k):
    """Class names for ``k`` classes: the given ones when they cover them, else the numbers."""
    if names is not None and len(names) >= k:
        return [str(n) for n in names[:k]]
    return [str(i) for i in range(k)]


def confusion_text(cm, names):
    """The matrix as aligned text: one row per true class, a column per predicted class."""
    width = max(5, *(len(n) for n in names))
    col = max(4, len(str(int(cm.max()))) + 1)
    short = [n if len(n) <= col else n[: col - 1] + "." for n in names]
    lines = ["confusion matrix (rows: true class, columns: predicted)",
             f"{'':>{width}s} " + "".join(f"{n:>{col + 1}s}" for n in short)]
    for name, row in zip(names, cm):
        lines.append(f"{name:>{width}s} " + "".join(f"{int(v):>{col + 1}d}" for v in row))
    return "\n".join(lines)


def plot_confusion(cm, names, path, title=None):
    """Draw the confusion matrix with its counts and class names to ``path`` (needs matplotlib)."""
    path = _plot.check_path(path)
    k = cm.shape[0]
    side = min(12.0, 2.5 + 0.55 * k)
    fig = _plot.figure("plot_confusion", (side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    shade = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shade[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return _plot.save(fig, path)


def report(y_true, y_pred, names=None, plot=None, title=None, show=True):
    """Print the classification report and the confusion matrix (``show``); draw it to ``plot`` if given."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = int(max(y_true.max(), y_pred.max())) + 1
    if names is not None:
        k = max(k, len(names))
    labels = _names(names, k)
    cm = metrics.confusion_matrix(y_true, y_pred, num_classes=k)
    if show:
        print(metrics.classification_report(y_true, y_pred, class_names=labels), end="")
        print(confusion_text(cm, labels))
    if plot is not None:
        plot_confusion(cm, labels, plot, title)
