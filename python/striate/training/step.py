"""The training step: forward, loss, backward, finite checks, optimizer step. Written once.

``train_step`` is the step ``fit`` takes for every batch, the step the
learning-rate range test takes while the rate grows, and the step
``striate.introspect.profile`` times layer by layer (it passes a model whose
layers are timed and no optimizer). Its model is anything with the model
protocol: ``model(x)``, ``model.backward(dloss[, input_grad=False])`` and
``model.parameters()``; it never needs ``Sequential`` itself.

A run hook adapts the step to the processes of the run: ``LocalRun`` (one
process; every hook does nothing) or ``DistributedRun`` (over
``striate.distributed.FitHook``: shards batches, averages gradients, sums
metrics, keeps BatchNorm statistics equal, agrees on the seed).

Guarantees: a non-finite loss or gradient raises ``NonFiniteError`` before the
optimizer step, so the parameters keep the values from before the step, and
the buffers (BatchNorm running statistics, ``num_batches_tracked``), which the
forward pass already updated, are put back as they were before it.

Not here: batching, callbacks, progress output or checkpoints (``loop``).
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from .. import _core, distributed, optim

__all__ = ["NonFiniteError", "train_step", "backward_fn", "LocalRun", "DistributedRun", "lr_of"]


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient stopped ``fit``.

    Raised before the optimizer step, so the parameters hold the values they
    had before the failing step. ``epoch`` and ``step`` are 1-based, as shown
    in the progress output; ``what`` names the loss or the parameter;
    ``loss`` is the step's loss when it was finite (a gradient failed), else None.
    """

    def __init__(self, message, *, epoch, step, what, loss=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.what = what
        self.loss = loss


def backward_fn(model):
    """``model.backward`` with ``input_grad=False`` when the model takes it (stop at the first trainable layer)."""
    try:
        params = inspect.signature(model.backward).parameters
    except (TypeError, ValueError):
        params = {}
    if "input_grad" in params:
        return lambda d: model.backward(d, input_grad=False)
    return model.backward


def lr_of(optimizer):
    """The optimizer's current learning rate, or NaN when it has none."""
    lr = getattr(optimizer, "lr", None)
    return float(lr) if isinstance(lr, numbers.Real) else float("nan")


def _buffer_snapshot(model):
    """``[(live array, copy), ...]`` of the model's buffers, to undo a failed step's forward pass."""
    buffers = getattr(model, "buffers", None)
    if not callable(buffers):
        return []
    try:
        live = buffers()
    except TypeError:  # a model whose ``buffers`` takes arguments is not ours to snapshot
        return []
    if not isinstance(live, dict):
        return []
    return [(b, b.copy()) for b in live.values() if isinstance(b, np.ndarray)]


def _restore(snapshot):
    for live, saved in snapshot:
        live[...] = saved


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _finite(g):
    """``np.isfinite(g).all()``; for a C-contiguous float32/float64 array in one pass, without the bool array."""
    if type(g) is np.ndarray and (g.dtype == _F32 or g.dtype == _F64):
        flags = g.flags
        if flags.c_contiguous and flags.aligned:
            return _core.all_finite(g)
    return bool(np.isfinite(g).all())


def _first_nonfinite_grad(params):
    for p in params:
        if p.trainable and p.grad is not None and not _finite(p.grad):
            return p.name
    return None


class LocalRun:
    """The hooks of a run in one process: each one leaves things as they are."""

    is_root = True

    def agree_seed(self, seed):
        return seed

    def shard(self, idx):  # pragma: no cover - ArrayBatches skips it when there is no shard
        return idx

    def combine_gradients(self, params, loss_ok, local_count, global_count):
        """Whether the step goes on to the gradient check; False reports a non-finite loss now."""
        return loss_ok

    def reduce(self, *values):
        return values

    def end_epoch(self, model):
        pass


LOCAL = LocalRun()


class DistributedRun:
    """The hooks of a data-parallel run, over ``striate.distributed.fit_hook(model)``.

    ``fit`` uses the hook's ``seed(s)`` (one run seed for every rank),
    ``shard(indices)`` (this rank's part of each global batch),
    ``average_gradients(params, local_count, global_count)``, ``reduce(*values)``
    (sums of the epoch metrics), ``end_epoch(model)`` (BatchNorm statistics)
    and ``is_root`` (only rank 0 prints progress and writes checkpoints).
    """

    def __init__(self, hook):
        self.hook = hook
        self.is_root = hook.is_root

    def agree_seed(self, seed):
        return self.hook.seed(seed)

    def shard(self, idx):
        return self.hook.shard(idx)

    def combine_gradients(self, params, loss_ok, local_count, global_count):
        if not loss_ok:  # poison the shared gradient, so that every rank stops at this step
            for p in params:
                p.grad = np.full_like(p.data, np.nan)
        self.hook.average_gradients(params, local_count, global_count)
        return True

    def reduce(self, *values):
        return self.hook.reduce(*values)

    def end_epoch(self, model):
        self.hook.end_epoch(model)


def distributed_run(model):
    """The data-parallel run hook for ``fit(distributed=True)``, or ImportError without MPI."""


    if not distributed.available():
        raise ImportError(
            "`distributed=True` needs mpi4py and an MPI library: install the [mpi] extra "
            "(pip install 'striate[mpi]') and run under mpiexec"
        )
    return DistributedRun(distributed.fit_hook(model))


def train_step(model, x, y, loss_fn, optimizer=None, *, params=None, backward=None, run=LOCAL,
               global_count=None, epoch=1, step=1, clip_grad_norm=None):
    """One training step on the batch ``(x, y)``; returns ``(outputs, loss)``.

    Forward in the model's current mode, the loss, backward (down to the first
    trainable layer), the gradients combined over the run's ranks, the finite
    checks, then ``optimizer.step()`` (skipped when ``optimizer`` is None).

    Parameters
    ----------
    model : model protocol
        ``model(x)``, ``model.backward(dloss)`` and ``model.parameters()``.
    x, y : ndarray
        The batch: float32 inputs, labels or targets for ``loss_fn``.
    loss_fn : loss object
        ``loss_fn(outputs, y) -> float`` then ``loss_fn.backward() -> dloss``.
    optimizer : optimizer, optional
    params : list of Parameter, optional
        The trainable parameters (default: those of ``model``); pass them to
        avoid listing them every step.
    backward : callable, optional
        ``backward(dloss)``; default ``backward_fn(model)``.
    run : LocalRun or DistributedRun
    global_count : int, optional
        Samples of the global batch (a distributed run); default ``len(x)``.
    epoch, step : int
        1-based, for the error messages.
    clip_grad_norm : float, optional
        Clip the total 2-norm of ``params``' gradients after they are combined
        and before the gradient check and the step; a non-finite norm leaves
        non-finite gradients, which the check reports.

    Raises
    ------
    NonFiniteError
        The loss or a gradient is not finite; the optimizer step is skipped
        and the buffers are restored to their values before the step.
    """
    if params is None:
        params = [p for p in model.parameters() if p.trainable]
    if backward is None:
        backward = backward_fn(model)
    snapshot = _buffer_snapshot(model)
    try:
        return _checked_step(model, x, y, loss_fn, optimizer, params, backward, run, global_count,
                             epoch, step, clip_grad_norm)
    except NonFiniteError:
        _restore(snapshot)
        raise


def _checked_step(model, x, y, loss_fn, optimizer, params, backward, run, global_count, epoch, step, clip):
    # Non-finite values are reported by the checks below, not as NumPy warnings.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        out = model(x)
        loss_value = float(loss_fn(out, y))
        loss_ok = math.isfinite(loss_value)
        if loss_ok:
            backward(loss_fn.backward())
    n = x.shape[0]
    if not run.combine_gradients(params, loss_ok, n, n if global_count is None else global_count):
        raise NonFiniteError(
            f"the loss is {loss_value} at epoch {epoch}, step {step}; "
            "the parameters are those from before this step",
            epoch=epoch, step=step, what="loss",
        )
    if clip is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            optim.clip_grad_norm(params, clip)
    bad = _first_nonfinite_grad(params)
    if bad is not None:
        raise NonFiniteError(
            f"the gradient of {bad} is not finite at epoch {epoch}, step {step}; "
            "the parameters are those from before this step",
            epoch=epoch, step=step, what=bad, loss=loss_value if loss_ok else None,
        )
    if optimizer is not None:
        optimizer.step()
    return out, loss_value
