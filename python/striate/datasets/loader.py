"""Batching for training: ``ArrayDataset`` over arrays or memmaps, and ``DataLoader``.

``ArrayDataset(x, y)`` wraps in-memory arrays or ``np.memmap``s without
copying them: uint8 images are scaled by 1/255 and other floats cast to
float32 one batch at a time, so a memmapped data set is read batch by batch
and never converted whole. ``DataLoader`` batches any data set with ``len()``
and ``ds[i]`` (array data sets take a fast path: one fancy-indexed read per
batch). It prepares the next batch in a background thread while the caller
computes on the current one; shuffling and augmentation are seeded from
(seed, epoch, batch index) only, so the batches never depend on the thread
count or on how far the prefetching ran ahead. ``state_dict()`` /
``load_state_dict()`` record the epoch and the position inside it, for a
bit-exact resume.

Not here: worker processes, samplers other than "shuffled or in order",
sharding across MPI ranks, or the training loop itself.
"""

from __future__ import annotations

import numbers
import queue
import threading
import weakref

import numpy as np

from .. import _config

__all__ = ["ArrayDataset", "DataLoader"]

_SEED_BOUND = 2**63
# Stream tags, so the shuffling and augmentation seeds of one (seed, epoch) never coincide.
_TAG_SHUFFLE = 0x5348
_TAG_AUGMENT = 0x4147
_POLL_SECONDS = 0.05


# --- data sets -----------------------------------------------------------------------


def _to_float32(a: np.ndarray, name: str) -> np.ndarray:
    """A batch of samples as a contiguous float32 array: uint8 scaled by 1/255, floats cast."""
    a = np.asarray(a)  # a fancy-indexed memmap is an in-memory memmap subclass: drop it
    if a.dtype == np.uint8:
        out = a.astype(np.float32)
        out /= np.float32(255.0)  # the same rounding as the dataset loaders' full-array scaling
        return out
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    raise TypeError(f"`{name}` must hold uint8 (scaled by 1/255) or floating-point values, got {a.dtype}")


class ArrayDataset:
    """Samples and labels held in arrays or ``np.memmap``s, converted batch by batch.

    Parameters
    ----------
    x : numpy.ndarray or numpy.memmap
        Samples, shape ``(N, ...)`` (images are ``(N, C, H, W)``). uint8 is
        scaled by 1/255 to float32 and float16/32/64 cast to float32, one batch
        at a time; the array itself is never copied or converted whole.
    y : numpy.ndarray or numpy.memmap
        Integer labels of shape ``(N,)``, returned as int64, or float targets of
        shape ``(N, classes)``, returned as float32.

    Raises
    ------
    TypeError
        ``x`` or ``y`` is not an array, or has an unsupported dtype.
    ValueError
        ``x`` has no samples or fewer than 2 dimensions, the lengths differ,
        or labels are negative.

    Examples
    --------
    >>> import numpy as np
    >>> from striate.datasets import ArrayDataset
    >>> ds = ArrayDataset(np.zeros((10, 1, 4, 4), np.uint8), np.arange(10))
    >>> xb, yb = ds.get_batch(np.array([3, 1]))
    >>> xb.shape, xb.dtype, yb.tolist()
    ((2, 1, 4, 4), dtype('float32'), [3, 1])
    """

    def __init__(self, x, y):
        for name, a in (("x", x), ("y", y)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"`{name}` must be a numpy array or memmap, got {type(a).__name__}")
        if x.ndim < 2:
            raise ValueError(f"`x` must have shape (N, ...) with at least 2 dimensions, got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"`x` must hold at least one sample, got shape {x.shape}")
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise TypeError(f"`x` must be uint8 (scaled by 1/255) or floating-point, got {x.dtype}")
        if y.ndim not in (1, 2):
            raise ValueError(f"`y` must be labels of shape (N,) or targets of shape (N, classes), got {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"`x` and `y` must have the same length, got {x.shape[0]} and {y.shape[0]}")
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                raise TypeError(f"`y` labels of shape (N,) must be integers, got {y.dtype}")
            if y.dtype.kind == "i" and int(y.min()) < 0:
                raise ValueError(f"`y` labels must be non-negative, got {int(y.min())}")
        elif y.dtype.kind != "f":
            raise TypeError(f"`y` targets of shape (N, classes) must be floating-point, got {y.dtype}")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self):
        kind = "memmap" if isinstance(self.x, np.memmap) else "array"
        return f"ArrayDataset({kind} x {self.x.shape} {self.x.dtype}, y {self.y.shape} {self.y.dtype})"

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -n <= int(i) < n:
            raise IndexError(f"index {int(i)} is out of range for {n} samples")
        xb, yb = self.get_batch(np.array([int(i) % n], dtype=np.int64))
        y = yb[0]
        return xb[0], (int(y) if yb.ndim == 1 else y)

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The samples at ``indices`` as ``(x float32, y int64 or float32)``, in that order.

        One fancy-indexed read per array; a memmap is read in increasing index
        order (then reordered in memory), which keeps the reads sequential.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"`indices` must be 1-D, got shape {idx.shape}")
        if isinstance(self.x, np.memmap) or isinstance(self.y, np.memmap):
            order = np.argsort(idx, kind="stable")
            sorted_idx = idx[order]
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            xb = np.asarray(self.x[sorted_idx])[inverse]
            yb = np.asarray(self.y[sorted_idx])[inverse]
        else:
            xb, yb = self.x[idx], self.y[idx]
        xb = _to_float32(xb, "x")
        yb = yb.astype(np.int64) if self.y.ndim == 1 else np.ascontiguousarray(yb, dtype=np.float32)
        return xb, yb


# --- argument checks -----------------------------------------------------------------


def _check_bool(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(v).__name__}")
    return bool(v)


def _check_int(v, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(v).__name__}")
    v = int(v)
    if v < lo or (hi is not None and v >= hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise ValueError(f"`{name}` must be {bound}, got {v}")
    return v


def _item_label(y, where: str):
    if isinstance(y, (bool, np.bool_)):
        raise TypeError(f"{where}: the label must be an int or a float array, got bool")
    if isinstance(y, numbers.Integral):
        return int(y)
    a = np.asarray(y)
    if a.ndim == 0 and a.dtype.kind in "iu":
        return int(a)
    if a.ndim == 1 and a.dtype.kind == "f":
        return a
    raise TypeError(f"{where}: the label must be an int or a 1-D float array, got {type(y).__name__}")


def _items_batch(dataset, idx: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``dataset[i]`` for every i in ``idx`` (the path for data sets without ``get_batch``)."""
    xs: list = []
    ys: list = []
    for i in idx.tolist():
        where = f"batch {batch}, dataset[{i}]"
        item = dataset[i]
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"{where} must be an (x, y) pair, got {type(item).__name__}")
        x = np.asarray(item[0])
        if xs and x.shape != xs[0].shape:
            raise ValueError(
                f"{where} has shape {x.shape} but dataset[{int(idx[0])}] in the same batch has {xs[0].shape}"
            )
        xs.append(x)
        ys.append(_item_label(item[1], where))
    xb = _to_float32(np.stack(xs), f"batch {batch} samples")
    kinds = {isinstance(v, int) for v in ys}
    if len(kinds) != 1:
        raise TypeError(f"batch {batch}: labels mix ints and float arrays")
    if kinds == {True}:
        yb = np.array(ys, dtype=np.int64)
    else:
        try:
            yb = np.stack(ys).astype(np.float32)
        except ValueError as exc:
            raise ValueError(f"batch {batch}: float targets of different lengths ({exc})") from None
    return xb, yb


# --- the loader ----------------------------------------------------------------------


class DataLoader:
    """Seeded batches of ``(x_batch, y_batch)``, prepared in a background thread.

    Each ``for`` loop over the loader is one epoch. The batches of epoch ``e``
    depend only on ``seed``, ``e`` and the batch index: the permutation is
    drawn from ``(seed, e)`` and batch ``b`` is augmented with a seed derived
    from ``(seed, e, b)``. An iteration abandoned mid-epoch (``break``) stops
    its thread; the next iteration resumes at the first batch not yet taken.
    One iteration runs at a time: starting another stops the previous one.

    Parameters
    ----------
    dataset : object
        Anything with ``len()`` and ``dataset[i] -> (x, y)``, with ``x`` an array
        (uint8 is scaled by 1/255) and ``y`` an int. A data set with a
        ``get_batch(indices) -> (x_batch, y_batch)`` method, such as
        :class:`ArrayDataset`, is read one batch per call.
    batch_size : int, default 64
        Samples per batch; the last batch may be smaller unless ``drop_last``.
    shuffle : bool, default True
        A new seeded permutation every epoch; False keeps the data set's order.
    seed : int, optional
        Base seed in [0, 2**63) of the shuffling and augmentation. Default: one
        drawn from striate's global generator (``striate.seed``) at construction.
    drop_last : bool, default False
        Drop the last, incomplete batch.
    augment : callable, optional
        ``augment(x_batch, seed) -> x_batch`` (an ``augment.Compose`` or any of
        the random transforms), applied in the background thread.
    prefetch : int, default 2
        Batches prepared ahead (1 or 2); 0 prepares each batch in the caller's
        thread. It never changes the batches.

    Examples
    --------
    >>> import numpy as np
    >>> from striate.datasets import ArrayDataset, DataLoader
    >>> ds = ArrayDataset(np.zeros((10, 1, 4, 4), np.uint8), np.arange(10))
    >>> loader = DataLoader(ds, batch_size=4, seed=0)
    >>> len(loader), [yb.shape[0] for _, yb in loader]
    (3, [4, 4, 2])
    """

    def __init__(self, dataset, batch_size=64, shuffle=True, seed=None, drop_last=False, augment=None,
                 *, prefetch=2):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"`dataset` must support len() and dataset[i], got {type(dataset).__name__}")
        n = len(dataset)
        if n == 0:
            raise ValueError("`dataset` is empty")
        self.dataset = dataset
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.shuffle = _check_bool(shuffle, "shuffle")
        self.drop_last = _check_bool(drop_last, "drop_last")
        if augment is not None and not callable(augment):
            raise TypeError(f"`augment` must be callable (x_batch, seed) -> x_batch, got {type(augment).__name__}")
        self.augment = augment
        self.prefetch = _check_int(prefetch, "prefetch", 0, 3)
        if seed is None:
            seed = int(_config.rng().integers(_SEED_BOUND))
        self.seed = _check_int(seed, "seed", 0, _SEED_BOUND)
        if self.drop_last and n < self.batch_size:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) is larger than the dataset ({n} samples): "
                "with drop_last=True no batch would be left"
            )
        self._num_samples = n
        self._fast = callable(getattr(dataset, "get_batch", None))
        self._epoch = 0
        self._position = 0
        self._sample_shape = None
        self._active = None  # weak reference to the running iterator

    def __len__(self) -> int:
        n, b = self._num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {self._num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
                f"augment={self.augment!r})")

    @property
    def epoch(self) -> int:
        """The 0-based epoch the next batch belongs to."""
        return self._epoch

    # --- the batches, a pure function of (seed, epoch, batch) ---

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in the order they are batched."""
        epoch = _check_int(epoch, "epoch", 0)
        if not self.shuffle:
            return np.arange(self._num_samples, dtype=np.int64)
        ss = np.random.SeedSequence([self.seed, _TAG_SHUFFLE, epoch])
        return np.random.default_rng(ss).permutation(self._num_samples).astype(np.int64, copy=False)

    def batch_seed(self, epoch: int, batch: int) -> int:
        """The integer seed handed to ``augment`` for batch ``batch`` of ``epoch``."""
        ss = np.random.SeedSequence([self.seed, _TAG_AUGMENT, int(epoch), int(batch)])
        return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def _make_batch(self, order: np.ndarray, epoch: int, batch: int):
        idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
        if self._fast:
            xb, yb = self.dataset.get_batch(idx)
            xb = _to_float32(xb, f"batch {batch} samples")
            yb = np.asarray(yb)
        else:
            xb, yb = _items_batch(self.dataset, idx, batch)
        if self.augment is not None:
            out = self.augment(xb, self.batch_seed(epoch, batch))
            if not isinstance(out, np.ndarray) or out.ndim != xb.ndim or out.shape[0] != xb.shape[0]:
                got = getattr(out, "shape", type(out).__name__)
                raise ValueError(f"`augment` must return an array of shape ({xb.shape[0]}, ...), got {got}")
            xb = np.ascontiguousarray(out, dtype=np.float32)
        return xb, yb

    def _check_shape(self, xb: np.ndarray, yb: np.ndarray, epoch: int, batch: int) -> None:
        shape = (xb.shape[1:], yb.shape[1:])
        if self._sample_shape is None:
            self._sample_shape = shape
        elif shape != self._sample_shape:
            raise ValueError(
                f"batch {batch} of epoch {epoch} has samples of shape {xb.shape[1:]} (targets {yb.shape[1:]}) "
                f"but earlier batches had {self._sample_shape[0]} (targets {self._sample_shape[1]})"
            )

    # --- iteration ---

    def __iter__(self):
        previous = self._active() if self._active is not None else None
        if previous is not None:
            previous.close()
        it = _LoaderIterator(self)
        self._active = weakref.ref(it)
        return it

    def state_dict(self) -> dict:
        """The loader's position: ``{"seed", "epoch", "position", "num_samples", "batch_size"}``.

        ``position`` counts the batches of ``epoch`` already handed out (not
        those prepared ahead). A loader given this state by
        :meth:`load_state_dict` continues with exactly the batches an
        uninterrupted one would have produced.
        """
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "num_samples": self._num_samples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (stops a running iteration).

        Raises
        ------
        ValueError
            A key is missing, a value is out of range, or the state belongs to a
            data set of another length or another batch size.
        """
        if not isinstance(state, dict):
            raise TypeError(f"`state` must be a dict, got {type(state).__name__}")
        missing = [k for k in ("seed", "epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"`state` is missing {', '.join(missing)}")
        for key, have in (("num_samples", self._num_samples), ("batch_size", self.batch_size)):
            if key in state and _check_int(state[key], f"state['{key}']", 0) != have:
                raise ValueError(f"`state` was saved with {key}={state[key]}, but this loader has {have}")
        seed = _check_int(state["seed"], "state['seed']", 0, _SEED_BOUND)
        epoch = _check_int(state["epoch"], "state['epoch']", 0)
        position = _check_int(state["position"], "state['position']", 0, len(self))
        previous = self._active() if self._active is not None else None
        if previous is not None:
            previous.close()
        self.seed, self._epoch, self._position = seed, epoch, position


def _produce(loader: DataLoader, epoch: int, start: int, q: queue.Queue, stop: threading.Event) -> None:
    """The background thread: put ("batch", b, xb, yb) for b = start.., then ("end",) or ("error", exc)."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    try:
        order = loader.epoch_order(epoch)
        for b in range(start, len(loader)):
            if stop.is_set():
                return
            xb, yb = loader._make_batch(order, epoch, b)
            if not put(("batch", b, xb, yb)):
                return
        put(("end",))
    except BaseException as exc:  # handed to the consumer, which re-raises it
        put(("error", exc))


class _LoaderIterator:
    """One epoch of a DataLoader: a background producer and a bounded queue (or none)."""

    def __init__(self, loader: DataLoader):
        self._loader = loader
        self._epoch = loader._epoch
        self._next = loader._position
        self._done = self._next >= len(loader)
        self._thread = None
        self._order = None
        if self._done:
            return
        if loader.prefetch == 0:
            self._order = loader.epoch_order(self._epoch)
            return
        self._queue: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self._stop = threading.Event()
        # The thread holds the loader, the queue and the event, never this iterator,
        # so dropping the iterator (an abandoned loop) runs __del__, which stops it.
        self._thread = threading.Thread(
            target=_produce, args=(loader, self._epoch, self._next, self._queue, self._stop),
            name="striate-dataloader", daemon=True,
        )
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        loader = self._loader
        if self._thread is None:
            try:
                xb, yb = loader._make_batch(self._order, self._epoch, self._next)
            except BaseException:
                self._done = True
                raise
            b = self._next
        else:
            item = self._queue.get()
            if item[0] == "error":
                self.close()
                raise item[1]
            if item[0] == "end":  # only reached if len(loader) changed under us
                self.close()
                raise StopIteration
            _, b, xb, yb = item
        try:
            loader._check_shape(xb, yb, self._epoch, b)
        except ValueError:
            self.close()
            raise
        self._next = b + 1
        if self._next >= len(loader):
            loader._epoch, loader._position = self._epoch + 1, 0
            self.close()
        else:
            loader._position = self._next
        return xb, yb

    def close(self) -> None:
        """Stop the background thread and wait for it (it exits within one batch)."""
        self._done = True
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if thread is not threading.current_thread():
            thread.join()

    def __del__(self):
        # No join here: a garbage-collection pass may run in any thread.
        thread = getattr(self, "_thread", None)
        if thread is not None:
            self._stop.set()
