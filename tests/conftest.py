"""Shared test fixtures: a seeded RNG, tolerances and the thread-count guard."""

from __future__ import annotations

import numpy as np
import pytest

import striate as st


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test starts and ends with the same threads and backend."""
    threads, backend = st.get_num_threads(), st.get_backend()
    yield
    st.set_num_threads(threads)
    st.set_backend(backend)
