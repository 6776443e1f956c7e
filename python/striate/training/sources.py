"""Batch sources for ``fit``: a ``DataLoader`` or any re-iterable of ``(x_batch, y_batch)``.

``LoaderBatches`` puts such a source behind the epoch-iterator seam of
``striate.training.data`` (``steps_per_epoch``, ``epoch(epoch, rng)``,
``global_count(step)``), so the loop, the progress bar, the callbacks, the
checkpoints, the non-finite guard and MPI sharding work on it unchanged.
``is_source`` says what ``fit``/``evaluate``/``predict`` treat as a source,
``source_batches`` is the one pass ``evaluate`` and ``predict`` take.

The rules:

- Without ``steps_per_epoch`` an epoch is one full pass (``iter(source)``
  until it stops). A one-shot iterator (``iter(it) is it``, a generator) can
  make one pass only, so it needs ``epochs=1``, or ``steps_per_epoch``.
- With ``steps_per_epoch=k`` every epoch takes the next ``k`` batches: the
  iteration continues where the last epoch stopped, and a re-iterable that
  ends is started again (a ``DataLoader`` then begins its next epoch). A
  one-shot iterator that runs out raises ``ValueError``.
- A source with ``state_dict()``/``load_state_dict()`` (``DataLoader``) has
  its state saved in checkpoints and restored on resume, so a resumed run
  gets the batches of an uninterrupted one; other sources must yield the same
  batches every pass for that.
- Under MPI every rank iterates the whole source and keeps its shard of each
  global batch, as the array path does. A source with a ``seed`` attribute
  and a state (``DataLoader``) is given rank 0's seed first.

Not here: decoding, shuffling or prefetching (``striate.datasets``), the loop.
"""

from __future__ import annotations

import numpy as np

from .data import as_targets, check_input, to_float32

__all__ = ["LoaderBatches", "is_source", "source_batches", "split_batch"]


def is_source(x):
    """True when ``x`` is a batch source: iterable, and not an array, an array-like
    (``__array__``, such as a torch tensor) or a list of samples."""
    if isinstance(x, (np.ndarray, str, bytes, dict)) or isinstance(x, (list, tuple)) and _looks_like_samples(x):
        return False
    if hasattr(x, "__array__"):
        return False
    return hasattr(x, "__iter__")


def _looks_like_samples(seq):
    """A list or tuple holding numbers or rows (array-like ``x``), not ``(x_batch, y_batch)`` pairs."""
    if not seq:
        return True
    first = seq[0]
    return not (isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], np.ndarray))


def is_dataset(x):
    """A data set (``len()``, ``ds[i]`` or ``get_batch``) that is not itself a batch source."""
    return callable(getattr(x, "get_batch", None)) or (
        hasattr(x, "__getitem__") and hasattr(x, "__len__") and not hasattr(x, "__iter__")
        and not isinstance(x, (np.ndarray, list, tuple))
    )


def split_batch(item, where, targets=True):
    """``(x_batch float32, y_batch)`` from one item of a source, checked; ``where`` names it in errors.

    With ``targets=False`` (``predict``) a bare array is accepted too and y is None.
    """
    if isinstance(item, (tuple, list)) and len(item) == 2:
        xb, yb = item
    elif not targets and isinstance(item, np.ndarray):
        xb, yb = item, None
    else:
        got = type(item).__name__ + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise TypeError(f"{where} must be an (x_batch, y_batch) pair, got {got}")
    xb = to_float32(check_input(xb, f"{where}[0]"))
    yb = as_targets(yb, xb.shape[0], f"{where}[1]", f"{where}[0]") if targets else None
    return xb, yb


class _ShapeCheck:
    """Every batch must have the sample shape of the first one (and its target shape)."""

    def __init__(self):
        self.shape = None

    def __call__(self, xb, yb, where):
        shape = (xb.shape[1:], None if yb is None else yb.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(
                f"{where} has samples of shape {xb.shape[1:]} but the first batch had {self.shape[0]}"
                + ("" if yb is None else f" (targets {shape[1]} and {self.shape[1]})")
            )


def _stateful(source):
    return callable(getattr(source, "state_dict", None)) and callable(getattr(source, "load_state_dict", None))


def source_batches(source, name="x", targets=True):
    """One pass over ``source``, each batch checked (``split_batch``); a ``DataLoader`` is left as it was.

    A source with a state whose state has a ``position`` (``DataLoader``) is
    read from the start of its current epoch and given its state back
    afterwards, so evaluating a validation loader every epoch neither
    advances it nor changes what a resumed run sees.
    """
    saved = source.state_dict() if _stateful(source) else None
    if isinstance(saved, dict) and "position" in saved:
        source.load_state_dict({**saved, "position": 0})
    check = _ShapeCheck()
    try:
        count = 0
        for b, item in enumerate(source):
            where = f"`{name}` batch {b + 1}"
            xb, yb = split_batch(item, where, targets)
            check(xb, yb, where)
            count += 1
            yield xb, yb
        if count == 0:
            raise ValueError(f"`{name}` yielded no batches")
    finally:
        if isinstance(saved, dict) and "position" in saved:
            source.load_state_dict(saved)


class LoaderBatches:
    """The epoch-iterator seam (``striate.training.data``) over a batch source.

    Parameters
    ----------
    source : iterable
        A ``DataLoader`` or any iterable of ``(x_batch, y_batch)``.
    epochs : int
        The run's epochs, to refuse a one-shot iterator that cannot feed them.
    steps_per_epoch : int, optional
        Batches per epoch; default one full pass of the source.
    shard : callable, optional
        ``shard(indices) -> indices``: this rank's part of each global batch.
    agree_seed : callable, optional
        ``agree(seed) -> seed`` (MPI): the ranks' loaders shuffle alike.
    on_first : callable, optional
        ``on_first(x_batch, y_batch)`` on the first (global) batch of the run,
        before anything trains on it: ``fit`` checks the model against it.
    check_targets : callable, optional
        ``check_targets(y_batch, where)`` on every batch.
    """

    def __init__(self, source, epochs, steps_per_epoch=None, shard=None, agree_seed=None, on_first=None,
                 check_targets=None):
        self.source = source
        self.one_shot = iter(source) is source if not _stateful(source) else False
        if self.one_shot and steps_per_epoch is None and epochs > 1:
            raise ValueError(
                f"`x` is a one-shot iterator ({type(source).__name__}), which can feed one epoch only: "
                f"pass `steps_per_epoch` (it then feeds that many batches to each of the {epochs} epochs), "
                "epochs=1, or a re-iterable such as a striate.datasets.DataLoader"
            )
        if steps_per_epoch is None and not self.one_shot:
            try:
                self.steps_per_epoch = int(len(source)) or None
            except TypeError:
                self.steps_per_epoch = None
            self.fixed = False
        else:
            self.steps_per_epoch = steps_per_epoch
            self.fixed = steps_per_epoch is not None
        self.num_samples = None
        self.shard = shard
        self.on_first, self.check_targets = on_first, check_targets
        self._check = _ShapeCheck()
        self._it = source if self.one_shot else None
        self._last_global = 0
        if agree_seed is not None and _stateful(source) and isinstance(getattr(source, "seed", None), int):
            agreed = agree_seed(source.seed)
            if agreed != source.seed:
                source.load_state_dict({**source.state_dict(), "seed": agreed})

    def global_count(self, step):
        """The size of the global batch last handed out (the one of ``step``)."""
        return self._last_global

    def state_dict(self):
        """The source's state for a checkpoint (None for sources without one)."""
        return self.source.state_dict() if _stateful(self.source) else None

    def load_state_dict(self, state):
        """Restore a checkpoint's source state; the next batch is the one an uninterrupted run would take."""
        if state is None or not _stateful(self.source):
            return
        self.close()
        self.source.load_state_dict(state)

    def close(self):
        """Stop a live iteration (a DataLoader's background thread)."""
        if self.one_shot:
            return
        it, self._it = self._it, None
        if it is not None and callable(getattr(it, "close", None)):
            it.close()

    def _next(self, epoch, step):
        """The next raw item, restarting a re-iterable that ended (fixed-length epochs only); None at the end."""
        restarted = False
        while True:
            if self._it is None:
                self._it = iter(self.source)
                restarted = True
            try:
                return next(self._it)
            except StopIteration:
                if self.one_shot:
                    if self.fixed:
                        raise ValueError(
                            f"`x` ran out of batches at step {step + 1} of epoch {epoch + 1}: a one-shot "
                            f"iterator must yield steps_per_epoch x epochs = "
                            f"{self.steps_per_epoch} x {epoch + 1}+ batches"
                        ) from None
                    return None
                self._it = None
                if not self.fixed:
                    return None
                if restarted:
                    raise ValueError(f"`x` yielded no batches (epoch {epoch + 1}, step {step + 1})") from None

    def epoch(self, epoch, rng):
        """The batches of one epoch (``rng`` is not used: the source orders its own samples)."""
        return self._batches(epoch)

    def _batches(self, epoch):
        step = 0
        while not self.fixed or step < self.steps_per_epoch:
            item = self._next(epoch, step)
            if item is None:
                if step == 0:
                    raise ValueError(f"`x` yielded no batches in epoch {epoch + 1}")
                return
            where = f"batch {step + 1} of epoch {epoch + 1}"
            xb, yb = split_batch(item, where)
            self._check(xb, yb, where)
            if self.on_first is not None:
                first, self.on_first = self.on_first, None
                first(xb, yb)
            if self.check_targets is not None:
                self.check_targets(yb, where)
            self._last_global = xb.shape[0]
            if self.shard is not None:
                idx = self.shard(np.arange(xb.shape[0]))
                xb, yb = xb[idx], yb[idx]
            yield xb, yb
            step += 1
