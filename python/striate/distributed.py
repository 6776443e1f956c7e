"""Data-parallel training over MPI (mpi4py), the path Horovod takes.

Launch K processes with ``mpiexec -n K`` and call ``fit(..., distributed=True)``
(or ``striate train --distributed``). Rank 0's initial weights are broadcast;
every rank draws the same shuffled global batches, computes gradients on its
own contiguous shard of each batch, and the gradients are combined with one
Allreduce per step, weighted by shard size, so every rank holds the gradient of
the whole global batch and takes the same optimizer step. Only rank 0 prints
and writes files.

mpi4py and an MPI library come with the optional extra ``[mpi]`` (mpi4py and the
``mpich`` wheel), so no system MPI is needed. Deliberately not here: model
parallelism, parameter servers, overlapping communication with backward.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "available",
    "rank",
    "size",
    "comm",
    "shard",
    "broadcast_model",
    "allreduce_gradients",
    "average_buffers",
    "allreduce_sum",
    "broadcast_int",
    "fit_hook",
    "FitHook",
]

_MPI = None


def _mpi():
    """The mpi4py MPI module, imported on first use."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                "distributed training needs mpi4py and an MPI library: pip install 'striate[mpi]'"
            ) from None
        _MPI = MPI
    return _MPI


def available() -> bool:
    """True when mpi4py can be imported."""
    try:
        _mpi()
    except ImportError:
        return False
    return True


def comm():
    """The world communicator (``MPI.COMM_WORLD``)."""
    return _mpi().COMM_WORLD


def rank() -> int:
    """This process's rank; 0 when mpi4py is not installed."""
    return comm().Get_rank() if available() else 0


def size() -> int:
    """The number of processes; 1 when mpi4py is not installed."""
    return comm().Get_size() if available() else 1


def shard(n: int, rank_: int | None = None, size_: int | None = None) -> slice:
    """The contiguous part of a global batch of ``n`` samples this rank computes.

    Samples are split as evenly as possible (sizes differ by at most one), in
    rank order, so every sample is computed exactly once. A rank may get an
    empty shard when ``n`` is smaller than the number of ranks.
    """
    r = rank() if rank_ is None else rank_
    k = size() if size_ is None else size_
    base, extra = divmod(int(n), k)
    start = r * base + min(r, extra)
    stop = start + base + (1 if r < extra else 0)
    return slice(start, stop)


def _state_arrays(model):
    """Every parameter array, then every buffer array (BatchNorm statistics), in layer order."""
    arrays = [p.data for p in model.parameters()]
    for layer in model:
        arrays += list(layer.buffers().values())
    return arrays


def broadcast_model(model, root: int = 0) -> None:
    """Copy every parameter and buffer of ``model`` from ``root`` to all ranks, in place."""
    c = comm()
    for arr in _state_arrays(model):
        c.Bcast(arr, root=root)


def allreduce_gradients(params, local_count: int, global_count: int) -> None:
    """Replace each ``param.grad`` by the gradient of the whole global batch.

    Each rank's gradient is the mean over its ``local_count`` samples; it is
    weighted by ``local_count``, summed over ranks with one Allreduce, and
    divided by ``global_count``. A rank with an empty shard contributes zeros.
    ``params`` is a model or a list of Parameters (the trainable ones are used).
    """
    if hasattr(params, "parameters"):
        params = params.parameters()
    params = [p for p in params if p.trainable]
    if not params:
        return
    total = sum(p.data.size for p in params)
    flat = np.zeros(total, dtype=np.float32)
    pos = 0
    for p in params:
        n = p.data.size
        if p.grad is not None and local_count > 0:
            flat[pos:pos + n] = p.grad.reshape(-1)
        pos += n
    flat *= np.float32(local_count)
    out = np.empty_like(flat)
    comm().Allreduce(flat, out, op=_mpi().SUM)
    out /= np.float32(global_count)
    pos = 0
    for p in params:
        n = p.data.size
        g = out[pos:pos + n].reshape(p.data.shape)
        if p.grad is None or p.grad.shape != p.data.shape:
            p.grad = g.astype(p.data.dtype)
        else:
            p.grad[...] = g
        pos += n


def average_buffers(model) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    k = size()
    c = comm()
    for arr in _state_arrays(model)[len(list(model.parameters())):]:
        if arr.dtype.kind != "f":
            continue
        out = np.empty_like(arr)
        c.Allreduce(np.ascontiguousarray(arr), out, op=_mpi().SUM)
        arr[...] = out / arr.dtype.type(k)


def allreduce_sum(values):
    """Sum a float64 vector of ``values`` over ranks (metrics such as loss sums and counts)."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty_like(v)
    comm().Allreduce(v, out, op=_mpi().SUM)
    return out


def broadcast_int(value: int, root: int = 0) -> int:
    """Broadcast one int64 (a seed) from ``root``; every rank returns root's value."""
    buf = np.array([value], dtype=np.int64)
    comm().Bcast(buf, root=root)
    return int(buf[0])


class FitHook:
    """What ``fit(..., distributed=True)`` needs from MPI, for one run.

    Creating it broadcasts rank 0's weights. ``shard`` picks this rank's part
    of a global batch, ``average_gradients`` combines the ranks' gradients,
    ``reduce`` sums epoch metrics, ``seed`` agrees on one run seed, and
    ``is_root`` says whether this rank prints and writes files.
    """

    def __init__(self, model):
        self.rank, self.size = rank(), size()
        self.is_root = self.rank == 0
        broadcast_model(model)

    def seed(self, local_seed):
        """Rank 0's seed, so every rank shuffles the same way."""
        return broadcast_int(local_seed)

    def shard(self, idx):
        return idx[shard(len(idx), self.rank, self.size)]

    def average_gradients(self, params, local_count, global_count):
        allreduce_gradients(params, local_count, global_count)

    def reduce(self, *values):
        """Sum each value over the ranks."""
        return tuple(float(v) for v in allreduce_sum(np.array(values, dtype=np.float64)))

    def end_epoch(self, model):
        """Keep BatchNorm statistics identical on every rank."""
        average_buffers(model)


def fit_hook(model):
    """The data-parallel hook ``striate.training.fit`` uses when ``distributed=True``."""
    _mpi()
    return FitHook(model)
