"""Shared test fixtures: a seeded RNG, the global-state guard and the ISA paths.

``isa`` runs a test once per instruction-set path this CPU supports (generic,
then avx2, then avx512 as far as the CPU goes), with that path set through
``st.set_isa`` and the previous one restored afterwards (tests that loop over
the paths themselves take ``SUPPORTED_ISAS`` from isa_paths.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from isa_paths import SUPPORTED_ISAS

import striate as st


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test starts and ends with the same threads, ISA path and backend."""
    threads, backend, isa = st.get_num_threads(), st.get_backend(), st.get_isa()
    yield
    st.set_num_threads(threads)
    st.set_backend(backend)
    st.set_isa(isa)


@pytest.fixture
def force():
    """Winograd forced on every shape it supports (``_core.conv2d_set_winograd``), whatever the channels."""
    before = st._core.conv2d_get_winograd()
    st._core.conv2d_set_winograd("force")
    yield
    st._core.conv2d_set_winograd(before)


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """The name of an ISA path this CPU runs, set for the duration of the test."""
    before = st.get_isa()
    st.set_isa(request.param)
    yield request.param
    st.set_isa(before)
