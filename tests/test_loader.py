"""Tests for striate.datasets.ArrayDataset and DataLoader: batching, seeding, prefetching, resume, memory."""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import striate as st
from striate import augment
from striate.datasets import ArrayDataset, DataLoader


@pytest.fixture(autouse=True)
def _no_hang():
    """A loader bug must fail the run, not hang it."""
    # sys.__stderr__: under --capture=sys (the sanitizer run) sys.stderr has no file descriptor
    faulthandler.dump_traceback_later(120, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


def loader_threads():
    return [t for t in threading.enumerate() if t.name == "striate-dataloader"]


def wait_no_threads(timeout=5.0):
    end = time.monotonic() + timeout
    while loader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not loader_threads()


def uint8_data(rng, n=103, shape=(1, 6, 5)):
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 10, n)


def epoch(loader):
    return [(xb.copy(), yb.copy()) for xb, yb in loader]


def same_batches(a, b):
    return len(a) == len(b) and all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))


class ListDataset:
    """A plain sequence data set, to exercise the per-item path."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


# --- ArrayDataset ------------------------------------------------------------------------


def test_array_dataset_scales_uint8_per_batch(rng):
    x, y = uint8_data(rng)
    ds = ArrayDataset(x, y)
    idx = np.array([5, 0, 99, 5])
    xb, yb = ds.get_batch(idx)
    expected = x[idx].astype(np.float32)
    expected /= np.float32(255)  # the rounding load_mnist uses, so both paths agree bit for bit
    assert xb.dtype == np.float32 and xb.flags.c_contiguous
    np.testing.assert_array_equal(xb, expected)
    assert yb.dtype == np.int64 and yb.tolist() == y[idx].tolist()
    x0, y0 = ds[-4]
    np.testing.assert_array_equal(x0, xb[2])  # sample 99
    assert y0 == int(y[99]) and isinstance(y0, int) and len(ds) == 103
    with pytest.raises(IndexError, match="index 103 is out of range"):
        ds[103]


def test_array_dataset_casts_float64_and_keeps_float_targets(rng):
    x = rng.standard_normal((10, 3))
    y = rng.random((10, 4))
    xb, yb = ArrayDataset(x, y).get_batch([1, 2])
    assert xb.dtype == np.float32 and yb.dtype == np.float32 and yb.shape == (2, 4)
    np.testing.assert_array_equal(xb, x[[1, 2]].astype(np.float32))
    assert x.dtype == np.float64  # the wrapped array is not converted


def test_array_dataset_over_memmap_reads_in_order(tmp_path, rng):
    x, y = uint8_data(rng, n=50)
    mx = np.memmap(tmp_path / "x.bin", dtype=np.uint8, mode="w+", shape=x.shape)
    mx[:] = x
    mx.flush()
    ro = np.memmap(tmp_path / "x.bin", dtype=np.uint8, mode="r", shape=x.shape)
    ds = ArrayDataset(ro, y)
    idx = np.array([40, 3, 17, 3])
    xb, yb = ds.get_batch(idx)
    assert type(xb) is np.ndarray
    np.testing.assert_array_equal(xb * np.float32(255), x[idx].astype(np.float32))
    assert yb.tolist() == y[idx].tolist()


@pytest.mark.parametrize(
    "x, y, exc, match",
    [
        ([[0.0]], np.zeros(1, np.int64), TypeError, "`x` must be a numpy array"),
        (np.zeros((2, 3)), [0, 1], TypeError, "`y` must be a numpy array"),
        (np.zeros(3), np.zeros(3, np.int64), ValueError, "at least 2 dimensions"),
        (np.zeros((0, 3)), np.zeros(0, np.int64), ValueError, "at least one sample"),
        (np.zeros((2, 3), np.int32), np.zeros(2, np.int64), TypeError, "`x` must be uint8"),
        (np.zeros((2, 3)), np.zeros(3, np.int64), ValueError, "same length, got 2 and 3"),
        (np.zeros((2, 3)), np.zeros(2), TypeError, "`y` labels of shape"),
        (np.zeros((2, 3)), np.array([0, -1]), ValueError, "non-negative, got -1"),
        (np.zeros((2, 3)), np.zeros((2, 2), np.int64), TypeError, "`y` targets"),
        (np.zeros((2, 3)), np.zeros((2, 2, 2)), ValueError, "`y` must be labels"),
    ],
)
def test_array_dataset_bad_input(x, y, exc, match):
    with pytest.raises(exc, match=match):
        ArrayDataset(x, y)


# --- batching and seeding ------------------------------------------------------------------


def test_len_and_batch_sizes(rng):
    ds = ArrayDataset(*uint8_data(rng))
    assert len(DataLoader(ds, batch_size=10)) == 11
    assert [yb.size for _, yb in DataLoader(ds, batch_size=10, seed=0)] == [10] * 10 + [3]
    dl = DataLoader(ds, batch_size=10, drop_last=True, seed=0)
    assert len(dl) == 10 and [yb.size for _, yb in dl] == [10] * 10
    assert len(DataLoader(ds, batch_size=200)) == 1


def test_every_sample_once_per_epoch_and_order_without_shuffle(rng):
    x, y = uint8_data(rng)
    ds = ArrayDataset(x, np.arange(103))
    seen = np.concatenate([yb for _, yb in DataLoader(ds, batch_size=16, seed=5)])
    assert sorted(seen.tolist()) == list(range(103)) and seen.tolist() != list(range(103))
    in_order = np.concatenate([yb for _, yb in DataLoader(ds, batch_size=16, shuffle=False)])
    assert in_order.tolist() == list(range(103))


def test_seeded_reproducible_new_permutation_each_epoch(rng):
    ds = ArrayDataset(*uint8_data(rng))
    a, b = DataLoader(ds, batch_size=8, seed=11), DataLoader(ds, batch_size=8, seed=11)
    e0, e1 = epoch(a), epoch(a)
    assert same_batches(e0, epoch(b)) and same_batches(e1, epoch(b))
    assert not same_batches(e0, e1)
    assert not same_batches(e0, epoch(DataLoader(ds, batch_size=8, seed=12)))
    assert a.epoch == 2


def test_default_seed_follows_striate_seed(rng):
    ds = ArrayDataset(*uint8_data(rng))
    st.seed(3)
    first = epoch(DataLoader(ds, batch_size=8))
    st.seed(3)
    assert same_batches(first, epoch(DataLoader(ds, batch_size=8)))


AUG = augment.Compose([augment.RandomCrop(5, padding=1), augment.RandomHorizontalFlip()])


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_batches_do_not_depend_on_prefetch_or_threads(rng, prefetch):
    ds = ArrayDataset(*uint8_data(rng))
    st.set_num_threads(1)
    reference = epoch(DataLoader(ds, batch_size=9, seed=4, augment=AUG, prefetch=0))
    st.set_num_threads(2)
    dl = DataLoader(ds, batch_size=9, seed=4, augment=AUG, prefetch=prefetch)
    batches = []
    for i, (xb, yb) in enumerate(dl):
        if i % 3 == 0:
            time.sleep(0.01)  # let the producer run ahead at times, not at others
        batches.append((xb.copy(), yb.copy()))
    assert same_batches(reference, batches)


def test_augment_gets_a_seed_per_epoch_and_batch(rng):
    x, y = uint8_data(rng)
    ds = ArrayDataset(x, y)
    plain = DataLoader(ds, batch_size=10, seed=8)
    aug = DataLoader(ds, batch_size=10, seed=8, augment=AUG)
    for e in range(2):
        for b, ((xp, yp), (xa, ya)) in enumerate(zip(plain, aug)):
            np.testing.assert_array_equal(ya, yp)
            np.testing.assert_array_equal(xa, AUG(xp, aug.batch_seed(e, b)))
    assert aug.batch_seed(0, 1) != aug.batch_seed(1, 0) != aug.batch_seed(0, 0)


def test_augment_output_is_checked(rng):
    dl = DataLoader(ArrayDataset(*uint8_data(rng)), batch_size=10, seed=0, augment=lambda xb, s: xb[:2])
    with pytest.raises(ValueError, match=r"`augment` must return an array of shape \(10, \.\.\.\)"):
        next(iter(dl))


def test_generic_dataset_matches_array_path(rng):
    x, y = uint8_data(rng)
    fast = epoch(DataLoader(ArrayDataset(x, y), batch_size=16, seed=2))
    slow = epoch(DataLoader(ListDataset(x, y), batch_size=16, seed=2))
    assert same_batches(fast, slow)
    assert all(yb.dtype == np.int64 for _, yb in slow)


# --- resume, abandonment and errors -------------------------------------------------------


def test_state_dict_resume_is_bit_exact(rng):
    ds = ArrayDataset(*uint8_data(rng))
    full = DataLoader(ds, batch_size=10, seed=21, augment=AUG)
    uninterrupted = epoch(full) + epoch(full)

    first = DataLoader(ds, batch_size=10, seed=21, augment=AUG)
    got = epoch(first)
    for xb, yb in first:  # stop after 4 batches of the second epoch
        got.append((xb.copy(), yb.copy()))
        if len(got) == 15:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["position"] == 4

    resumed = DataLoader(ds, batch_size=10, seed=999, augment=AUG)  # the state carries the seed
    resumed.load_state_dict(state)
    got += epoch(resumed)
    assert same_batches(got, uninterrupted)
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["position"] == 0


def test_last_batch_taken_ends_the_epoch(rng):
    dl = DataLoader(ArrayDataset(*uint8_data(rng)), batch_size=50, seed=0)
    it = iter(dl)
    for _ in range(len(dl)):
        next(it)
    assert dl.state_dict()["epoch"] == 1 and dl.state_dict()["position"] == 0  # no StopIteration needed


def test_abandoned_iteration_stops_its_thread_and_resumes(rng):
    ds = ArrayDataset(*uint8_data(rng))
    dl = DataLoader(ds, batch_size=5, seed=1)
    reference = epoch(DataLoader(ds, batch_size=5, seed=1))
    taken = []
    for xb, yb in dl:
        taken.append((xb.copy(), yb.copy()))
        if len(taken) == 3:
            break
    assert wait_no_threads()
    taken += epoch(dl)  # the next loop continues with batch 3
    assert same_batches(taken, reference)
    assert wait_no_threads()


def test_new_iteration_closes_the_previous_one(rng):
    dl = DataLoader(ArrayDataset(*uint8_data(rng)), batch_size=5, seed=1)
    it1 = iter(dl)
    next(it1)
    it2 = iter(dl)
    with pytest.raises(StopIteration):
        next(it1)
    assert len(list(it2)) == len(dl) - 1
    assert wait_no_threads()


class Failing(ListDataset):
    def __init__(self, x, y, bad):
        super().__init__(x, y)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            raise RuntimeError(f"sample {i} is broken")
        return super().__getitem__(i)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_worker_exception_is_raised_in_the_consumer(rng, prefetch):
    x, y = uint8_data(rng, n=40)
    dl = DataLoader(Failing(x, y, bad=27), batch_size=10, shuffle=False, prefetch=prefetch)
    got = []
    with pytest.raises(RuntimeError, match="sample 27 is broken"):
        for _, yb in dl:
            got.append(yb)
    assert len(got) == 2  # batches 0 and 1 arrived; batch 2 holds sample 27
    assert wait_no_threads()
    assert dl.state_dict()["position"] == 2


class AlwaysFailing(ListDataset):
    def __getitem__(self, i):
        return 1 / 0


def test_every_item_failing_does_not_hang(rng):
    with pytest.raises(ZeroDivisionError):
        list(DataLoader(AlwaysFailing(*uint8_data(rng, n=10)), batch_size=3))
    assert wait_no_threads()


def test_shape_change_mid_epoch_names_the_batch(rng):
    items = [np.zeros((1, 4, 4), np.float32)] * 6 + [np.zeros((1, 5, 5), np.float32)] * 4
    dl = DataLoader(ListDataset(items, np.zeros(10)), batch_size=3, shuffle=False)
    with pytest.raises(ValueError, match=r"batch 2 of epoch 0 has samples of shape \(1, 5, 5\).*\(1, 4, 4\)"):
        list(dl)
    items[5] = np.zeros((1, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"batch 1, dataset\[5\] has shape \(1, 5, 5\)"):
        list(DataLoader(ListDataset(items, np.zeros(10)), batch_size=3, shuffle=False))


def test_bad_items_are_named(rng):
    with pytest.raises(TypeError, match=r"batch 0, dataset\[0\] must be an \(x, y\) pair"):
        list(DataLoader([np.zeros(3)] * 4, batch_size=2, shuffle=False))
    with pytest.raises(TypeError, match=r"batch 0 samples.*int64"):
        list(DataLoader(ListDataset([np.zeros(3, np.int64)] * 4, np.zeros(4)), batch_size=2))


# --- memory ------------------------------------------------------------------------------


def peak_bytes_of_one_epoch(path, n):
    x = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 1, 28, 28))
    dl = DataLoader(ArrayDataset(x, np.zeros(n, np.uint8)), batch_size=256, seed=0)
    tracemalloc.start()
    try:
        count = 0
        for xb, _ in dl:
            count += xb.shape[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    return peak


def test_memmap_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    sizes = {"small": 6_400, "large": 64_000}  # 5 MB and 50 MB of uint8 28x28 images
    peaks = {}
    for name, n in sizes.items():
        path = tmp_path / f"{name}.bin"
        mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 1, 28, 28))
        mm[::97] = 200
        mm.flush()
        del mm
        peaks[name] = peak_bytes_of_one_epoch(path, n)
    batch_bytes = 256 * 784 * 4
    # A few float32 batches in flight (queue, producer, consumer), plus the 8-byte-per-sample
    # permutation; converting the whole 50 MB set would take 200 MB.
    assert peaks["large"] < 8 * batch_bytes + 16 * sizes["large"], peaks
    # Ten times the data: the peak grows by the permutation only, up to how many batches
    # happened to be in flight at once (timing).
    assert peaks["large"] < peaks["small"] + 16 * (sizes["large"] - sizes["small"]) + 4 * batch_bytes, peaks


# --- argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(batch_size=0), ValueError, "`batch_size` must be >= 1, got 0"),
        (dict(batch_size=2.0), TypeError, "`batch_size` must be an int"),
        (dict(batch_size=True), TypeError, "`batch_size` must be an int"),
        (dict(shuffle=1), TypeError, "`shuffle` must be a bool"),
        (dict(drop_last="no"), TypeError, "`drop_last` must be a bool"),
        (dict(seed=-1), ValueError, r"`seed` must be in \[0, 2\*\*63\)|`seed` must be in"),
        (dict(seed="x"), TypeError, "`seed` must be an int"),
        (dict(augment=3), TypeError, "`augment` must be callable"),
        (dict(prefetch=3), ValueError, "`prefetch` must be in"),
        (dict(batch_size=500, drop_last=True), ValueError, "no batch would be left"),
    ],
)
def test_bad_arguments(rng, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DataLoader(ArrayDataset(*uint8_data(rng)), **kwargs)


def test_bad_dataset():
    with pytest.raises(TypeError, match="`dataset` must support len"):
        DataLoader(42)
    with pytest.raises(ValueError, match="`dataset` is empty"):
        DataLoader([])


def test_bad_state(rng):
    dl = DataLoader(ArrayDataset(*uint8_data(rng)), batch_size=10, seed=0)
    good = dl.state_dict()
    with pytest.raises(TypeError, match="`state` must be a dict"):
        dl.load_state_dict([1])
    with pytest.raises(ValueError, match="missing position"):
        dl.load_state_dict({"seed": 0, "epoch": 0})
    with pytest.raises(ValueError, match="batch_size=20, but this loader has 10"):
        dl.load_state_dict(dict(good, batch_size=20))
    with pytest.raises(ValueError, match="num_samples=7, but this loader has 103"):
        dl.load_state_dict(dict(good, num_samples=7))
    with pytest.raises(ValueError, match=r"`state\['position'\]` must be in \[0, 11\), got 11"):
        dl.load_state_dict(dict(good, position=11))
    with pytest.raises(ValueError, match=r"`state\['epoch'\]` must be >= 0"):
        dl.load_state_dict(dict(good, epoch=-1))


def test_an_exception_in_the_loop_body_stops_the_thread(rng):
    dl = DataLoader(ArrayDataset(*uint8_data(rng)), batch_size=5, seed=1)

    def consume():
        for _ in dl:
            raise KeyError("the training step failed")

    with pytest.raises(KeyError):
        consume()
    assert wait_no_threads()
    assert dl.state_dict()["position"] == 1
