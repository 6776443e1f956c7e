"""The training loop: ``fit``, built from ``train_step`` and ``_train_epoch`` (``evaluate``, ``predict`` re-exported).

``fit`` is a Keras-like loop over mini-batches for any model with the model
protocol (``model(x)``, ``model.backward(dloss)``, ``parameters()``,
``state_dict()``/``load_state_dict()``, ``train()``/``eval()``, its layers as
``model.layers`` or by indexing); it never imports ``Sequential``. It owns
every source of randomness of a run: one NumPy ``Generator`` (from ``seed``,
or drawn from striate's global RNG) shuffles the data, seeds each Dropout
layer's generator and a base seed from which every augmentation batch gets
its own integer seed. All of that, with the model, the optimizer state, the
epoch and the history, goes into a checkpoint, so ``fit(..., resume_from=path)``
continues bit-exactly.

What differs between runs is held by objects whose defaults do nothing, not
by branches in the loop: the run hook (``LocalRun``, or ``DistributedRun``
under MPI), the callbacks (``CallbackList``), the progress output
(``_Progress``, silent with ``verbose=0``) and the checkpoint writer. The
frozen-backbone shortcut (``feature_cache``) only changes what the loop
trains on: the head, on cached features.

The data reaches the loop through one seam (``data.ArrayBatches`` for
arrays, ``sources.LoaderBatches`` for a DataLoader or any re-iterable of
batches), so everything above works the same on both.

Not here: the step itself (``step.train_step``), batching (``data``,
``sources``), evaluation (``evaluation``),
callbacks (``callbacks``), the checkpoint format (``checkpoint``), the layers,
losses and optimizers, mixed precision, gradient accumulation and mid-epoch
checkpoints (checkpoints are taken at epoch boundaries).
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import sys
import time

import numpy as np

from .. import _args, io, optim
from ..datasets.loader import ArrayDataset
from ..layers.chain import leaves
from . import feature_cache
from .callbacks import Callback, CallbackList, History, TrainState
from .checkpoint import RunRandomness, _load_into, _make_optimizer, _read_checkpoint, save_checkpoint
from .data import (
    ArrayBatches, apply_augment, as_targets, batch_seed, check_input, check_targets_fit, to_float32, validation_pair,
    validation_set,
)
from .evaluation import (  # noqa: F401  (_mode, evaluate, predict: re-exported)
    _get_modes, _mode, _n_correct, _remember_loss, _resolve_loss, _set_modes, _top_k_correct, evaluate, predict,
    run_evaluation,
)
from .sources import LoaderBatches, is_dataset, is_source
from .step import LOCAL, backward_fn, distributed_run, lr_of, train_step

__all__ = ["cached_fit", "evaluate", "fit", "predict"]


# --------------------------------------------------------------------------- the model protocol


def _num_outputs(model, x):
    """Run one sample through the model in evaluation mode; return its number of outputs."""
    with _mode(model, False):
        out = model(x[:1])
    if not isinstance(out, np.ndarray) or out.ndim != 2:
        shape = getattr(out, "shape", None)
        raise ValueError(f"the model must return (N, classes) outputs, got shape {shape}")
    return int(out.shape[1])


def _dropout_layers(model):
    return [layer for layer in leaves(model) if hasattr(layer, "set_rng")]  # nested ones too


# --------------------------------------------------------------------------- the pieces of a run


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


class _Checkpointer:
    """Writes a resumable checkpoint at the end of every epoch; does nothing without a path."""

    def __init__(self, path, model, optimizer, batches, rand, history, callbacks):
        self.path = path
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.rand, self.history, self.callbacks = rand, history, callbacks

    def epoch_end(self, epoch, global_step):
        if self.path is None:
            return
        save_checkpoint(
            self.path, self.model, self.optimizer,
            {
                "epoch": epoch + 1,
                "global_step": global_step,
                "steps_per_epoch": self.batches.steps_per_epoch,
                "data": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
                **self.rand.state(),
                "history": self.history._to_json(),
                "callbacks": self.callbacks.state_dicts(),
            },
        )


class _Run:
    """What one ``fit`` run trains, with what, and the objects that watch it."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


def _train_epoch(r, epoch):
    """Train ``r.net`` for one epoch; return the epoch's logs (loss, accuracy, validation, lr, time)."""
    r.state.epoch = epoch
    t0 = time.perf_counter()
    r.callbacks.on_epoch_begin(epoch, {})
    lr_used = None  # the rate of the epoch's last step, as the progress bar shows it
    batches = r.batches.epoch(epoch, r.rand.shuffle)
    r.net.train()
    r.progress.begin(epoch)
    loss_sum, correct, seen = 0.0, 0, 0
    top = [0] * len(r.top_k)
    for step, (xb, yb) in enumerate(batches):
        if r.augment is not None:
            xb = apply_augment(r.augment, xb, batch_seed(r.rand.augment_seed, epoch, step))
        r.callbacks.on_batch_begin(step, {})
        lr_used = lr_of(r.optimizer)
        out, loss_value = train_step(
            r.net, xb, yb, r.loss_fn, r.optimizer, params=r.params, backward=r.backward, run=r.run,
            global_count=r.batches.global_count(step), epoch=epoch + 1, step=step + 1, clip_grad_norm=r.clip,
        )
        r.state.global_step += 1
        nb = xb.shape[0]
        batch_correct = _n_correct(out, yb)
        loss_sum += loss_value * nb
        correct += batch_correct
        seen += nb
        for i, k in enumerate(r.top_k):
            top[i] += _top_k_correct(out, yb, k)
        r.callbacks.on_batch_end(
            step, {"loss": loss_value, "accuracy": batch_correct / max(nb, 1), "lr": lr_of(r.optimizer)}
        )
        r.progress.batch(loss_sum / max(seen, 1), correct / max(seen, 1))
    loss_sum, correct, seen, *top = r.run.reduce(loss_sum, correct, seen, *top)
    r.run.end_epoch(r.net)
    logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
    logs.update({f"top_{k}_accuracy": c / seen for k, c in zip(r.top_k, top)})
    if r.x_val is not None:
        val = run_evaluation(r.net, r.x_val, r.y_val, max(r.batch_size, 256), loss=r.loss_fn, top_k=r.top_k)
        logs.update({f"val_{key}": value for key, value in val.items()})
    logs["lr"] = lr_used
    logs["time"] = time.perf_counter() - t0
    return logs


def _check_metrics(metrics):
    """The ``k`` of every top-k accuracy ``metrics`` asks for (``"accuracy"`` is always recorded)."""
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"`metrics` must be a list of metric names, got {type(metrics).__name__}")
    ks = []
    for i, name in enumerate(metrics):
        if not isinstance(name, str):
            raise TypeError(f"`metrics[{i}]` must be a str, got {type(name).__name__}")
        if name == "accuracy":
            continue
        text = name[: -len("_accuracy")] if name.endswith("_accuracy") else name
        k = 5 if text == "top_k" else (int(text[4:]) if text.startswith("top_") and text[4:].isdigit() else None)
        if k is None or k < 1:
            raise ValueError(
                f"`metrics[{i}]` must be 'accuracy', 'top_k' (top-5) or 'top_<k>' such as 'top_3', got {name!r}"
            )
        if k not in ks:
            ks.append(k)
    return tuple(ks)


def _check_fit_args(epochs, batch_size, verbose, seed, augment, callbacks, validation_split):
    epochs = _args.int_in(epochs, "epochs", 1)
    batch_size = _args.int_in(batch_size, "batch_size", 1)
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"`verbose` must be 0, 1 or 2, got {verbose!r}")
    if seed is not None:
        seed = _args.int_in(seed, "seed", 0)
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
    return epochs, batch_size, seed, callbacks


def _check_checkpoint_path(path):
    """Refuse, before the first epoch, a checkpoint path that no save could write."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`checkpoint` must be a path, got {type(path).__name__}")
    target = os.path.realpath(os.fspath(path))
    if os.path.isdir(target):
        raise ValueError(f"`checkpoint` must name a file, got the directory {os.fspath(path)!r}")
    if os.path.exists(target) and not os.path.isfile(target):
        raise ValueError(f"`checkpoint` must name a regular file, got {os.fspath(path)!r}")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise ValueError(f"`checkpoint`: the folder {folder!r} does not exist")


def _clip(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`clip_grad_norm` must be a float, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`clip_grad_norm` must be a finite float > 0, got {value!r}")
    return float(value)


# ``fit(optimizer=<name>)``: each optimizer with the rate torch defaults to (SGD as fit's default).
_OPTIMIZER_NAMES = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-2),
}


def _optimizer_by_name(name, net):
    make = _OPTIMIZER_NAMES.get(name.lower())
    if make is None:
        raise ValueError(f"`optimizer` must be an optimizer or one of {', '.join(map(repr, _OPTIMIZER_NAMES))}, "
                         f"got {name!r}")
    return make(net.parameters())


def _check_optimizer_params(optimizer, model):
    """An optimizer over parameters that are not the model's trains nothing: refuse it."""
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"`optimizer` must be an optimizer (with .step()) or a name, got {type(optimizer).__name__}")
    params = getattr(optimizer, "params", None)
    if not isinstance(params, list):
        return
    own = {id(p) for p in model.parameters()}
    foreign = [p for p in params if id(p) not in own]
    if foreign:
        raise ValueError(
            f"`optimizer` holds {len(foreign)} parameter(s) that are not the model's "
            f"(first: {getattr(foreign[0], 'name', '?')!r}); build it over model.parameters()"
        )


def _resume(path, tensors, meta, model, optimizer, batches, dropouts, history, state):
    """Load a checkpoint's model, optimizer, history and data position; return
    ``(randomness, start epoch, callback states)``."""
    steps = batches.steps_per_epoch
    saved = meta.get("state") or {}
    try:
        rand = RunRandomness.from_state(saved)
        start_epoch = int(saved["epoch"])
        state.global_step = int(saved["global_step"])
        saved_history = History._from_json(saved["history"])
        cb_states = saved.get("callbacks", [])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise io.FormatError(path, None, f"the checkpoint's training state is invalid or incomplete ({exc!r})") from None
    if len(rand.dropout) != len(dropouts):
        raise ValueError(
            f"the checkpoint {path} has {len(rand.dropout)} Dropout generators, "
            f"the model has {len(dropouts)}"
        )
    if saved.get("steps_per_epoch", steps) != steps:
        raise ValueError(
            f"resuming needs the same data and batch_size: the checkpoint has {saved['steps_per_epoch']} "
            f"steps per epoch, this call {steps}"
        )
    _load_into(path, tensors, meta, model, optimizer)
    if hasattr(batches, "load_state_dict"):
        try:
            batches.load_state_dict(saved.get("data"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the checkpoint {path} was written for other data: {exc}") from None
    history.history, history.epoch = saved_history.history, saved_history.epoch
    return rand, start_epoch, cb_states


# --------------------------------------------------------------------------- fit


def _inputs(x, y, steps_per_epoch, validation_split):
    """``(source, x, y)``: a batch source and None, None, or None and the checked arrays."""
    if isinstance(x, ArrayDataset) and y is None:
        x, y = x.x, x.y
    if y is None:
        if isinstance(x, np.ndarray) or not is_source(x):
            hint = " (wrap a data set in striate.datasets.DataLoader)" if is_dataset(x) else ""
            raise TypeError(
                "`y` is required unless `x` is a DataLoader, an ArrayDataset or an iterable of "
                f"(x_batch, y_batch) pairs, got {type(x).__name__}{hint}"
            )
        if validation_split:
            raise ValueError("`validation_split` needs arrays; with a loader pass `validation_data`")
        if steps_per_epoch is not None:
            steps_per_epoch = _args.int_in(steps_per_epoch, "steps_per_epoch", 1)
        return x, steps_per_epoch, None, None
    if is_source(x) and not isinstance(x, np.ndarray) and not isinstance(x, (list, tuple)):
        raise TypeError(f"pass `y` only with array inputs: `x` is a {type(x).__name__}, which yields its own targets")
    if steps_per_epoch is not None:
        raise ValueError("`steps_per_epoch` is for loaders and iterables; with arrays every epoch sees all samples")
    x = check_input(x)
    return None, None, x, as_targets(y, x.shape[0])


def _validation(validation_data):
    """``(x_val, y_val)`` checked arrays, ``(source, None)``, or ``(None, None)``."""
    if validation_data is None:
        return None, None
    if isinstance(validation_data, ArrayDataset):
        validation_data = (validation_data.x, validation_data.y)
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2 and not is_source(validation_data):
        return validation_pair(validation_data)
    if is_source(validation_data):
        return validation_data, None
    return validation_pair(validation_data)  # the error message for anything else


def _record_data(model, sample_shape, source, num_outputs):
    """Set ``model.input_shape`` from the data and ``model.classes`` from a loader's data set, when it has them."""
    if hasattr(model, "input_shape") and len(sample_shape) == 3:
        model.input_shape = tuple(int(s) for s in sample_shape)
    classes = getattr(getattr(source, "dataset", None), "classes", None)
    if (hasattr(model, "classes") and isinstance(classes, (list, tuple)) and len(classes) == num_outputs
            and all(isinstance(c, str) for c in classes)):
        model.classes = list(classes)


def _fit(model, x, y, args, require_cache=False):
    """``fit`` with its keyword arguments in the dict ``args``; with ``require_cache``, None (and the
    model untouched) unless the feature cache applies."""
    (epochs, batch_size, optimizer, loss, validation_data, validation_split, shuffle, augment, callbacks,
     seed, verbose, resume_from, checkpoint, distributed, cache_features, steps_per_epoch, metrics,
     clip) = (args[k] for k in _FIT_ARGS)
    if clip is not None:
        clip = _clip(clip)
    epochs, batch_size, seed, callbacks = _check_fit_args(
        epochs, batch_size, verbose, seed, augment, callbacks, validation_split
    )
    shuffle, distributed, cache_features = (_args.flag(v, k) for v, k in (
        (shuffle, "shuffle"), (distributed, "distributed"), (cache_features, "cache_features")))
    _check_checkpoint_path(checkpoint)
    top_k = _check_metrics(metrics)
    source, steps_per_epoch, x, y = _inputs(x, y, steps_per_epoch, validation_split)
    sample_shape = None if x is None else x.shape[1:]
    loss_fn = _resolve_loss(loss)
    val = _validation(validation_data)
    net = model  # what the loop trains: the model, or its head on cached features
    cached = None
    if (cache_features or require_cache) and source is None and not is_source(val[0]):
        cached = feature_cache.plan(
            model, x, val[0], augment=augment, resume_from=resume_from,
            checkpoint=checkpoint, distributed=distributed, callbacks=callbacks,
        )
    if require_cache and cached is None:
        return None
    if cached is not None:
        net, x, feats_val = cached
        val = val if val[0] is None else (feats_val, val[1])
    if source is None:
        x, y, x_val, y_val = validation_set(x, y, None if val[0] is None else val, validation_split)
        num_outputs = _num_outputs(net, to_float32(x[:1]))
        check_targets_fit(y, num_outputs)
        if y_val is not None:
            check_targets_fit(y_val, num_outputs, "validation_data[1]")
        _record_data(model, sample_shape, None, num_outputs)
    else:
        x_val, y_val = val

    run = distributed_run(model) if distributed else LOCAL
    if resume_from is not None:
        tensors, meta = _read_checkpoint(resume_from)
        if optimizer is None:
            optimizer = _make_optimizer(meta, model)
    if optimizer is None:
        optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    elif isinstance(optimizer, str):
        optimizer = _optimizer_by_name(optimizer, net)
    else:
        _check_optimizer_params(optimizer, model)

    shard = None if run is LOCAL else run.shard
    if source is None:
        batches = ArrayBatches(x, y, batch_size, shuffle, shard=shard)
    else:
        outputs = {}

        def first(xb, yb):
            outputs["n"] = _num_outputs(net, xb)
            _record_data(model, xb.shape[1:], source, outputs["n"])

        batches = LoaderBatches(
            source, epochs, steps_per_epoch, shard=shard, agree_seed=None if run is LOCAL else run.agree_seed,
            on_first=first, check_targets=lambda yb, where: check_targets_fit(yb, outputs["n"], f"`x` {where}"),
        )
    steps = batches.steps_per_epoch
    history = History()
    state = TrainState(epochs, steps, history, is_root=run.is_root)
    dropouts = _dropout_layers(net)
    start_epoch, cb_states = 0, []
    if resume_from is not None:
        rand, start_epoch, cb_states = _resume(
            resume_from, tensors, meta, model, optimizer, batches, dropouts, history, state
        )
    else:
        rand = RunRandomness.fresh(seed, len(dropouts), agree=run.agree_seed)
    for layer, g in zip(dropouts, rand.dropout):
        layer.set_rng(g)
    _remember_loss(model, loss_fn)

    callbacks = CallbackList(callbacks)
    r = _Run(
        net=net, batches=batches, batch_size=batch_size, augment=augment, loss_fn=loss_fn,
        optimizer=optimizer, params=[p for p in net.parameters() if p.trainable], backward=backward_fn(net),
        clip=clip,
        run=run, rand=rand, state=state, callbacks=callbacks, x_val=x_val, y_val=y_val, top_k=top_k,
        progress=_Progress(verbose if run.is_root else 0, epochs, steps),
    )
    saver = _Checkpointer(
        checkpoint if run.is_root else None, model, optimizer, batches, rand, history, callbacks
    )
    callbacks.bind(model, optimizer, state)
    callbacks.on_train_begin({})
    callbacks.load_state_dicts(cb_states)

    saved_modes = _get_modes(net)
    try:
        for epoch in range(start_epoch, epochs):
            logs = _train_epoch(r, epoch)
            history._append(epoch, logs)
            r.progress.end(epoch, logs)
            callbacks.on_epoch_end(epoch, logs)
            saver.epoch_end(epoch, state.global_step)
            if state.stop_training:
                break
    finally:
        r.progress.close()
        _set_modes(net, saved_modes)
        if source is not None:
            batches.close()
    callbacks.on_train_end({})
    return history


def fit(
    model,
    x,
    y=None,
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
    steps_per_epoch=None,
    metrics=None,
    clip_grad_norm=None,
):
    """Train ``model`` on ``(x, y)``, or on a loader, with mini-batch gradient descent.

    Parameters
    ----------
    model : Sequential
    x : ndarray, shape (N, ...), ArrayDataset, DataLoader or iterable of (x_batch, y_batch)
        Inputs. Arrays (memmaps included) are converted one batch at a time,
        never all at once: float32 is used as is, float64 cast to float32,
        uint8 scaled by 1/255 to [0, 1] float32 (the rounding of the dataset
        loaders). Other dtypes raise TypeError. An ``ArrayDataset`` stands for
        its arrays. A ``striate.datasets.DataLoader`` or any other iterable of
        ``(x_batch, y_batch)`` pairs is a batch source (then ``y`` is None, and
        ``batch_size`` and ``shuffle`` are the source's business): see
        ``steps_per_epoch``; a source with ``state_dict()`` (a DataLoader) is
        checkpointed and restored with the run. When it batches a data set
        with ``classes`` (``ImageFolder``), they become ``model.classes``.
    y : ndarray, optional
        Int class labels (N,), or targets (N, classes) such as one-hot rows.
        With ``loss="squared_error"`` int labels stand for one-hot rows.
        Required with arrays, None with a batch source.
    epochs : int, default 10
        The total number of epochs; a resumed run continues up to it.
    batch_size : int, default 64
        The last batch of an epoch may be smaller.
    optimizer : optimizer or str, optional
        Default: ``striate.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)``.
        A name builds one over the model's parameters with torch's default
        rate: ``"sgd"`` (the default above), ``"adam"`` and ``"adamw"``
        (lr=1e-3), ``"rmsprop"`` (lr=1e-2). An optimizer must hold only the
        model's parameters (ValueError otherwise, before the first step).
    loss : str or loss object, default "cross_entropy"
        ``"cross_entropy"``, ``"squared_error"`` or a ``striate.losses`` object.
    validation_data : (x_val, y_val), ArrayDataset, DataLoader or iterable, optional
        Evaluated at the end of every epoch; adds ``val_loss``, ``val_accuracy``.
        A DataLoader is read from the start of its current epoch and left as
        it was, so each evaluation sees the same batches.
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
        bitwise equal to the uncached run (``striate.training.feature_cache.plan``
        says when the shortcut applies). False always runs the full model.
    distributed : bool, default False
        Data-parallel training under ``mpiexec -n K`` (needs the ``[mpi]``
        extra): every rank holds all of ``x`` and follows rank 0's seed, takes
        its shard of each global batch of ``batch_size``, and the gradients are
        averaged over the ranks before every step, so all ranks keep equal
        weights. Only rank 0 prints and writes ``checkpoint``. A batch source
        is iterated whole on every rank, each keeping its shard of every
        batch; a DataLoader's seed is set to rank 0's.
    steps_per_epoch : int, optional
        Batch sources only (with arrays it is a ValueError). None: an epoch is
        one full pass over the source. An int ``k``: each epoch takes the next
        ``k`` batches, continuing where the previous epoch stopped and
        starting the source again when it ends. A one-shot iterator (a
        generator) can feed ``epochs > 1`` only with ``steps_per_epoch``, and
        raises ValueError if it runs out.
    metrics : list of str, optional
        What History records besides the loss: ``"accuracy"`` (always
        recorded) and top-k accuracies, ``"top_k"`` (k = 5) or ``"top_<k>"``
        such as ``"top_3"``, recorded as ``"top_<k>_accuracy"`` (and
        ``"val_top_<k>_accuracy"``), with ``striate.metrics.top_k_accuracy``'s
        tie rule.

    After training, ``model.input_shape`` is the data's ``(C, H, W)`` (4-D
    inputs), when the model has that attribute.

    clip_grad_norm : float, optional
        Clip the total 2-norm of the trainable gradients to this value after
        backward and before every step (``striate.optim.clip_grad_norm``, as
        ``torch.nn.utils.clip_grad_norm_``). A non-finite total norm still
        stops the run with ``NonFiniteError``.

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
    args = dict(locals())
    return _fit(model, x, y, {k: args[k] for k in _FIT_ARGS})


def cached_fit(model, x, y, **fit_kwargs):
    """Train only the head of ``model`` on cached backbone features, when that is exact.

    ``fit`` takes this shortcut by itself (``cache_features=True``); this
    entry point takes it or declines: it returns None, with the model
    untouched, when the shortcut does not apply (the conditions are those of
    ``striate.training.feature_cache.plan``), when ``callbacks`` is not a list
    or tuple (iterating another iterable could consume it), or when ``x`` or
    ``validation_data`` is malformed (``fit`` reports those). Otherwise it
    trains like ``fit(model, x, y, **fit_kwargs)`` and returns its History,
    bitwise equal to the uncached run's (apart from ``time``).
    """
    callbacks = fit_kwargs.get("callbacks") or ()
    if not isinstance(callbacks, (list, tuple)) or y is None:
        return None
    args = {k: fit_kwargs.get(k) for k in ("augment", "resume_from", "checkpoint", "distributed")}
    if feature_cache.applies(model, callbacks=callbacks, **args) is None:
        return None
    try:
        x = check_input(x)
        if fit_kwargs.get("validation_data") is not None:
            validation_pair(fit_kwargs["validation_data"])
    except (TypeError, ValueError):
        return None
    bound = inspect.signature(fit).bind(model, x, y, **fit_kwargs)  # a TypeError for what fit refuses
    bound.apply_defaults()
    return _fit(model, x, y, {k: bound.arguments[k] for k in _FIT_ARGS}, require_cache=True)


# The keyword arguments of ``fit``, in order.
_FIT_ARGS = tuple(inspect.signature(fit).parameters)[3:]
