"""The core's element-wise kernels (csrc/elementwise.cpp) against NumPy, bit for bit.

ReLU forward and backward and the residual sum run on the core for float32
arrays; they must give exactly NumPy's bits (NaN, infinities, signed zeros
included) for any thread count, in place or not, and refuse bad arguments
with errors that name them. The layers that use them (ReLU, Residual) must
give the same bits on the C++ and the NumPy backends.
"""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import _core
from striate import layers as L

SPECIALS = np.array([-1.0, -0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.5, -2.5], np.float32)


@pytest.fixture(autouse=True)
def _quiet_numpy():
    """inf * 0 and inf - inf are the point here, not a warning."""
    with np.errstate(invalid="ignore", over="ignore"):
        yield


def _values(rng, n):
    """n float32 values: random signs and sizes, with every special value mixed in."""
    v = rng.standard_normal(n).astype(np.float32)
    v[rng.integers(0, n, n // 8)] = rng.choice(SPECIALS, n // 8)
    return v


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# Sizes around the kernels' 16384-element blocks and their 4-lane vectors.
SIZES = [0, 1, 3, 4, 5, 17, 16383, 16384, 16385, 2 * 16384 + 7, 200_003]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_relu_matches_numpy_bits(rng, n, threads):
    st.set_num_threads(threads)
    x = _values(rng, n)
    out = np.full_like(x, 7.0)
    _core.relu(x, out)
    assert _same_bits(out, np.maximum(x, 0))
    y = x.copy()
    _core.relu(y, y)  # in place
    assert _same_bits(y, np.maximum(x, 0))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_relu_backward_matches_numpy_bits(rng, n, threads):
    st.set_num_threads(threads)
    dy, y = _values(rng, n), _values(rng, n)
    want = dy * (y > 0)
    out = np.empty_like(dy)
    _core.relu_backward(dy, y, out)
    assert _same_bits(out, want)
    _core.relu_backward(dy, y, dy)  # in place
    assert _same_bits(dy, want)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_add_matches_numpy_bits(rng, n, relu, threads):
    st.set_num_threads(threads)
    a, b = _values(rng, n), _values(rng, n)
    want = a + b
    if relu:
        want = np.maximum(want, 0)
    out = np.empty_like(a)
    _core.add(a, b, out, relu)
    assert _same_bits(out, want)
    _core.add(a, b, a, relu)  # into an operand
    assert _same_bits(a, want)


def test_kernels_keep_any_shape(rng):
    x = _values(rng, 2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    out = np.empty_like(x)
    _core.relu(x, out)
    assert _same_bits(out, np.maximum(x, 0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, o: _core.relu(x, o[:-1]), "`out` must have shape"),
        (lambda x, o: _core.relu_backward(x, x[:-1], o), "`y` must have shape"),
        (lambda x, o: _core.add(x, x, o.reshape(2, -1)), "`out` must have shape"),
        (lambda x, o: _core.add(x, x[:-1], o), "`b` must have shape"),
    ],
)
def test_shape_mismatch_is_a_value_error(call, match):
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match=match):
        call(x, np.empty_like(x))


def test_bad_arrays_are_refused_by_name():
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="`x`"):
        _core.relu(x.astype(np.float64), np.empty_like(x))
    with pytest.raises(TypeError, match="`out`"):
        _core.relu(x, np.empty(16, np.float32)[::2])
    with pytest.raises(TypeError, match="`a`"):
        _core.add([1.0], x, x)
    frozen = np.empty_like(x)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="`out` must be writable"):
        _core.relu_backward(x, x, frozen)


def _relu_run(backend, x, dy, inplace):
    st.set_backend(backend)
    layer = L.ReLU()
    layer._inplace = inplace
    try:
        y = layer.forward(x.copy())
        dx = layer.backward(dy.copy())
    finally:
        layer._inplace = False
    return y, dx


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_layer_same_bits_on_both_backends(rng, inplace):
    x = _values(rng, 4 * 8 * 9 * 9).reshape(4, 8, 9, 9)
    dy = _values(rng, x.size).reshape(x.shape)
    y_core, dx_core = _relu_run("cpp", x, dy, inplace)
    y_np, dx_np = _relu_run("numpy", x, dy, inplace)
    assert _same_bits(y_core, y_np) and _same_bits(dx_core, dx_np)


def test_relu_layer_leaves_a_read_only_gradient_alone(rng):
    x = _values(rng, 64)
    dy = _values(rng, 64)
    dy.flags.writeable = False
    layer = L.ReLU()
    layer._inplace = True
    try:
        layer.forward(x.copy())
        dx = layer.backward(dy)
    finally:
        layer._inplace = False
    assert dx is not dy and _same_bits(dx, dy * (x > 0))


def test_relu_layer_float64_stays_on_numpy(rng):
    x = rng.standard_normal((3, 5))
    layer = L.ReLU()
    y = layer(x)
    assert y.dtype == np.float64 and np.array_equal(y, np.maximum(x, 0))
    assert np.array_equal(layer.backward(np.ones_like(x)), (x > 0).astype(np.float64))


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_residual_sum_bits(rng, backend):
    st.set_backend(backend)
    x = _values(rng, 2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    dy = _values(rng, x.size).reshape(x.shape)
    block = L.Residual(L.ReLU())
    y = block(x)
    assert _same_bits(y, np.maximum(x, 0) + x)
    assert _same_bits(block.backward(dy), dy * (x > 0) + dy)


def _softmax_numpy(z):
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(1, 10), (7, 1), (300, 1000), (3, 33)])
def test_softmax_rows_matches_the_formula(shape):
    z = (np.random.default_rng(5).standard_normal(shape) * 20).astype(np.float32)
    got = z.copy()
    _core.softmax_rows(got)
    # float32 rounds z - max (up to ~150 here) to 6e-8 relative, which exp turns into ~1e-5
    np.testing.assert_allclose(got, _softmax_numpy(z), rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_rows_propagates_nan_and_infinity_as_the_formula_does():
    z = np.array([[1.0, np.nan, 2.0], [np.nan, 0.0, 0.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 0.0],
                  [3e38, -3e38, 0.0]], np.float32)
    got = z.copy()
    _core.softmax_rows(got)
    assert np.isnan(got[:3]).all()
    np.testing.assert_array_equal(got[3], [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(got[4], [1.0, 0.0, 0.0])


def test_softmax_rows_checks_its_argument():
    with pytest.raises(TypeError, match="`z` must be a float32 array"):
        _core.softmax_rows(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="`z` must have 2 dimensions"):
        _core.softmax_rows(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="`z` must have at least one column"):
        _core.softmax_rows(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="`z` must be writable"):
        z = np.zeros((2, 3), np.float32)
        z.flags.writeable = False
        _core.softmax_rows(z)
