"""The frozen-backbone shortcut of ``fit``: run the frozen, deterministic prefix once, train the head.

For the recipe "freeze the backbone, train the head", ``fit`` (with
``cache_features=True``, the default) asks ``plan`` whether the shortcut is
exact for this call. When it is, the backbone runs once over the inputs (in
evaluation mode, in chunks) and the loop trains ``Head``, a view of the
model's remaining layers, on the cached features: the same loop, the same
step, the same generator draws, so the result is bitwise equal to the
uncached run (see ``plan``).

Not here: the loop itself (``striate.training.loop``), caching on disk, or
anything that changes the model's layers or parameter names.
"""

from __future__ import annotations

import numpy as np

from .. import layers as L
from ..layers.chain import backward_chain, forward_chain, layers_of
from .callbacks import EarlyStopping, LearningRateScheduler
from .data import to_float32

__all__ = ["MAX_CACHE_BYTES", "Head", "cache_split", "plan"]

# Layers whose forward pass is deterministic and, once frozen, the same in
# training and evaluation mode (BatchNorm2d: a frozen layer uses its running
# statistics in both). Dropout and any other layer type are excluded.
_DETERMINISTIC = (
    L.Conv2d, L.MaxPool2d, L.AvgPool2d, L.LPPool2d, L.AdaptiveAvgPool2d, L.GlobalAvgPool2d,
    L.BatchNorm2d, L.ReLU, L.Tanh, L.Sigmoid, L.Softmax, L.Flatten, L.Linear, L.Identity,
)


def _deterministic(layer):
    """A layer of a deterministic type, or a container (Sequential, Residual) of only such layers."""
    return all(isinstance(n, L._Container) or type(n) in _DETERMINISTIC for n in L.nodes(layer))

# Callbacks that only look at the optimizer or at the state of the model they
# are bound to (the whole model, whose backbone the shortcut never changes).
_CALLBACKS_OK = (LearningRateScheduler, EarlyStopping)

# Feature caches above this size fall back to the uncached path.
MAX_CACHE_BYTES = 2 * 1024**3

_CHUNK = 256


def cache_split(model):
    """Where a cacheable backbone ends, or None when there is nothing to cache.

    The backbone is the longest prefix of layers that have no trainable
    parameter and are of a deterministic type (Conv2d, pooling, BatchNorm2d,
    activations, Flatten, Linear, Identity, and containers of only those, such
    as frozen ``Residual`` blocks); it stops before the first layer with a
    trainable parameter, the first Dropout (its mask is random in training
    mode) and the first layer of any other type. Returns None when ``model``
    holds no layers, when that prefix is empty or when no parameter after it
    is trainable.
    """
    if not hasattr(model, "layers") or not hasattr(model, "backward"):
        return None
    layers = layers_of(model)
    split = 0
    while split < len(layers):
        layer = layers[split]
        if not _deterministic(layer) or any(p.trainable for p in layer.parameters()):
            break
        split += 1
    if split == 0 or not any(p.trainable for l in layers[split:] for p in l.parameters()):
        return None
    return split


class Head:
    """The layers of a model from ``split`` on, trained on cached features (the model protocol).

    It shares the model's layer objects and parameters (their names stay the
    model's), so training the head trains the model.
    """

    def __init__(self, layers):
        self.layers = list(layers)

    def __call__(self, x):
        return forward_chain(self.layers, x)

    def backward(self, dloss, input_grad=True):
        return backward_chain(self.layers, dloss, input_grad)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    @property
    def training(self):
        return all(layer.training for layer in self.layers) if self.layers else True

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)


def _features(layers, x, chunk=_CHUNK, max_bytes=None):
    """Run ``layers`` in evaluation mode over ``x`` in chunks; None if the cache would pass ``max_bytes``
    (default ``MAX_CACHE_BYTES``)."""
    max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
    modes = [l.training for l in layers]
    out = None
    try:
        for l in layers:
            l.train(False)
        for start in range(0, x.shape[0], chunk):
            f = to_float32(x[start : start + chunk])
            for l in layers:
                f = l(f)
            if out is None:
                if f.nbytes // f.shape[0] * x.shape[0] > max_bytes:
                    return None
                out = np.empty((x.shape[0],) + f.shape[1:], f.dtype)
            out[start : start + f.shape[0]] = f
        return out
    finally:
        for l, m in zip(layers, modes):
            l.train(m)


def applies(model, *, augment, resume_from, checkpoint, distributed, callbacks):
    """The backbone's end (``cache_split``) when the shortcut is exact for these ``fit`` arguments, else None."""
    if augment is not None or resume_from is not None or checkpoint is not None or distributed:
        return None
    if not all(type(cb) in _CALLBACKS_OK for cb in callbacks):
        return None
    return cache_split(model)


def plan(model, x, x_val, **fit_args):
    """``(head, features, validation features or None)`` when the shortcut applies, else None.

    It applies when all of these hold (otherwise the model is untouched and
    ``fit`` trains the whole model):

    - ``cache_split(model)`` is not None: a non-empty prefix of frozen layers
      of deterministic types (a frozen BatchNorm2d uses its running
      statistics, so training and evaluation mode agree). A Dropout ends the
      prefix: it stays in the head, where ``fit`` seeds its generator as in the
      uncached run;
    - no ``augment``, ``resume_from``, ``checkpoint`` or ``distributed``;
    - every callback is a ``LearningRateScheduler`` or ``EarlyStopping``
      (other callbacks, such as ``ModelCheckpoint`` or ``LayerHealth``, look at
      the backbone's layers run by run);
    - the inputs fit the backbone and the features fit in ``MAX_CACHE_BYTES``;
    - the inputs are not a memmap (such data is meant to be read batch by
      batch), and for uint8 inputs the features take no more memory than the
      inputs themselves (so the cache is never a float32 copy of the data).

    The result is bitwise equal to the uncached run with the same seed: the
    run's generator is drawn from in the same order (shuffling, the Dropout
    generators, all in the head), the backbone never gets gradients in either
    path (backward stops at the first trainable layer), and striate's kernels
    give each sample the same result whatever the batch it is computed in.

    Parameters
    ----------
    model : model protocol
    x : ndarray
        The checked training inputs (before any ``validation_split``); uint8
        or memmapped inputs are converted chunk by chunk.
    x_val : ndarray or None
        The coerced ``validation_data`` inputs.
    **fit_args
        ``augment``, ``resume_from``, ``checkpoint``, ``distributed`` and
        ``callbacks`` as ``fit`` got them.
    """
    split = applies(model, **fit_args)
    if split is None or isinstance(x, np.memmap):
        return None  # memmapped data is read batch by batch, never copied whole
    layers = layers_of(model)
    backbone = layers[:split]
    try:
        # uint8 data is cached only when its features take no more memory than it does.
        if x.dtype == np.uint8:
            feats = _features(backbone, x, _CHUNK, min(MAX_CACHE_BYTES, x.nbytes))
        else:
            feats = _features(backbone, x)
        feats_val = _features(backbone, x_val) if x_val is not None else None
    except (TypeError, ValueError):
        return None  # the data does not fit the model: fit reports it
    if feats is None or (x_val is not None and feats_val is None):
        return None
    return Head(layers[split:]), feats, feats_val
