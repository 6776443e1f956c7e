"""Tests of the Winograd forward's prepared-weight cache (csrc/conv_winograd.cpp).

Calls with few tiles (a batch of one, small planes) keep their transformed,
packed weights, found again by the weights' contents. Checked: a hit gives
the bits of a call that transforms afresh (the same image inside a batch too
large for the cache); weights changed in place, or other weights of the same
shape, are never served stale; each ISA path keeps its own packing; large
calls leave the cache alone; concurrent callers with different weights each
get their own answer. Not here: the Winograd arithmetic itself
(test_winograd.py).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from isa_paths import SUPPORTED_ISAS

import striate as st
from striate import _core

ARGS = {3: (1, 1, 1, 1, 1, 1, 1, 1, 1), 5: (1, 1, 2, 2, 2, 2, 1, 1, 1)}


def _layer(rng, r=3, c=32, k=64, hw=16):
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((k, c, r, r)) * 0.1).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    return x, w, b


def _fresh(x, w, b, r):
    """``x``'s output computed without the cache: as row 0 of a batch with more tiles than the cache takes."""
    big = np.concatenate([x, np.zeros((40,) + x.shape[1:], np.float32)])
    before = _core.conv2d_winograd_cache()
    y = _core.conv2d_forward(big, w, b, *ARGS[r])[:1]
    after = _core.conv2d_winograd_cache()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"]), "the large batch used the cache"
    return y


@pytest.fixture(autouse=True)
def _empty_cache():
    _core.conv2d_winograd_cache(clear=True)
    yield
    _core.conv2d_winograd_cache(clear=True)


@pytest.mark.parametrize("r", [3, 5])
def test_a_hit_gives_the_bits_of_a_fresh_transform(rng, isa, r):
    if isa == "generic":
        pytest.skip("Winograd runs on the vector paths only")
    x, w, b = _layer(rng, r, hw=14)
    assert _core.conv2d_algorithms(x, w, *ARGS[r])["forward"] == "winograd"
    first = _core.conv2d_forward(x, w, b, *ARGS[r])
    second = _core.conv2d_forward(x, w, b, *ARGS[r])
    stats = _core.conv2d_winograd_cache()
    assert (stats["misses"], stats["hits"], stats["entries"]) == (1, 1, 1)
    assert stats["bytes"] > w.nbytes
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, _fresh(x, w, b, r))


def test_weights_changed_in_place_are_transformed_again(rng):
    x, w, b = _layer(rng)
    before = _core.conv2d_forward(x, w, b, *ARGS[3])
    w[5, 7, 1, 2] += 1.0  # the same array, one weight changed
    after = _core.conv2d_forward(x, w, b, *ARGS[3])
    assert not np.array_equal(before[0, 5], after[0, 5])
    np.testing.assert_array_equal(after, _fresh(x, w, b, 3))
    stats = _core.conv2d_winograd_cache()
    assert stats["misses"] == 2 and stats["hits"] == 0
    assert stats["entries"] == 1, "the layer's stale entry was kept"


def test_a_sign_of_zero_is_a_change(rng):
    x, w, b = _layer(rng)
    w[0, 0, 0, 0] = 0.0
    _core.conv2d_forward(x, w, b, *ARGS[3])
    w[0, 0, 0, 0] = -0.0  # equal as floats, different bits
    _core.conv2d_forward(x, w, b, *ARGS[3])
    assert _core.conv2d_winograd_cache()["misses"] == 2


def test_layers_of_one_shape_keep_their_own_entries(rng):
    x, w1, b = _layer(rng)
    w2 = w1.copy()
    w2[-1, -1, -1, -1] -= 0.5  # differs in its last weight only
    ys = [_core.conv2d_forward(x, w, b, *ARGS[3]) for w in (w1, w2, w1, w2)]
    stats = _core.conv2d_winograd_cache()
    assert (stats["misses"], stats["hits"], stats["entries"]) == (2, 2, 2)
    np.testing.assert_array_equal(ys[2], _fresh(x, w1, b, 3))
    np.testing.assert_array_equal(ys[3], _fresh(x, w2, b, 3))
    assert not np.array_equal(ys[0], ys[1])


def test_each_isa_path_keeps_its_own_packing(rng):
    if "avx512" not in SUPPORTED_ISAS:
        pytest.skip("needs a CPU with both vector paths")
    x, w, b = _layer(rng)
    out = {}
    for name in ("avx2", "avx512", "avx2", "avx512"):
        st.set_isa(name)
        out.setdefault(name, []).append(_core.conv2d_forward(x, w, b, *ARGS[3]))
    stats = _core.conv2d_winograd_cache()
    assert (stats["misses"], stats["hits"], stats["entries"]) == (2, 2, 2)
    for name in ("avx2", "avx512"):
        st.set_isa(name)
        np.testing.assert_array_equal(out[name][1], _fresh(x, w, b, 3))
    np.testing.assert_array_equal(out["avx2"][1], out["avx512"][1])  # Winograd's bits are the same on both


def test_large_calls_leave_the_cache_alone(rng):
    x, w, b = _layer(rng)
    big = np.repeat(x, 32, axis=0)  # 32 x 64 tiles: above what the cache takes
    _core.conv2d_forward(big, w, b, *ARGS[3])
    assert _core.conv2d_winograd_cache() == {"hits": 0, "misses": 0, "entries": 0, "bytes": 0}


def test_concurrent_callers_get_their_own_weights(rng):
    x, _, b = _layer(rng)
    weights = [(rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32) for _ in range(4)]
    expected = [_fresh(x, w, b, 3) for w in weights]
    _core.conv2d_winograd_cache(clear=True)
    failures = []

    def run(i):
        for j in range(30):
            k = (i + j) % len(weights)
            if not np.array_equal(_core.conv2d_forward(x, weights[k], b, *ARGS[3]), expected[k]):
                failures.append((i, j))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert _core.conv2d_winograd_cache()["entries"] <= len(weights)
