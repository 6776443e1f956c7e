"""Tests that a non-finite stop of ``fit`` restores the buffers as well as the parameters.

RELIABILITY item 21: BatchNorm's running statistics and ``num_batches_tracked``
are updated by the forward pass, before the finite checks; a stop must put them
back so that the model is the one from before the failing step and can be
saved. Not here: the parameter and optimizer-state side (test_reliability.py,
item 13).
"""

import numpy as np
import pytest

import striate as st
from striate import layers as L
from striate.model import Sequential
from striate.training import NonFiniteError, fit


def _conv_bn_model():
    st.seed(0)
    return Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.ReLU(), L.Flatten(), L.Linear(2 * 4 * 4, 3)])


def test_nan_stop_restores_batchnorm_buffers_and_model_saves(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    x[11, 0, 2, 2] = np.nan  # in the second batch of 8
    model = _conv_bn_model()
    # The state after the first batch: train a twin on it alone.
    twin = _conv_bn_model()
    fit(twin, x[:8], y[:8], epochs=1, batch_size=8, shuffle=False, verbose=0, seed=0)
    with pytest.raises(NonFiniteError) as info:
        fit(model, x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, seed=0)
    assert info.value.step == 2
    after, expected = model.state_dict(), twin.state_dict()
    assert set(after) == set(expected)
    for k, v in expected.items():
        assert np.array_equal(after[k], v), k
    assert int(after["1.num_batches_tracked"]) == 1
    assert all(np.isfinite(v).all() for v in after.values())
    model.save(tmp_path / "m.safetensors")
    back = st.load(tmp_path / "m.safetensors")
    assert np.array_equal(back.state_dict()["1.running_mean"], after["1.running_mean"])
