"""The ``fit`` callbacks: History, the Callback base, EarlyStopping, ModelCheckpoint,
LearningRateScheduler and LayerHealth, with the TrainState they see.

As in Keras, ``fit`` calls ``on_train_begin``, then per epoch ``on_epoch_begin``,
per batch ``on_batch_begin``/``on_batch_end`` and ``on_epoch_end``, and last
``on_train_end``. A callback with state that must survive a resume returns it
from ``state_dict()``. ``CallbackList`` fans one call out to every callback.

Not here: the loop that calls them (``striate.training.loop``) or pictures
(``History.plot`` draws through ``striate._plot``).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import _args, _plot, io
from .. import layers as L
from ..layers.chain import layers_of, named_leaves
from ..optim.schedules import LRScheduler

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LayerHealth",
    "LayerHealthWarning",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "TrainState",
]


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
        return _plot.plot_history(self, path)


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
        self.patience = _args.int_in(patience, "patience", 0)
        self.restore_best_weights = _args.flag(restore_best_weights, "restore_best_weights")
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
        self.save_best_only = _args.flag(save_best_only, "save_best_only")
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
        self.per_step = _args.flag(per_step, "per_step")

    def _set(self, t):
        # A striate.optim schedule over this optimizer sets every group's rate itself: assigning its
        # return value (group 0's rate) to ``optimizer.lr`` would flatten per-group rates.
        sets_groups = isinstance(self.schedule, LRScheduler) and self.schedule.optimizer is self.optimizer
        lr = self.schedule(t)
        if isinstance(lr, (list, tuple)) and lr:
            lr = lr[0]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"the schedule must return a finite learning rate >= 0, got {lr!r} at t={t}")
        if not sets_groups:
            self.optimizer.lr = float(lr)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_step:
            self._set(epoch)

    def on_batch_begin(self, step, logs=None):
        if self.per_step:
            self._set(self.state.global_step)


class CallbackList:
    """Every callback of a run, called in order: one call here is one call on each."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def bind(self, model, optimizer, state):
        for cb in self.callbacks:
            cb._bind(model, optimizer, state)

    def on_train_begin(self, logs):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, dict(logs))

    def on_batch_begin(self, step, logs):
        for cb in self.callbacks:
            cb.on_batch_begin(step, logs)

    def on_batch_end(self, step, logs):
        for cb in self.callbacks:
            cb.on_batch_end(step, logs)

    def state_dicts(self):
        return [cb.state_dict() for cb in self.callbacks]

    def load_state_dicts(self, states):
        for cb, cb_state in zip(self.callbacks, states):
            if cb_state is not None:
                cb.load_state_dict(cb_state)


# --------------------------------------------------------------------------- layer health


class LayerHealthWarning(UserWarning):
    """A layer's gradient exploded, or most of a ReLU's units are dead (see ``LayerHealth``)."""


class LayerHealth(Callback):
    """A ``fit`` callback that records, per epoch, gradient norms and dead ReLUs.

    For every trainable parameter it records ``grad_norm/<name>`` (for
    example ``grad_norm/0.weight``): the L2 norm of the parameter's gradient,
    averaged over the epoch's batches. For every ReLU layer ``i`` it records
    ``dead_relu/<i>`` (``dead_relu/3.body.2`` inside a nested container):
    the fraction of the layer's units that were zero for
    every training sample of the epoch. A unit is one element of the layer's
    per-sample output (a channel at one position), so a channel that is zero
    only at the border counts only its border units. The values go into the
    epoch's logs and into ``History.history`` under those keys.

    At the end of each epoch it warns (``LayerHealthWarning``) when a
    gradient norm exceeds ``max_grad_norm``, when it grew more than
    ``growth`` times over the previous epoch's, or when more than
    ``dead_fraction`` of a ReLU's units are dead.

    Parameters
    ----------
    max_grad_norm : float, default 1e3
    growth : float, default 10.0
    dead_fraction : float in (0, 1], default 0.9
    model : Sequential, optional
        Only needed when the hooks are called by hand; ``fit`` sets ``self.model``.

    Examples
    --------
    >>> import striate as st
    >>> from striate.datasets import load_digits
    >>> (x, y), _ = load_digits()
    >>> h = st.zoo.lenet5().fit(x[:256], y[:256], epochs=1, callbacks=[LayerHealth()], verbose=0)
    >>> [k for k in h.history if k.startswith("dead_relu")]
    ['dead_relu/1', 'dead_relu/4', 'dead_relu/8', 'dead_relu/10']
    """

    def __init__(self, max_grad_norm=1e3, growth=10.0, dead_fraction=0.9, *, model=None):
        self.max_grad_norm = _args.positive_real(max_grad_norm, "max_grad_norm")
        self.growth = _args.positive_real(growth, "growth")
        self.dead_fraction = _args.positive_real(dead_fraction, "dead_fraction")
        if self.dead_fraction > 1:
            raise ValueError(f"`dead_fraction` must be in (0, 1], got {dead_fraction!r}")
        if model is not None:
            self.model = model
        self._previous = {}
        self._reset()

    def _reset(self):
        self._norm_sum = {}
        self._batches = 0
        self._alive = {}

    def _watched(self):
        if getattr(self, "model", None) is None:
            raise RuntimeError("LayerHealth has no model: pass it to fit(callbacks=...) or as `model`")
        layers = layers_of(self.model)
        params = [(f"{i}.{n}", p) for i, l in enumerate(layers) for n, p in l.named_parameters() if p.trainable]
        relus = [(name, l) for name, l in named_leaves(layers) if isinstance(l, L.ReLU)]
        return params, relus

    # -- hooks -------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._watched()
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()

    def on_batch_end(self, step, logs=None):
        params, relus = self._watched()
        self._batches += 1
        for name, p in params:
            if p.grad is not None:
                g = p.grad.reshape(-1).astype(np.float64)
                self._norm_sum[name] = self._norm_sum.get(name, 0.0) + float(np.sqrt(g @ g))
        for i, layer in relus:
            y = getattr(layer, "_y", None)  # the output of the batch just trained on
            if y is None or y.ndim < 1 or y.shape[0] == 0:
                continue
            alive = (y > 0).any(axis=0)
            prev = self._alive.get(i)
            self._alive[i] = alive if prev is None or prev.shape != alive.shape else (prev | alive)

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        if self._batches:
            for name, total in self._norm_sum.items():
                values[f"grad_norm/{name}"] = total / self._batches
            for i, alive in self._alive.items():
                values[f"dead_relu/{i}"] = 1.0 - float(np.count_nonzero(alive)) / alive.size
        if logs is not None:
            logs.update(values)
        self._record(values)
        self._warn(epoch, values)
        self._previous = {k: v for k, v in values.items() if k.startswith("grad_norm/")}

    def _record(self, values):
        """Add the values to the run's History, unless fit already stored them from the logs."""
        history = getattr(getattr(self, "state", None), "history", None)
        if history is None or not hasattr(history, "history"):
            return
        done = len(getattr(history, "epoch", []))
        for key, v in values.items():
            if len(history.history.get(key, ())) < done:
                history.history.setdefault(key, []).append(float(v))

    def _warn(self, epoch, values):
        problems = []
        for key, v in values.items():
            if key.startswith("grad_norm/"):
                name = key[len("grad_norm/"):]
                before = self._previous.get(key)
                if not math.isfinite(v) or v > self.max_grad_norm:
                    problems.append(f"gradient of {name} exploded: norm {v:.3g} > max_grad_norm {self.max_grad_norm:g}")
                elif before is not None and before > 0 and v > self.growth * before:
                    problems.append(
                        f"gradient of {name} exploded: norm {v:.3g}, {v / before:.1f}x the previous epoch's {before:.3g}"
                    )
            elif v > self.dead_fraction:
                layer = key[len("dead_relu/"):]
                problems.append(f"ReLU {layer}: {100 * v:.1f}% of its units are dead (output 0 for every sample)")
        if problems:
            warnings.warn(f"epoch {epoch + 1}: " + "; ".join(problems), LayerHealthWarning, stacklevel=2)

    def state_dict(self):
        return {"previous": dict(self._previous)}

    def load_state_dict(self, state):
        self._previous = {str(k): float(v) for k, v in dict(state.get("previous", {})).items()}
