"""Transfer learning: bundled pretrained weights and feature caching for frozen backbones.

``load_pretrained(model, name)`` fills a model with weights shipped in
``striate/data`` (``pretrained_path(name)``), after checking that the file's
architecture and every tensor's shape and dtype match the model; any mismatch
raises ``striate.io.FormatError`` and leaves the model unchanged.

``cached_fit(model, x, y, **fit_kwargs)`` is the fast path of ``fit`` for the
classic recipe "freeze the backbone, train the head": when the layers before
the first trainable one form a deterministic, frozen backbone, it runs that
backbone once over the data (evaluation mode) and trains only the head, a
``Sequential`` sharing the model's head layer objects, on the cached
features with ``striate.training.fit``. The result is bitwise equal to the
uncached path (see ``cached_fit``). When the shortcut does not apply it returns
None and the caller trains normally.

Deliberately not here: ``freeze``/``unfreeze``/``replace_head`` (methods of
``Sequential``), the training loop itself (``striate.training``), model
downloads, or caching on disk.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import io
from . import layers as L

__all__ = ["PRETRAINED", "pretrained_path", "load_pretrained", "load_checked", "cache_split", "cached_fit"]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# name -> (file in striate/data, what it is)
PRETRAINED = {
    "lenet5_digits": (
        "lenet5_digits.safetensors",
        "zoo.lenet5() trained on datasets.load_digits() by tools/make_pretrained.py (seed 0)",
    ),
}

# Layers whose forward pass is deterministic and, once frozen, the same in
# training and evaluation mode (BatchNorm2d: a frozen layer uses its running
# statistics in both). Dropout and any other layer type are excluded.
_DETERMINISTIC = (
    L.Conv2d, L.MaxPool2d, L.AvgPool2d, L.LPPool2d, L.AdaptiveAvgPool2d, L.GlobalAvgPool2d,
    L.BatchNorm2d, L.ReLU, L.Tanh, L.Sigmoid, L.Softmax, L.Flatten, L.Linear,
)

# Callbacks that only look at the optimizer or at the state of the model they
# are bound to, so binding them to the head changes nothing.
_CALLBACKS_OK = ("LearningRateScheduler", "EarlyStopping")

# Feature caches above this size fall back to the uncached path.
MAX_CACHE_BYTES = 2 * 1024**3

_CHUNK = 256


# --------------------------------------------------------------------------- pretrained weights


def pretrained_path(name):
    """The path of the bundled weights file ``name`` (a key of ``PRETRAINED``).

    Raises
    ------
    ValueError
        ``name`` is not a bundled model.
    FileNotFoundError
        The file is missing from the installation.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}")
    if name not in PRETRAINED:
        raise ValueError(f"`name` must be one of {sorted(PRETRAINED)}, got {name!r}")
    path = os.path.join(DATA_DIR, PRETRAINED[name][0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the pretrained weights {name!r} are missing from this installation: {path}")
    return path


def _normalised(config):
    return json.loads(json.dumps(config, sort_keys=True))


def load_checked(model, path):
    """Load the model file ``path`` (``io.save_model`` format) into ``model``, in place.

    The file's architecture must equal the model's layer for layer (types and
    configurations), and its tensors the model's ``state_dict`` names, shapes
    and dtypes. All checks run before any tensor is copied; on failure the
    model is unchanged.

    Raises
    ------
    striate.io.FormatError
        The file is damaged, has no architecture, or does not match ``model``.
    """
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"`model` must be a striate.Sequential, got {type(model).__name__}")
    mine = _normalised(model.to_config())["layers"]
    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}

    def expect(metadata):
        if io.ARCH_KEY not in metadata:
            raise io.FormatError(path, None, f"metadata lacks {io.ARCH_KEY!r} (not a striate model file)")
        cfg, _ = io.parse_architecture(metadata[io.ARCH_KEY], path)
        theirs = _normalised(cfg)["layers"]
        if len(theirs) != len(mine):
            raise io.FormatError(path, None, f"the file has {len(theirs)} layers, the model {len(mine)}")
        for i, (a, b) in enumerate(zip(theirs, mine)):
            if a != b:
                raise io.FormatError(
                    path, None,
                    f"layer {i} differs: the file has {a['type']}{a['config']}, the model {b['type']}{b['config']}",
                )
        return expected

    tensors, _ = io.read_file(path, expect=expect)
    model.load_state_dict(tensors)
    return model


def load_pretrained(model, name):
    """Fill ``model`` with the bundled weights ``name``; returns the model.

    Parameters
    ----------
    model : Sequential
        Must have exactly the architecture the weights were trained with
        (for ``"lenet5_digits"``: ``zoo.lenet5()``, 10 classes, 32x32 input).
        To adapt to another number of classes, load first, then
        ``model.replace_head(k)``.
    name : str
        A key of ``PRETRAINED``.

    Raises
    ------
    striate.io.FormatError
        The architecture, a shape or a dtype does not match (the model is unchanged).

    Examples
    --------
    >>> from striate import zoo
    >>> m = load_pretrained(zoo.lenet5(), "lenet5_digits")
    >>> m.replace_head(4).out_features
    4
    """
    return load_checked(model, pretrained_path(name))


# --------------------------------------------------------------------------- feature caching


def cache_split(model):
    """Where a cacheable backbone ends, or None when there is nothing to cache.

    The backbone is the longest prefix of layers that have no trainable
    parameter and are of a deterministic type (Conv2d, pooling, BatchNorm2d,
    activations, Flatten, Linear); it stops before the first layer with a
    trainable parameter, the first Dropout (its mask is random in training
    mode) and the first layer of any other type. Returns None when that
    prefix is empty or when no parameter after it is trainable.
    """
    from .model import Sequential

    if not isinstance(model, Sequential):
        return None
    layers = model.layers
    split = 0
    while split < len(layers):
        layer = layers[split]
        if type(layer) not in _DETERMINISTIC or any(p.trainable for p in layer.parameters()):
            break
        split += 1
    if split == 0 or not any(p.trainable for l in layers[split:] for p in l.parameters()):
        return None
    return split


def _features(layers, x, chunk=_CHUNK):
    """Run ``layers`` in evaluation mode over ``x`` in chunks; None if the cache would be too large."""
    modes = [l.training for l in layers]
    out = None
    try:
        for l in layers:
            l.train(False)
        for start in range(0, x.shape[0], chunk):
            f = x[start : start + chunk]
            for l in layers:
                f = l(f)
            if out is None:
                if f.nbytes // f.shape[0] * x.shape[0] > MAX_CACHE_BYTES:
                    return None
                out = np.empty((x.shape[0],) + f.shape[1:], f.dtype)
            out[start : start + f.shape[0]] = f
        if out is None:  # an empty x: let fit report it
            return None
        return out
    finally:
        for l, m in zip(layers, modes):
            l.train(m)


def cached_fit(model, x, y, **fit_kwargs):
    """Train only the head of ``model`` on cached backbone features, when that is exact.

    Applies when all of the following hold, otherwise returns None (the
    model is untouched and the caller should train normally):

    - ``cache_split(model)`` is not None: a non-empty prefix of frozen layers
      of deterministic types (Conv2d, pooling, BatchNorm2d, activations,
      Flatten, Linear; a frozen BatchNorm2d uses its running statistics, so
      training and evaluation mode agree). A Dropout ends the prefix: it stays
      in the head, where ``fit`` seeds its generator as in the uncached run;
    - no ``augment``, ``resume_from``, ``checkpoint`` or ``distributed``;
    - every callback is a ``LearningRateScheduler`` or ``EarlyStopping`` (they
      see the head model, which holds every trainable weight; other callbacks
      such as ``ModelCheckpoint`` need the whole model);
    - ``x`` and ``validation_data`` are well formed (else ``fit`` reports them)
      and the features fit in ``MAX_CACHE_BYTES``.

    The backbone then runs once over ``x`` (and the validation inputs) in
    evaluation mode, and ``striate.training.fit`` trains
    ``Sequential(model.layers[split:])`` on the features with the same
    arguments. The result is bitwise equal to the uncached run with the same
    seed: the run's generator is drawn from in the same order (shuffling, the
    Dropout generators, all in the head), the backbone never gets gradients
    in either path (backward stops at the first trainable layer), and
    striate's kernels give each sample the same result whatever the batch it
    is computed in.

    Parameters
    ----------
    model : Sequential
    x, y : ndarray
        As for ``fit``.
    **fit_kwargs
        The keyword arguments of ``striate.training.fit``.

    Returns
    -------
    History or None
        The head's History (the same keys and values as the uncached run's,
        apart from ``time``), or None when the shortcut does not apply.
    """
    from . import training
    from .model import Sequential

    if fit_kwargs.get("augment") is not None or fit_kwargs.get("resume_from") is not None:
        return None
    if fit_kwargs.get("checkpoint") is not None or fit_kwargs.get("distributed"):
        return None
    callbacks = fit_kwargs.get("callbacks") or ()
    if not isinstance(callbacks, (list, tuple)):  # iterating another iterable could consume it
        return None
    if not all(type(cb).__name__ in _CALLBACKS_OK and type(cb).__module__ == training.__name__ for cb in callbacks):
        return None
    split = cache_split(model)
    if split is None:
        return None
    try:
        x = training._as_input(x)
        val = fit_kwargs.get("validation_data")
        if val is not None:
            if not isinstance(val, (tuple, list)) or len(val) != 2:
                return None
            x_val = training._as_input(val[0], "validation_data[0]")
    except (TypeError, ValueError):
        return None
    backbone = model.layers[:split]
    try:
        feats = _features(backbone, x)
        feats_val = _features(backbone, x_val) if val is not None else None
    except (TypeError, ValueError):
        return None  # the data does not fit the model: fit reports it
    if feats is None or (val is not None and feats_val is None):
        return None
    kwargs = dict(fit_kwargs)
    if val is not None:
        kwargs["validation_data"] = (feats_val, val[1])
    head = Sequential(model.layers[split:])  # renames the head's parameters: restored below
    try:
        history = training.fit(head, feats, y, **kwargs)
        loss_fn = training._last_loss.get(head)
        if loss_fn is not None:
            training._last_loss[model] = loss_fn
    finally:
        model._rename()
    return history
