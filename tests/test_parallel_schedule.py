"""The schedule of the kernels' parallel loops (csrc/parallel.hpp).

Every thread starts on its own contiguous range of items; one that finishes
takes the unstarted items of the others, so a worker that starts late or shares
its core holds no one up. Items are independent, so results do not change
(the determinism tests cover that); these tests check who runs what.
"""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import _core


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 5, 64, 1001])
def test_every_item_runs_once(threads, n):
    st.set_num_threads(threads)
    ran, runs = _core._parallel_claims(n, 0)
    assert runs == [1] * n
    assert all(0 <= t < min(threads, n) for t in ran)


@pytest.mark.skipif(not _core._has_openmp, reason="a build without OpenMP runs every loop on one thread")
@pytest.mark.parametrize("threads", [2, 3])
def test_a_stalled_worker_leaves_its_items_to_the_others(threads):
    st.set_num_threads(threads)
    n = 60
    ran, runs = _core._parallel_claims(n, 150)
    assert runs == [1] * n
    # The last range starts at 40 (3 threads) or 30 (2): the thread that ran that
    # item slept 150 ms in it, and the others ran the rest of its range meanwhile
    # (a static split left them all to the sleeper).
    start = (threads - 1) * (n // threads)
    sleeper = ran[start]
    assert all(t != sleeper for t in ran[start + 1:])


def test_a_stalled_worker_does_not_change_results():
    st.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    want = st.functional.conv2d(x, w, None, padding=1)
    _core._parallel_claims(60, 50)  # the schedule of one loop does not leak into the next
    got = st.functional.conv2d(x, w, None, padding=1)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n, stall", [(-1, 0), (1, -1), (2_000_000, 0), (1, 20_000)])
def test_claims_hook_checks_its_arguments(n, stall):
    with pytest.raises(ValueError):
        _core._parallel_claims(n, stall)
