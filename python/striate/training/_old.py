"""Training: ``fit``, ``evaluate``, ``predict``, ``History``, callbacks and checkpoints.

``fit`` is a Keras-like loop over mini-batches for any model with the
``Sequential`` protocol (``model(x)``, ``model.backward(dloss)``,
``parameters()``, ``state_dict()``/``load_state_dict()``, ``train()``/``eval()``,
indexable layers). It owns every source of randomness of a run: one NumPy
``Generator`` (from ``seed``, or drawn from striate's global RNG) shuffles the
data, seeds each Dropout layer's generator and a base seed from which every
augmentation batch gets its own integer seed. All of that, with the model,
the optimizer state, the epoch and the history, goes into a checkpoint, so
``fit(..., resume_from=path)`` continues bit-exactly.

Guarantees: a non-finite loss or gradient raises ``NonFiniteError`` (naming
the epoch and step) before the optimizer step, so the parameters keep their
values from before that step; checkpoints are written atomically through
``striate.io.write_file``.

Deliberately not here: the layers, losses and optimizers themselves, mixed
precision, gradient accumulation, mid-epoch checkpoints (checkpoints are taken
at epoch boundaries) and the data-parallel machinery (``distributed=True`` is
a hook that ``striate.distributed`` fills in).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import numbers
import sys
import time
import weakref

import numpy as np

from . import _config

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "NonFiniteError",
    "batch_seed",
    "evaluate",
    "fit",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]

_CHECKPOINT_KEY = "striate.checkpoint"
_CHECKPOINT_FORMAT = "striate-checkpoint"
_CHECKPOINT_VERSION = 1
_SEED_BOUND = 2**63
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")

# The loss each model was last trained with, so ``evaluate`` reports the same one.
_last_loss: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient stopped ``fit``.

    Raised before the optimizer step, so the parameters hold the values they
    had before the failing step. ``epoch`` and ``step`` are 1-based, as shown
    in the progress output; ``what`` names the loss or the parameter.
    """

    def __init__(self, message, *, epoch, step, what):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.what = what


# --------------------------------------------------------------------------- small helpers


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_int(value, name, lo):
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"`{name}` must be >= {lo}, got {value}")
    return int(value)


def _layers(model):
    """The model's layers in order (a bare layer counts as a one-layer model)."""
    if hasattr(model, "__len__") and hasattr(model, "__getitem__"):
        return [model[i] for i in range(len(model))]
    return [model]


def _get_modes(model):
    return getattr(model, "training", None), [getattr(layer, "training", True) for layer in _layers(model)]


def _set_modes(model, modes):
    top, per_layer = modes
    if top is not None:
        model.train() if top else model.eval()
    for layer, mode in zip(_layers(model), per_layer):
        layer.train() if mode else layer.eval()


@contextlib.contextmanager
def _mode(model, training):
    """Run a block with the model in training or evaluation mode, then restore every layer's mode."""
    saved = _get_modes(model)
    model.train() if training else model.eval()
    try:
        yield
    finally:
        _set_modes(model, saved)


def _as_input(x, name="x"):
    """``x`` as a C-contiguous float32 array with a batch dimension.

    uint8 images are scaled by 1/255 to [0, 1]; float64 (and float16) are cast
    to float32. Other dtypes raise TypeError.
    """
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise TypeError(f"`{name}` must hold float32, float64 or uint8 values, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have a batch dimension and at least 2 dimensions, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one sample, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _as_targets(y, n, name="y", x_name="x"):
    """``y`` as int64 labels (N,) or float32 targets (N, C), checked against ``n`` samples."""
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise ValueError(
            f"`{name}` must be int labels of shape (N,) or targets of shape (N, classes), got shape {y.shape}"
        )
    if y.shape[0] != n:
        raise ValueError(f"`{x_name}` and `{name}` must have the same length, got {n} and {y.shape[0]}")
    if y.ndim == 2:
        if y.dtype.kind not in "fiub":
            raise TypeError(f"`{name}` targets must be numeric, got dtype {y.dtype}")
        return np.ascontiguousarray(y, dtype=np.float32)
    if y.dtype.kind in "iu":
        labels = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        labels = y.astype(np.int64)
    else:
        raise TypeError(f"`{name}` labels must be integers, got dtype {y.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"`{name}` labels must be non-negative, got {int(labels.min())}")
    return labels


def _check_targets_fit(y, num_outputs, name="y"):
    """Labels must index the model's outputs; (N, C) targets must have C outputs."""
    if y.ndim == 1:
        if y.size and y.max() >= num_outputs:
            raise ValueError(
                f"`{name}` labels must lie in [0, {num_outputs}) (the model has {num_outputs} outputs), "
                f"got {int(y.max())}"
            )
    elif y.shape[1] != num_outputs:
        raise ValueError(f"`{name}` has {y.shape[1]} columns but the model has {num_outputs} outputs")


def _resolve_loss(loss):
    from . import losses

    try:
        return losses.get_loss(loss)
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"`loss` must be 'cross_entropy', 'squared_error' or a loss object, got {loss!r}"
        ) from exc


def _n_correct(outputs, y):
    pred = np.argmax(outputs, axis=1)
    truth = y if y.ndim == 1 else np.argmax(y, axis=1)
    return int(np.count_nonzero(pred == truth))


def _num_outputs(model, x):
    """Run one sample through the model in evaluation mode; return its number of outputs."""
    with _mode(model, False):
        out = model(x[:1])
    if not isinstance(out, np.ndarray) or out.ndim != 2:
        shape = getattr(out, "shape", None)
        raise ValueError(f"the model must return (N, classes) outputs, got shape {shape}")
    return int(out.shape[1])


def _dropout_layers(model):
    return [layer for layer in _layers(model) if hasattr(layer, "set_rng")]


def _first_nonfinite_grad(params):
    for p in params:
        if p.trainable and p.grad is not None and not np.isfinite(p.grad).all():
            return p.name
    return None


def batch_seed(base, epoch, step):
    """The integer seed handed to ``augment`` for one training batch.

    Derived from the run's base seed and the 0-based ``epoch`` and ``step``
    only (through ``numpy.random.SeedSequence``), so a resumed run gives every
    batch the seed it had in an uninterrupted run.
    """
    ss = np.random.SeedSequence([int(base), int(epoch), int(step)])
    return int(ss.generate_state(1, np.uint64)[0])


def _apply_augment(augment, xb, seed):
    out = augment(xb, seed)
    if not isinstance(out, np.ndarray) or out.ndim != xb.ndim or out.shape[0] != xb.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`augment` must return an array of shape ({xb.shape[0]}, ...), got {got}")
    return np.ascontiguousarray(out, dtype=np.float32)


def _lr_of(optimizer):
    lr = getattr(optimizer, "lr", None)
    return float(lr) if isinstance(lr, numbers.Real) else float("nan")


def _generator_from_state(state):
    """A Generator restored from ``bit_generator.state`` (only NumPy's bit generators are accepted)."""
    name = state["bit_generator"]
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r}")
    gen = np.random.Generator(getattr(np.random, name)())
    gen.bit_generator.state = state
    return gen


# --------------------------------------------------------------------------- History


class History:
    """Per-epoch metrics of a ``fit`` run.

    Attributes
    ----------
    history : dict of str to list
        ``loss``, ``accuracy`` (training, averaged over the epoch's batches in
        training mode), ``val_loss`` and ``val_accuracy`` (when validating, in
        evaluation mode), ``lr`` (the learning rate of the epoch's first step,
        after schedule callbacks ran) and ``time`` (seconds for the epoch).
    epoch : list of int
        The 0-based epochs recorded. A resumed run's History holds the epochs
        from before the checkpoint too.
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def _append(self, epoch, logs):
        self.epoch.append(int(epoch))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def _to_json(self):
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def _from_json(cls, data):
        h = cls()
        h.epoch = [int(e) for e in data["epoch"]]
        h.history = {str(k): [float(v) for v in vals] for k, vals in data["history"].items()}
        return h

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"

    def plot(self, path):
        """Plot loss and accuracy curves (training and validation) to an image file.

        Drawn by ``striate.viz.plot_history``; needs matplotlib, the ``[viz]``
        extra (``pip install 'striate[viz]'``), and raises ImportError naming
        it otherwise.

        Parameters
        ----------
        path : str or os.PathLike
            The output file; its extension picks the format (``.png``, ``.svg``, ``.pdf``).
        """
        from . import viz

        return viz.plot_history(self, path)


# --------------------------------------------------------------------------- callbacks


class TrainState:
    """What callbacks see of a running ``fit``: ``epoch``, ``global_step``,
    ``steps_per_epoch``, ``epochs``, ``history``, ``is_root`` (False on the
    ranks of a distributed run that must not write files); set
    ``stop_training = True`` to end training after the current epoch."""

    def __init__(self, epochs, steps_per_epoch, history, is_root=True):
        self.is_root = is_root
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.history = history
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False


class Callback:
    """Base class of the ``fit`` callbacks; every hook does nothing by default.

    Before ``on_train_begin``, ``fit`` sets ``self.model``, ``self.optimizer``
    and ``self.state`` (a ``TrainState``; ``self.state.stop_training = True``
    ends training after the current epoch). ``epoch`` and ``step`` are 0-based;
    ``step`` counts batches within the epoch. Epoch ``logs`` hold the History
    keys of that epoch; batch logs hold ``loss``, ``accuracy`` (of the batch)
    and ``lr``.

    A callback with state that must survive a resume returns it, JSON-able,
    from ``state_dict()`` and takes it back in ``load_state_dict()``.
    """

    model = None
    optimizer = None
    state = None

    def _bind(self, model, optimizer, state):
        self.model, self.optimizer, self.state = model, optimizer, state

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, step, logs=None):
        pass

    def on_batch_end(self, step, logs=None):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _resolve_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"`mode` must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if monitor.endswith("accuracy") or monitor.endswith("acc") else "min"
    return mode


def _monitored(logs, monitor, who):
    if monitor not in logs:
        hint = " (pass validation_data or validation_split to fit)" if monitor.startswith("val_") else ""
        raise ValueError(f"{who}: `monitor` {monitor!r} is not among the epoch logs {sorted(logs)}{hint}")
    return float(logs[monitor])


class _Monitor(Callback):
    """Tracks the best value of a monitored metric."""

    def __init__(self, monitor, mode, min_delta=0.0):
        if not isinstance(monitor, str):
            raise TypeError(f"`monitor` must be a str, got {type(monitor).__name__}")
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = min_delta
        self.best = None

    def _improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training when a monitored metric has stopped improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A History key.
    patience : int, default 0
        Epochs without improvement after which training stops.
    min_delta : float, default 0
        Smallest change that counts as an improvement.
    mode : {"auto", "min", "max"}
        "auto" maximises metrics whose name ends in "accuracy", minimises the rest.
    restore_best_weights : bool, default False
        At the end of training, load the weights of the best epoch when it was
        not the last. (After a resume, only epochs since the resume qualify.)
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best_weights=False):
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not math.isfinite(min_delta):
            raise TypeError(f"`min_delta` must be a finite number, got {min_delta!r}")
        if min_delta < 0:
            raise ValueError(f"`min_delta` must be >= 0, got {min_delta}")
        super().__init__(monitor, mode, float(min_delta))
        self.patience = _check_int(patience, "patience", 0)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_epoch = None
        self.stopped_epoch = None
        self._best_weights = None
        self._last_epoch = None

    def on_train_begin(self, logs=None):
        self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, None, None, None
        self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        self._last_epoch = epoch
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_weights = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.state.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self._best_weights is not None and self.best_epoch != self._last_epoch:
            self.model.load_state_dict(self._best_weights)

    def state_dict(self):
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.wait, self.best, self.best_epoch = int(state["wait"]), state["best"], state["best_epoch"]


class ModelCheckpoint(_Monitor):
    """Save the model (``striate.io.save_model``, atomic) at the end of epochs.

    The file holds the model only and loads with ``striate.load``; for a
    resumable training checkpoint use ``fit(..., checkpoint=path)``.

    Parameters
    ----------
    path : str or os.PathLike
        May contain ``{epoch}`` (1-based) and History keys, e.g.
        ``"model-{epoch:02d}-{val_loss:.3f}.safetensors"``.
    monitor : str, default "val_loss"
        The metric ``save_best_only`` compares.
    save_best_only : bool, default False
        Save only when ``monitor`` improved on every earlier epoch.
    mode : {"auto", "min", "max"}
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        super().__init__(monitor, mode)
        self.path = str(path)
        self.save_best_only = bool(save_best_only)
        self.saved = []

    def on_train_begin(self, logs=None):
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self._improved(value):
                return
            self.best = value
        if self.state is not None and not self.state.is_root:
            return  # in a distributed run only rank 0 writes files
        path = self.path.format(epoch=epoch + 1, **logs) if "{" in self.path else self.path
        from . import io

        io.save_model(self.model, path)
        self.saved.append(path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate from a schedule, per epoch or per step.

    Parameters
    ----------
    schedule : callable
        ``schedule(t) -> lr``: a function, or a ``striate.optim`` schedule
        object (they are callable). ``t`` is the 0-based epoch, or with
        ``per_step=True`` the 0-based global step (batches since the start of
        training), so a resumed run gets the same rates.
    per_step : bool, default False
        Update before every batch instead of before every epoch.
    """

    def __init__(self, schedule, per_step=False):
        if not callable(schedule):
            raise TypeError(f"`schedule` must be callable (t -> lr), got {type(schedule).__name__}")
        self.schedule = schedule
        self.per_step = bool(per_step)

    def _set(self, t):
        lr = self.schedule(t)
        if isinstance(lr, (list, tuple)) and lr:
            lr = lr[0]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"the schedule must return a finite learning rate >= 0, got {lr!r} at t={t}")
        self.optimizer.lr = float(lr)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_step:
            self._set(epoch)

    def on_batch_begin(self, step, logs=None):
        if self.per_step:
            self._set(self.state.global_step)


# --------------------------------------------------------------------------- checkpoints


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
    from . import io

    try:
        return _decode_tree(tree, tensors, path)
    except io.FormatError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise io.FormatError(path, None, f"malformed checkpoint metadata ({exc!r})") from None


def _decode_tree(tree, tensors, path):
    from . import io

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
    from . import io

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
    from . import io

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
    from . import optim

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
    from . import io

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


# --------------------------------------------------------------------------- distributed hook


def _distributed_hook(model):
    """The data-parallel hook for ``fit(distributed=True)``: ``striate.distributed.fit_hook(model)``.

    ``fit`` uses its ``seed(s)`` (one run seed for every rank), ``shard(indices)``
    (this rank's part of each global batch), ``average_gradients(params,
    local_count, global_count)``, ``reduce(*values)`` (sums of the epoch
    metrics), ``end_epoch(model)`` (BatchNorm statistics) and ``is_root``
    (only rank 0 prints progress and writes checkpoints).
    """
    from . import distributed

    if not distributed.available():
        raise ImportError(
            "`distributed=True` needs mpi4py and an MPI library: install the [mpi] extra "
            "(pip install 'striate[mpi]') and run under mpiexec"
        )
    return distributed.fit_hook(model)


# --------------------------------------------------------------------------- fit


def _validation_set(x, y, validation_data, validation_split):
    """``(x, y, x_val, y_val)``: the given validation pair, or the last ``validation_split`` of the data."""
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("`validation_data` must be a pair (x_val, y_val)")
        x_val = _as_input(validation_data[0], "validation_data[0]")
        y_val = _as_targets(validation_data[1], x_val.shape[0], "validation_data[1]", "validation_data[0]")
        return x, y, x_val, y_val
    if validation_split > 0:
        n_val = int(x.shape[0] * validation_split)
        if n_val < 1 or n_val >= x.shape[0]:
            raise ValueError(
                f"`validation_split`={validation_split} of {x.shape[0]} samples leaves no validation "
                "or no training samples"
            )
        return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    return x, y, None, None


class _RunRandomness:
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


class _Progress:
    """A tqdm bar per epoch (verbose=1), one line per epoch (verbose=2), or nothing; on stderr."""

    def __init__(self, verbose, epochs, steps):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.bar = None

    def begin(self, epoch):
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                file=sys.stderr, leave=True, dynamic_ncols=True,
            )

    def batch(self, loss, acc):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", refresh=False)
            self.bar.update(1)

    def end(self, epoch, logs):
        items = [f"{k} {v:.4g}" if k != "time" else f"{v:.2f} s" for k, v in logs.items()]
        if self.bar is not None:
            self.bar.set_postfix_str(" - ".join(i for i in items if not i.endswith(" s")), refresh=True)
            self.close()
        elif self.verbose == 2:
            print(f"epoch {epoch + 1}/{self.epochs} - " + " - ".join(items), file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _backward_fn(model):
    try:
        params = inspect.signature(model.backward).parameters
    except (TypeError, ValueError):
        params = {}
    if "input_grad" in params:
        return lambda d: model.backward(d, input_grad=False)
    return model.backward


def fit(
    model,
    x,
    y,
    *,
    epochs=10,
    batch_size=64,
    optimizer=None,
    loss="cross_entropy",
    validation_data=None,
    validation_split=0.0,
    shuffle=True,
    augment=None,
    callbacks=(),
    seed=None,
    verbose=1,
    resume_from=None,
    checkpoint=None,
    distributed=False,
    cache_features=True,
):
    """Train ``model`` on ``(x, y)`` with mini-batch gradient descent.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...)
        Inputs. float32 is used as is; float64 is cast to float32; uint8 is
        scaled by 1/255 to [0, 1] float32. Other dtypes raise TypeError.
    y : ndarray
        Int class labels (N,), or targets (N, classes) such as one-hot rows.
        With ``loss="squared_error"`` int labels stand for one-hot rows.
    epochs : int, default 10
        The total number of epochs; a resumed run continues up to it.
    batch_size : int, default 64
        The last batch of an epoch may be smaller.
    optimizer : optimizer, optional
        Default: ``striate.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)``.
    loss : str or loss object, default "cross_entropy"
        ``"cross_entropy"``, ``"squared_error"`` or a ``striate.losses`` object.
    validation_data : (x_val, y_val), optional
        Evaluated at the end of every epoch; adds ``val_loss``, ``val_accuracy``.
    validation_split : float in [0, 1), default 0
        Hold out this fraction of ``(x, y)``, taken from the end before any
        shuffling, for validation. Ignored when ``validation_data`` is given.
    shuffle : bool, default True
        Reshuffle the training samples every epoch.
    augment : callable, optional
        ``augment(x_batch, seed) -> x_batch`` applied to training batches only;
        ``seed`` is an int from ``batch_seed(base, epoch, step)``, where
        ``base`` comes from the run's generator (so it is checkpointed).
    callbacks : sequence of Callback
    seed : int, optional
        Seeds the run's generator: shuffling, the Dropout layers' generators
        and the augmentation seeds. Default: a seed drawn from striate's global
        RNG (``striate.seed``). Ignored when resuming (the checkpoint's
        generator states are restored).
    verbose : {0, 1, 2}, default 1
        1: a progress bar per epoch; 2: one line per epoch; 0: silent. Both go to stderr.
    resume_from : str or os.PathLike, optional
        A checkpoint written by ``fit(..., checkpoint=...)``: restores the
        model, optimizer (of the same class; built from the checkpoint when
        ``optimizer`` is None), generators, History and callback states, then
        trains the remaining epochs. The result is bitwise equal to an
        uninterrupted run.
    checkpoint : str or os.PathLike, optional
        Write a resumable training checkpoint (atomically) at the end of
        every epoch, after the callbacks ran.
    cache_features : bool, default True
        When the model's leading layers are frozen and deterministic (the
        "freeze the backbone, train the head" recipe), run them once over the
        data and train only the head on the cached features; the result is
        bitwise equal to the uncached run (``striate.transfer.cached_fit``,
        which says when the shortcut applies). False always runs the full model.
    distributed : bool, default False
        Data-parallel training under ``mpiexec -n K`` (needs the ``[mpi]``
        extra): every rank holds all of ``x`` and follows rank 0's seed, takes
        its shard of each global batch of ``batch_size``, and the gradients are
        averaged over the ranks before every step, so all ranks keep equal
        weights. Only rank 0 prints and writes ``checkpoint``.

    Returns
    -------
    History

    Raises
    ------
    NonFiniteError
        When a loss or gradient is not finite; the optimizer step is skipped.

    Examples
    --------
    >>> import striate as st
    >>> from striate.datasets import load_digits
    >>> (x, y), (xt, yt) = load_digits()
    >>> model = st.zoo.lenet5()
    >>> history = model.fit(x, y, epochs=2, validation_data=(xt, yt), verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss', 'lr', 'time', 'val_accuracy', 'val_loss']
    """
    if cache_features:
        from . import transfer

        cached = transfer.cached_fit(
            model, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=loss,
            validation_data=validation_data, validation_split=validation_split, shuffle=shuffle,
            augment=augment, callbacks=callbacks, seed=seed, verbose=verbose, resume_from=resume_from,
            checkpoint=checkpoint, distributed=distributed,
        )
        if cached is not None:
            return cached
    epochs = _check_int(epochs, "epochs", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"`verbose` must be 0, 1 or 2, got {verbose!r}")
    if seed is not None:
        seed = _check_int(seed, "seed", 0)
    if augment is not None and not callable(augment):
        raise TypeError(f"`augment` must be callable (x_batch, seed) -> x_batch, got {type(augment).__name__}")
    callbacks = list(callbacks or ())
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"`callbacks` must hold Callback instances, got {type(cb).__name__}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real):
        raise TypeError(f"`validation_split` must be a float, got {type(validation_split).__name__}")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"`validation_split` must be in [0, 1), got {validation_split}")

    x = _as_input(x)
    y = _as_targets(y, x.shape[0])
    loss_fn = _resolve_loss(loss)
    x, y, x_val, y_val = _validation_set(x, y, validation_data, validation_split)

    num_outputs = _num_outputs(model, x)
    _check_targets_fit(y, num_outputs)
    if y_val is not None:
        _check_targets_fit(y_val, num_outputs, "validation_data[1]")

    hook = _distributed_hook(model) if distributed else None

    if resume_from is not None:
        tensors, meta = _read_checkpoint(resume_from)
        if optimizer is None:
            optimizer = _make_optimizer(meta, model)
    if optimizer is None:
        from . import optim

        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    n = x.shape[0]
    steps = -(-n // batch_size)
    history = History()
    state = TrainState(epochs, steps, history, is_root=hook is None or hook.is_root)
    dropouts = _dropout_layers(model)
    if resume_from is not None:
        saved = meta.get("state") or {}
        try:
            rand = _RunRandomness.from_state(saved)
            start_epoch = int(saved["epoch"])
            state.global_step = int(saved["global_step"])
            saved_history = History._from_json(saved["history"])
            cb_states = saved.get("callbacks", [])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            from . import io

            raise io.FormatError(resume_from, None, f"the checkpoint's training state is invalid or incomplete ({exc!r})") from None
        if len(rand.dropout) != len(dropouts):
            raise ValueError(
                f"the checkpoint {resume_from} has {len(rand.dropout)} Dropout generators, "
                f"the model has {len(dropouts)}"
            )
        if int(saved.get("steps_per_epoch", steps)) != steps:
            raise ValueError(
                f"resuming needs the same data and batch_size: the checkpoint has {saved['steps_per_epoch']} "
                f"steps per epoch, this call {steps}"
            )
        _load_into(resume_from, tensors, meta, model, optimizer)
        history.history, history.epoch = saved_history.history, saved_history.epoch
    else:
        rand = _RunRandomness.fresh(seed, len(dropouts), agree=None if hook is None else hook.seed)
        start_epoch = 0
        cb_states = []
    for layer, g in zip(dropouts, rand.dropout):
        layer.set_rng(g)
    try:
        _last_loss[model] = loss_fn
    except TypeError:
        pass

    params = [p for p in model.parameters() if p.trainable]
    backward = _backward_fn(model)
    progress = _Progress(verbose if hook is None or hook.is_root else 0, epochs, steps)
    for cb in callbacks:
        cb._bind(model, optimizer, state)
    for cb in callbacks:
        cb.on_train_begin({})
    for cb, cb_state in zip(callbacks, cb_states):
        if cb_state is not None:
            cb.load_state_dict(cb_state)

    saved_modes = _get_modes(model)
    try:
        for epoch in range(start_epoch, epochs):
            state.epoch = epoch
            t0 = time.perf_counter()
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            lr_first = None
            order = rand.shuffle.permutation(n) if shuffle else np.arange(n)
            model.train()
            progress.begin(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps):
                idx = order[step * batch_size : (step + 1) * batch_size]
                global_count = len(idx)
                if hook is not None:
                    idx = hook.shard(idx)
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = _apply_augment(augment, xb, batch_seed(rand.augment_seed, epoch, step))
                for cb in callbacks:
                    cb.on_batch_begin(step, {})
                if lr_first is None:
                    lr_first = _lr_of(optimizer)
                # Non-finite values are reported by the checks below, not as NumPy warnings.
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    out = model(xb)
                    loss_value = float(loss_fn(out, yb))
                    loss_ok = math.isfinite(loss_value)
                    if loss_ok:
                        backward(loss_fn.backward())
                if not loss_ok and hook is None:
                    raise NonFiniteError(
                        f"the loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                        "the parameters are those from before this step",
                        epoch=epoch + 1, step=step + 1, what="loss",
                    )
                if hook is not None:
                    if not loss_ok:  # poison the shared gradient, so that every rank stops at this step
                        for p in params:
                            p.grad = np.full_like(p.data, np.nan)
                    hook.average_gradients(params, xb.shape[0], global_count)
                bad = _first_nonfinite_grad(params)
                if bad is not None:
                    raise NonFiniteError(
                        f"the gradient of {bad} is not finite at epoch {epoch + 1}, step {step + 1}; "
                        "the parameters are those from before this step",
                        epoch=epoch + 1, step=step + 1, what=bad,
                    )
                optimizer.step()
                state.global_step += 1
                nb = xb.shape[0]
                batch_correct = _n_correct(out, yb)
                loss_sum += loss_value * nb
                correct += batch_correct
                seen += nb
                batch_logs = {"loss": loss_value, "accuracy": batch_correct / max(nb, 1), "lr": _lr_of(optimizer)}
                for cb in callbacks:
                    cb.on_batch_end(step, batch_logs)
                progress.batch(loss_sum / max(seen, 1), correct / max(seen, 1))
            if hook is not None:
                loss_sum, correct, seen = hook.reduce(loss_sum, correct, seen)
                hook.end_epoch(model)
            logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
            if x_val is not None:
                val = evaluate(model, x_val, y_val, batch_size=max(batch_size, 256), loss=loss_fn)
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            logs["lr"] = lr_first
            logs["time"] = time.perf_counter() - t0
            history._append(epoch, logs)
            progress.end(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, dict(logs))
            if checkpoint is not None and (hook is None or hook.is_root):
                save_checkpoint(
                    checkpoint, model, optimizer,
                    {
                        "epoch": epoch + 1,
                        "global_step": state.global_step,
                        "steps_per_epoch": steps,
                        **rand.state(),
                        "history": history._to_json(),
                        "callbacks": [cb.state_dict() for cb in callbacks],
                    },
                )
            if state.stop_training:
                break
    finally:
        progress.close()
        _set_modes(model, saved_modes)
    for cb in callbacks:
        cb.on_train_end({})
    return history


# --------------------------------------------------------------------------- evaluate / predict


def _batches(n, batch_size):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def evaluate(model, x, y, batch_size=256, *, loss=None):
    """Mean loss and accuracy of ``model`` on ``(x, y)``, in evaluation mode.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...)
        Converted like in ``fit`` (uint8 scaled by 1/255, float64 cast).
    y : ndarray
        Int labels (N,) or targets (N, classes).
    batch_size : int, default 256
    loss : str or loss object, optional
        Default: the loss ``model`` was last trained with by ``fit`` in this
        process, else cross-entropy.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}``; the loss is the mean over samples.
        Each layer's mode is restored afterwards.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    x = _as_input(x)
    y = _as_targets(y, x.shape[0])
    if loss is None:
        try:
            loss_fn = _last_loss.get(model)
        except TypeError:
            loss_fn = None
        loss_fn = loss_fn if loss_fn is not None else _resolve_loss("cross_entropy")
    else:
        loss_fn = _resolve_loss(loss)
    total, correct = 0.0, 0
    with _mode(model, False):
        for sl in _batches(x.shape[0], batch_size):
            out = model(x[sl])
            if sl.start == 0:
                _check_targets_fit(y, out.shape[1])
            yb = y[sl]
            total += float(loss_fn(out, yb)) * out.shape[0]
            correct += _n_correct(out, yb)
    return {"loss": total / x.shape[0], "accuracy": correct / x.shape[0]}


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict(model, x, batch_size=256):
    """Class probabilities ``(N, classes)`` for ``x``, in evaluation mode.

    The softmax of the model's outputs, or the outputs as they are when the
    model ends in a ``Softmax`` layer. ``x`` is converted like in ``fit``;
    each layer's mode is restored afterwards.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    x = _as_input(x)
    layers = _layers(model)
    ends_in_softmax = bool(layers) and type(layers[-1]).__name__ == "Softmax"
    chunks = []
    with _mode(model, False):
        for sl in _batches(x.shape[0], batch_size):
            out = np.array(model(x[sl]), dtype=np.float32)
            chunks.append(out if ends_in_softmax else _softmax(out))
    return np.concatenate(chunks, axis=0)
