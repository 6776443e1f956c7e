"""Training checkpoints: the model, the optimizer and the run's state in one safetensors file.

``save_checkpoint`` writes atomically through ``striate.io.write_file``: the
model's ``state_dict`` tensors as ``model.<name>``, the optimizer's state
(tensors as ``optimizer.<i>``, the rest as tagged JSON), and a JSON training
state (``fit`` stores the epoch, global step, generator states, the
augmentation seed, History and callback states). ``load_checkpoint`` loads all
or nothing. ``RunRandomness`` is every source of randomness of one ``fit`` run
and the state of it a checkpoint keeps.

Not here: when checkpoints are taken (``fit`` takes them at epoch ends) or the
model file format of ``striate.io.save_model``.
"""

from __future__ import annotations

import json

import numpy as np

from .. import _config, io, optim

__all__ = ["RunRandomness", "load_checkpoint", "save_checkpoint"]

_CHECKPOINT_KEY = "striate.checkpoint"
_CHECKPOINT_FORMAT = "striate-checkpoint"
_CHECKPOINT_VERSION = 1
_SEED_BOUND = 2**63
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _encode(obj, prefix, tensors):
    """A JSON-able tree for ``obj``; arrays go to ``tensors`` under names starting with ``prefix``."""
    if isinstance(obj, np.ndarray):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = np.asarray(obj, order="C")  # keeps 0-d arrays 0-d
        return {"__tensor__": name}
    if isinstance(obj, np.generic):
        return {"__scalar__": obj.dtype.str, "value": obj.item()}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, prefix, tensors), _encode(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, prefix, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, prefix, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(tree, tensors, path):
    """Rebuild what ``_encode`` stored; metadata of any other shape is a FormatError."""
    try:
        return _decode_tree(tree, tensors, path)
    except io.FormatError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise io.FormatError(path, None, f"malformed checkpoint metadata ({exc!r})") from None


def _decode_tree(tree, tensors, path):
    if isinstance(tree, list):
        return [_decode_tree(v, tensors, path) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        name = tree["__tensor__"]
        if not isinstance(name, str) or name not in tensors:
            raise io.FormatError(path, str(name), "missing (the checkpoint metadata refers to it)")
        return tensors[name]
    if "__scalar__" in tree:
        dt = np.dtype(str(tree["__scalar__"]))
        if dt.kind not in "biuf":
            raise io.FormatError(path, None, f"checkpoint scalar of dtype {dt} is not a number")
        return dt.type(tree["value"])
    if "__tuple__" in tree:
        return tuple(_decode_tree(v, tensors, path) for v in tree["__tuple__"])
    if "__dict__" in tree:
        out = {}
        for pair in tree["__dict__"]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise io.FormatError(path, None, "malformed checkpoint metadata (a dict entry is not a pair)")
            key = _decode_tree(pair[0], tensors, path)
            if not isinstance(key, (str, int, float, bool, tuple)) or key is None:
                raise io.FormatError(path, None, f"malformed checkpoint metadata (a dict key is {key!r})")
            out[key] = _decode_tree(pair[1], tensors, path)
        return out
    raise io.FormatError(path, None, "malformed checkpoint metadata")


def _hparams(opt_state):
    """The plain-number entries of an optimizer state_dict (lr, momentum, ...), for reading."""
    out = {}
    for key, value in opt_state.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(key, str) and not key.startswith("state.") and isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(key, str) and isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            out[key] = list(value)
    return out


def save_checkpoint(path, model, optimizer, state=None):
    """Write a training checkpoint atomically (``striate.io.write_file``).

    Parameters
    ----------
    path : str or os.PathLike
        The safetensors file to write; an earlier checkpoint there stays
        loadable until the new one is complete.
    model : Sequential
        Its ``state_dict`` tensors are stored as ``model.<name>``.
    optimizer : optimizer or None
        Its ``state_dict`` tensors are stored as ``optimizer.<i>``; its class
        and hyper-parameters go to the JSON metadata.
    state : dict, optional
        JSON-able training state (``fit`` stores the epoch, global step, RNG
        states, augmentation seed, History and callback states).
    """
    tensors = {f"model.{k}": np.asarray(v, order="C") for k, v in model.state_dict().items()}
    opt_state = None if optimizer is None else optimizer.state_dict()
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
        "optimizer_hparams": None if optimizer is None else _hparams(opt_state),
        "optimizer_state": None if optimizer is None else _encode(opt_state, "optimizer", tensors),
        "state": {} if state is None else state,
    }
    io.write_file(path, tensors, {_CHECKPOINT_KEY: json.dumps(meta)})


def _read_checkpoint(path):
    tensors, metadata = io.read_file(path)
    raw = (metadata or {}).get(_CHECKPOINT_KEY)
    try:
        meta = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != _CHECKPOINT_FORMAT:
        raise io.FormatError(path, None, f"not a striate training checkpoint (no {_CHECKPOINT_KEY!r} metadata)")
    if meta.get("version") != _CHECKPOINT_VERSION:
        raise io.FormatError(path, None, f"checkpoint version {meta.get('version')!r} is not supported")
    return tensors, meta


def _make_optimizer(meta, model):
    """A fresh optimizer of the checkpoint's class, for ``fit(resume_from=...)`` without one."""
    name = meta.get("optimizer_class")
    cls = getattr(optim, name, None) if isinstance(name, str) else None
    if not isinstance(cls, type):
        raise ValueError(f"the checkpoint's optimizer {name!r} is not in striate.optim; pass `optimizer`")
    # The hyper-parameters and state follow through load_state_dict.
    return cls(model.parameters())


def load_checkpoint(path, model, optimizer=None):
    """Load a checkpoint written by ``save_checkpoint`` into ``model`` (and ``optimizer``).

    All or nothing: when anything fails (a corrupt file, a shape mismatch, an
    optimizer of another class), the model and optimizer keep their state and
    the error (``striate.io.FormatError`` for file problems) propagates.

    Returns
    -------
    dict
        The stored training state, plus ``"optimizer_class"`` and ``"optimizer_hparams"``.
    """
    tensors, meta = _read_checkpoint(path)
    _load_into(path, tensors, meta, model, optimizer)
    out = dict(meta.get("state") or {})
    out["optimizer_class"] = meta.get("optimizer_class")
    out["optimizer_hparams"] = meta.get("optimizer_hparams")
    return out


def _load_into(path, tensors, meta, model, optimizer):
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_sd = None
    if optimizer is not None:
        if meta.get("optimizer_class") is None:
            raise ValueError(f"{path}: the checkpoint holds no optimizer state")
        if meta["optimizer_class"] != type(optimizer).__name__:
            raise ValueError(
                f"`optimizer` is a {type(optimizer).__name__} but the checkpoint {path} holds a "
                f"{meta['optimizer_class']}"
            )
        opt_sd = _decode(meta["optimizer_state"], tensors, path)
    backup_model = model.state_dict()
    backup_opt = None if optimizer is None else optimizer.state_dict()
    model.load_state_dict(model_sd)
    if optimizer is None:
        return
    try:
        optimizer.load_state_dict(opt_sd)
    except BaseException as exc:
        model.load_state_dict(backup_model)
        optimizer.load_state_dict(backup_opt)
        if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, io.FormatError):
            raise io.FormatError(path, None, f"the optimizer state does not fit: {exc}") from None
        raise


def _generator_from_state(state):
    """A Generator restored from ``bit_generator.state`` (only NumPy's bit generators are accepted)."""
    name = state["bit_generator"]
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r}")
    gen = np.random.Generator(getattr(np.random, name)())
    gen.bit_generator.state = state
    return gen


class RunRandomness:
    """Every source of randomness of one ``fit`` run, and its checkpointable state.

    ``shuffle`` orders the samples each epoch; each Dropout layer gets its own
    generator; ``augment_seed`` is the base of the per-batch augmentation seeds.
    A fresh run draws all of them from one generator seeded by ``seed``.
    """

    def __init__(self, shuffle, dropout, augment_seed):
        self.shuffle, self.dropout, self.augment_seed = shuffle, dropout, int(augment_seed)

    @classmethod
    def fresh(cls, seed, n_dropout, agree=None):
        """``agree(seed) -> seed`` makes data-parallel ranks use one seed (rank 0's)."""
        base = seed if seed is not None else int(_config.rng().integers(_SEED_BOUND))
        if agree is not None:
            base = agree(base)
        gen = np.random.default_rng(base)
        dropout = [np.random.default_rng(int(gen.integers(_SEED_BOUND))) for _ in range(n_dropout)]
        return cls(gen, dropout, int(gen.integers(_SEED_BOUND)))

    @classmethod
    def from_state(cls, saved):
        return cls(
            _generator_from_state(saved["shuffle_rng"]),
            [_generator_from_state(s) for s in saved["dropout_rngs"]],
            saved["augment_seed"],
        )

    def state(self):
        return {
            "shuffle_rng": self.shuffle.bit_generator.state,
            "dropout_rngs": [g.bit_generator.state for g in self.dropout],
            "augment_seed": self.augment_seed,
        }
