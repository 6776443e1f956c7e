"""Freed activations stay in the heap: a training loop does not page-fault its arrays in again every step.

The core tunes glibc's allocator when it loads (bindings.cpp): a step that
frees and reallocates the same few-MB arrays must reuse the memory instead
of returning it to the kernel and faulting it back in.
"""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

import striate as st
from striate import _core


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_repeated_steps_reuse_freed_memory():
    if not _core.allocator_tuned:
        pytest.skip("not glibc: the allocator was left alone")
    n = 4 << 20  # 16 MB of float32 per array, 48 MB per round

    def round_():
        arrays = [np.ones(n, np.float32) for _ in range(3)]
        total = sum(float(a[::4096].sum()) for a in arrays)
        del arrays
        return total

    round_()
    before = _minor_faults()
    for _ in range(10):
        round_()
    # 10 rounds fault in 480 MB (about 120,000 pages) when the heap is trimmed
    # between them; reused memory faults a handful of pages at most.
    assert _minor_faults() - before < 2000


def test_training_steps_do_not_fault_their_activations_in(rng):
    model = st.Sequential([st.layers.Conv2d(3, 16, 3, padding=1), st.layers.ReLU(),
                           st.layers.Conv2d(16, 16, 3, padding=1), st.layers.ReLU()])
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    for _ in range(2):
        y = model(x)
        model.backward(np.ones_like(y))
    before = _minor_faults()
    for _ in range(5):
        y = model(x)
        model.backward(np.ones_like(y))
    if _core.allocator_tuned:
        # each step allocates about 8 MB of activations and gradients (2,000 pages)
        assert (_minor_faults() - before) / 5 < 500
