"""Transfer learning: bundled pretrained weights and feature caching for frozen backbones.

``load_pretrained(model, name)`` fills a model with weights shipped in
``striate/data`` (``pretrained_path(name)``), after checking that the file's
architecture and every tensor's shape and dtype match the model; any mismatch
raises ``striate.io.FormatError`` and leaves the model unchanged.

``cached_fit(model, x, y, **fit_kwargs)`` and ``cache_split(model)`` are the
frozen-backbone shortcut for the classic recipe "freeze the backbone, train
the head"; they live with the training loop (``striate.training.loop`` and
``striate.training.feature_cache``), which takes the shortcut by itself, and
are re-exported here.

Deliberately not here: ``freeze``/``unfreeze``/``replace_head`` (methods of
``Sequential``), the training loop itself (``striate.training``), model
downloads, or caching on disk.
"""

from __future__ import annotations

import json
import os

from . import io
from .model import Sequential
from .training.feature_cache import MAX_CACHE_BYTES, cache_split  # noqa: F401  (re-exported)
from .training.loop import cached_fit  # noqa: F401  (re-exported)

__all__ = ["PRETRAINED", "pretrained_path", "load_pretrained", "load_checked", "cache_split", "cached_fit"]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# name -> (file in striate/data, what it is)
PRETRAINED = {
    "lenet5_digits": (
        "lenet5_digits.safetensors",
        "zoo.lenet5() trained on datasets.load_digits() by tools/make_pretrained.py (seed 0)",
    ),
}



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
