"""Training data: input coercion, targets, the validation split, and the epoch iterator ``fit`` reads.

``check_input`` checks what the user passes as inputs without converting it,
``to_float32`` converts one batch (uint8 scaled by 1/255, floats cast), so no
more than a batch of a uint8 array or memmap is ever float32 at once;
``as_targets`` gives int64 labels (or float32 target rows). Errors name the
argument.
``validation_set`` holds out ``validation_data`` or the last
``validation_split`` of the samples. ``ArrayBatches`` is the data source of
``fit``: the mini-batches of in-memory arrays, one epoch at a time.

The seam for other data sources (a DataLoader over files, a stream): the loop
in ``striate.training.loop`` needs only an object with

- ``num_samples``: int, the samples of one epoch over all ranks;
- ``steps_per_epoch``: int, the same every epoch (checkpoints check it);
- ``epoch(epoch, rng)``: an iterator of ``(x_batch, y_batch)`` pairs, float32
  inputs and labels or targets as ``as_targets`` returns them, exactly
  ``steps_per_epoch`` of them. ``rng`` is the run's shuffling generator: a
  source draws from it only to order the samples, at the start of the epoch,
  so a resumed run gets the order of an uninterrupted one;
- ``global_count(step)``: the size of the global batch ``step`` (all ranks
  together), which weighs the gradients of a distributed run.

Augmentation is not the source's business: the loop applies ``augment`` to
each batch with the seed ``batch_seed(base, epoch, step)``, so any source gets
the same reproducible augmentation.

Not here: the loop, losses, callbacks, or reading files (``striate.datasets``).
"""

from __future__ import annotations

import numpy as np

from .. import _args

__all__ = [
    "ArrayBatches", "as_input", "as_targets", "batch_seed", "check_input", "check_targets_fit", "to_float32",
    "validation_set",
]


def check_input(x, name="x"):
    """``x`` checked (dtype, batch dimension, at least one sample) but not converted.

    A ``np.memmap`` or a uint8 array stays what it is: the batches are
    converted one at a time by ``to_float32``, so all of ``x`` is never cast.
    Other dtypes, and masked arrays (their mask would be ignored), raise TypeError.
    """
    _args.not_masked(x, name)
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise TypeError(f"`{name}` must hold float32, float64 or uint8 values, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have a batch dimension and at least 2 dimensions, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one sample, got shape {x.shape}")
    return x


def to_float32(batch):
    """One batch of checked inputs as a C-contiguous float32 array.

    uint8 is scaled by 1/255 (``astype(float32) / float32(255)``, the rounding
    of the dataset loaders, so a uint8 array trains exactly like the float32
    array they would return); floats are cast. A float32 C-contiguous batch is
    returned as is.
    """
    batch = np.asarray(batch)  # a memmap slice becomes a plain view
    if batch.dtype == np.uint8:
        out = batch.astype(np.float32)
        out /= np.float32(255.0)
        return out
    return np.ascontiguousarray(batch, dtype=np.float32)


def as_input(x, name="x"):
    """``x`` as a C-contiguous float32 array with a batch dimension (all of it converted at once).

    uint8 images are scaled by 1/255 to [0, 1]; float64 (and float16) are cast
    to float32. Other dtypes raise TypeError. ``fit``, ``evaluate`` and
    ``predict`` use ``check_input`` and convert batch by batch instead.
    """
    return to_float32(check_input(x, name))


def as_targets(y, n, name="y", x_name="x"):
    """``y`` as int64 labels (N,) or float32 targets (N, C), checked against ``n`` samples."""
    _args.not_masked(y, name)
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
    if y.dtype.kind in "iuf" and y.size and y.dtype.kind != "i" and y.max() >= 2.0**63:
        big = y.max()
        raise ValueError(f"`{name}` labels must be below 2**63, got {int(big) if y.dtype.kind == 'u' else big!r}")
    if y.dtype.kind == "f" and y.size and np.isfinite(y).all() and y.min() < -(2.0**63):
        raise ValueError(f"`{name}` labels must be non-negative, got {y.min()!r}")
    if y.dtype.kind in "iu":
        labels = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        labels = y.astype(np.int64)
    else:
        raise TypeError(f"`{name}` labels must be integers, got dtype {y.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"`{name}` labels must be non-negative, got {int(labels.min())}")
    return labels


def check_targets_fit(y, num_outputs, name="y"):
    """Labels must index the model's outputs; (N, C) targets must have C outputs."""
    if y.ndim == 1:
        if y.size and y.max() >= num_outputs:
            raise ValueError(
                f"`{name}` labels must lie in [0, {num_outputs}) (the model has {num_outputs} outputs), "
                f"got {int(y.max())}"
            )
    elif y.shape[1] != num_outputs:
        raise ValueError(f"`{name}` has {y.shape[1]} columns but the model has {num_outputs} outputs")


def validation_pair(validation_data):
    """``validation_data`` checked and coerced: ``(x_val, y_val)``."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("`validation_data` must be a pair (x_val, y_val)")
    x_val = check_input(validation_data[0], "validation_data[0]")
    y_val = as_targets(validation_data[1], x_val.shape[0], "validation_data[1]", "validation_data[0]")
    return x_val, y_val


def validation_set(x, y, validation_data, validation_split):
    """``(x, y, x_val, y_val)``: the given validation pair, or the last ``validation_split`` of the data.

    ``validation_data`` is an already coerced pair (``validation_pair``) or None.
    """
    if validation_data is not None:
        return (x, y) + tuple(validation_data)
    if validation_split > 0:
        n_val = int(x.shape[0] * validation_split)
        if n_val < 1 or n_val >= x.shape[0]:
            raise ValueError(
                f"`validation_split`={validation_split} of {x.shape[0]} samples leaves no validation "
                "or no training samples"
            )
        return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    return x, y, None, None


def batch_seed(base, epoch, step):
    """The integer seed handed to ``augment`` for one training batch.

    Derived from the run's base seed and the 0-based ``epoch`` and ``step``
    only (through ``numpy.random.SeedSequence``), so a resumed run gives every
    batch the seed it had in an uninterrupted run.
    """
    ss = np.random.SeedSequence([int(base), int(epoch), int(step)])
    return int(ss.generate_state(1, np.uint64)[0])


def apply_augment(augment, xb, seed):
    """``augment(xb, seed)``, checked to keep the batch's length and rank, as float32."""
    out = augment(xb, seed)
    if not isinstance(out, np.ndarray) or out.ndim != xb.ndim or out.shape[0] != xb.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`augment` must return an array of shape ({xb.shape[0]}, ...), got {got}")
    return np.ascontiguousarray(out, dtype=np.float32)


def chunks(n, batch_size):
    """Consecutive slices of ``batch_size`` covering ``range(n)`` (the last may be shorter)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class ArrayBatches:
    """The mini-batches of in-memory ``(x, y)``, epoch by epoch (the protocol is in the module docstring).

    Parameters
    ----------
    x, y : ndarray
        Checked inputs and coerced targets (``check_input``, ``as_targets``);
        ``x`` may be uint8 or a memmap: each batch is converted on its own.
    batch_size : int
        The global batch; the last batch of an epoch may be smaller.
    shuffle : bool
        Draw a new permutation from the run's generator every epoch; else keep the order.
    shard : callable, optional
        ``shard(indices) -> indices``: this rank's part of each global batch
        (a distributed run); default all of it.
    """

    def __init__(self, x, y, batch_size, shuffle=True, shard=None):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shard = shard
        self.num_samples = x.shape[0]
        self.steps_per_epoch = -(-self.num_samples // batch_size)

    def global_count(self, step):
        return min(self.batch_size, self.num_samples - step * self.batch_size)

    def epoch(self, epoch, rng):
        """The batches of one epoch; the order is drawn from ``rng`` now, not when iteration starts."""
        n = self.num_samples
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._batches(order)

    def _batches(self, order):
        for sl in chunks(self.num_samples, self.batch_size):
            idx = order[sl]
            if self.shard is not None:
                idx = self.shard(idx)
            yield to_float32(self.x[idx]), self.y[idx]
