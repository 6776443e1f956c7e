"""Evaluation: ``evaluate`` and ``predict``, the model-mode guard and the counts the loop shares.

``evaluate`` gives the mean loss and accuracy of a model on arrays (converted
batch by batch, like in ``fit``) or on a batch source (one pass; a
``DataLoader`` is left as it was); ``run_evaluation`` adds the top-k
accuracies ``fit(..., metrics=...)`` asks for. ``predict`` gives the class
probabilities. ``_mode`` runs a block with the model in training or
evaluation mode and restores every layer's mode afterwards.

Not here: training (``striate.training.loop``), the metrics on labels
(``striate.metrics``), losses themselves.
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import _args, _core, losses
from .._config import get_backend
from ..datasets.loader import ArrayDataset
from ..layers.chain import layers_of, leaves
from .data import as_targets, check_input, check_targets_fit, chunks, to_float32
from .sources import is_source, source_batches

__all__ = ["evaluate", "predict", "run_evaluation"]

# The loss each model was last trained with, so ``evaluate`` reports the same one.
_last_loss: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- the model protocol


def _get_modes(model):
    return getattr(model, "training", None), [getattr(layer, "training", True) for layer in leaves(model)]


def in_mode(model, training):
    """Whether ``model`` and every layer below it already are in training (or evaluation) mode."""
    return (getattr(model, "training", None) in (None, training)
            and all(getattr(layer, "training", True) == training for layer in leaves(model)))


def _set_modes(model, modes):
    top, per_layer = modes
    if top is not None:
        model.train() if top else model.eval()
    for layer, mode in zip(leaves(model), per_layer):
        layer.train() if mode else layer.eval()


class _mode:
    """Run a block with the model in training or evaluation mode, then restore every layer's mode.

    A class rather than a generator: ``predict`` of one image takes some tens
    of microseconds, and this guard is on its path.
    """

    __slots__ = ("model", "training", "saved")

    def __init__(self, model, training):
        self.model, self.training, self.saved = model, training, None

    def __enter__(self):
        model, training = self.model, self.training
        if in_mode(model, training):
            return  # every layer already has that mode (predict on an eval model): nothing to switch or restore
        self.saved = _get_modes(model)
        model.train() if training else model.eval()

    def __exit__(self, *exc):
        if self.saved is not None:
            _set_modes(self.model, self.saved)
        return False


# --------------------------------------------------------------------------- losses and counts


def _resolve_loss(loss):
    try:
        return losses.get_loss(loss)
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"`loss` must be 'cross_entropy', 'squared_error' or a loss object, got {loss!r}"
        ) from exc


def _remember_loss(model, loss_fn):
    try:
        _last_loss[model] = loss_fn
    except TypeError:
        pass


def _n_correct(outputs, y):
    pred = np.argmax(outputs, axis=1)
    truth = y if y.ndim == 1 else np.argmax(y, axis=1)
    return int(np.count_nonzero(pred == truth))


def _top_k_correct(outputs, y, k):
    """How many rows rank their true class among the ``k`` highest outputs (ties: lower index first).

    The rule of ``striate.metrics.top_k_accuracy``.
    """
    truth = y if y.ndim == 1 else np.argmax(y, axis=1)
    true_score = outputs[np.arange(truth.size), truth][:, None]
    cols = np.arange(outputs.shape[1])[None, :]
    rank = np.count_nonzero((outputs > true_score) | ((outputs == true_score) & (cols < truth[:, None])), axis=1)
    return int(np.count_nonzero(rank < k))


# --------------------------------------------------------------------------- evaluate / predict


def _array_batches(x, y, batch_size):
    """``(x_batch float32, y_batch)`` chunks of checked arrays, converted one at a time."""
    for sl in chunks(x.shape[0], batch_size):
        yield to_float32(x[sl]), None if y is None else y[sl]


def _eval_batches(x, y, batch_size, targets=True):
    """The batches ``evaluate``/``predict`` run: chunks of arrays, or one pass over a source."""
    if isinstance(x, ArrayDataset) and y is None:
        x, y = x.x, x.y
    if y is None and not isinstance(x, np.ndarray) and is_source(x):
        return source_batches(x, "x", targets)
    if y is None and targets:
        raise TypeError(
            f"`y` is required unless `x` is a DataLoader, an ArrayDataset or an iterable of (x_batch, y_batch) "
            f"pairs, got {type(x).__name__}"
        )
    x = check_input(x)
    return _array_batches(x, None if y is None else as_targets(y, x.shape[0]), batch_size)


def evaluate(model, x, y=None, batch_size=256, *, loss=None):
    """Mean loss and accuracy of ``model`` on ``(x, y)``, or on a loader, in evaluation mode.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...), ArrayDataset, DataLoader or iterable of (x_batch, y_batch)
        Arrays are converted like in ``fit``, batch by batch (uint8 scaled by
        1/255, float64 cast). A source is read for one pass; a DataLoader
        from the start of its current epoch, and it is left as it was.
    y : ndarray, optional
        Int labels (N,) or targets (N, classes); None with a source.
    batch_size : int, default 256
        Arrays only (a source has its own batches).
    loss : str or loss object, optional
        Default: the loss ``model`` was last trained with by ``fit`` in this
        process, else cross-entropy.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}``; the loss is the mean over samples.
        Each layer's mode is restored afterwards.
    """
    batch_size = _args.int_in(batch_size, "batch_size", 1)
    return run_evaluation(model, x, y, batch_size, loss=loss)


def run_evaluation(model, x, y=None, batch_size=256, *, loss=None, top_k=()):
    """``evaluate`` plus ``"top_<k>_accuracy"`` for every ``k`` in ``top_k`` (what ``fit`` records)."""
    batches = _eval_batches(x, y, batch_size)
    if loss is None:
        try:
            loss_fn = _last_loss.get(model)
        except TypeError:
            loss_fn = None
        loss_fn = loss_fn if loss_fn is not None else _resolve_loss("cross_entropy")
    else:
        loss_fn = _resolve_loss(loss)
    total, correct, seen = 0.0, 0, 0
    top = dict.fromkeys(top_k, 0)
    with _mode(model, False):
        for xb, yb in batches:
            out = model(xb)
            if seen == 0:
                check_targets_fit(yb, out.shape[1])
            total += float(loss_fn(out, yb)) * out.shape[0]
            correct += _n_correct(out, yb)
            for k in top:
                top[k] += _top_k_correct(out, yb, k)
            seen += out.shape[0]
    result = {"loss": total / seen, "accuracy": correct / seen}
    result.update({f"top_{k}_accuracy": c / seen for k, c in top.items()})
    return result


def _softmax(z):
    """The row-wise softmax of the model's outputs ``z`` (2-D float32), as a new array."""
    if z.ndim == 2 and z.shape[1] > 0 and get_backend() != "numpy" and hasattr(_core, "softmax_rows"):
        z = np.array(z, dtype=np.float32, order="C")  # a copy: z may be memory a layer keeps
        _core.softmax_rows(z)
        return z
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict(model, x, batch_size=256):
    """Class probabilities ``(N, classes)`` for ``x``, in evaluation mode.

    The softmax of the model's outputs, or the outputs as they are when the
    model ends in a ``Softmax`` layer. ``x`` is an array (converted batch by
    batch, like in ``fit``), an ``ArrayDataset``, or a source of batches
    (a DataLoader, or an iterable of ``(x_batch, y_batch)`` pairs or of bare
    ``x_batch`` arrays), whose rows come back in the order it yields them
    (use ``DataLoader(..., shuffle=False)`` to keep the data set's order).
    Each layer's mode is restored afterwards.
    """
    batch_size = _args.int_in(batch_size, "batch_size", 1)
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim >= 2 and 0 < x.shape[0] <= batch_size:
        batches = ((np.ascontiguousarray(x), None),)  # one batch, already what _eval_batches would make of it
    else:
        batches = _eval_batches(x, None, batch_size, targets=False)
    softmax_last = ends_in_softmax(model)
    chunks_out = []
    with _mode(model, False):
        for xb, _ in batches:
            chunks_out.append(probabilities(model(xb), softmax_last))
    return chunks_out[0] if len(chunks_out) == 1 else np.concatenate(chunks_out, axis=0)


def ends_in_softmax(model):
    """Whether the last layer of ``model`` is a ``Softmax`` (its outputs are then the probabilities)."""
    layers = layers_of(model)
    return bool(layers) and type(layers[-1]).__name__ == "Softmax"


def probabilities(out, softmax_last):
    """``predict``'s rows from a batch's model outputs: their softmax, or a copy when the model ends in one.

    Both give a new float32 array, so the caller never holds memory a layer may keep.
    """
    out = np.asarray(out, dtype=np.float32)
    return out.copy() if softmax_last else _softmax(out)
