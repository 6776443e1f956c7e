"""Tests of the C++ batch normalisation kernels (``_core.batch_norm_*``, csrc/batchnorm.cpp)
and of ``layers.BatchNorm2d`` on them.

The oracle is the same layer on float64 input, which runs the NumPy code.
Checked here: training forward, forward with running statistics, backward with
batch and with given statistics, both work splits (whole channels; few
channels cut into pieces), bit-identical results for any thread count and on
every ISA path, and the bindings' argument checks. Not here: torch parity and
the running-statistics rules (test_layers.py), folding into a convolution
(test_fusion.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from isa_paths import SUPPORTED_ISAS

import striate as st
from striate import _core
from striate.layers import BatchNorm2d

# (N, C, H, W): many channels (one item per channel), few channels (pieces),
# one value plane, odd sizes that leave vector tails.
SHAPES = [(8, 32, 9, 7), (16, 3, 32, 32), (2, 1, 5, 5), (64, 20, 1, 1), (3, 17, 13, 11)]


def _pair(rng, c, affine_seed=1):
    """Two BatchNorm2d(c) with the same random weights and running statistics."""
    layers = []
    for _ in range(2):
        bn = BatchNorm2d(c)
        r = np.random.default_rng(affine_seed)
        bn.weight.data[...] = r.uniform(0.5, 1.5, c)
        bn.bias.data[...] = r.normal(size=c)
        bn.running_mean[...] = r.normal(size=c)
        bn.running_var[...] = r.uniform(0.5, 2.0, c)
        layers.append(bn)
    return layers


def _run(bn, x, dy, training):
    bn.train(training)
    y = bn.forward(x)
    dx = bn.backward(dy)
    return y, dx, bn.weight.grad.copy(), bn.bias.grad.copy()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_core_matches_float64_numpy(rng, isa, shape, training):
    x = (rng.normal(size=shape) * 3 + 5).astype(np.float32)  # a large mean: the two-pass variance keeps it exact
    dy = rng.normal(size=shape).astype(np.float32)
    fast, ref = _pair(rng, shape[1])
    y, dx, dw, db = _run(fast, x, dy, training)
    y64, dx64, dw64, db64 = _run(ref, x.astype(np.float64), dy.astype(np.float64), training)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, dw64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, db64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert int(fast.num_batches_tracked) == int(ref.num_batches_tracked) == (1 if training else 0)


def test_frozen_affine_in_training_uses_running_stats_on_the_core(rng):
    x = rng.normal(size=(4, 8, 6, 6)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    fast, ref = _pair(rng, 8)
    outs = []
    for bn, dt in ((fast, np.float32), (ref, np.float64)):
        for p in bn.parameters():
            p.trainable = False
        outs.append((bn.forward(x.astype(dt)), bn.backward(dy.astype(dt))))
        assert bn.weight.grad is None and bn.bias.grad is None
    (y, dx), (y64, dx64) = outs
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx64, rtol=1e-5, atol=1e-6)
    assert int(fast.num_batches_tracked) == 0


def test_core_takes_strided_and_unaligned_input(rng):
    base = rng.normal(size=(4, 6, 10, 10)).astype(np.float32)
    view = base[:, ::2]  # not contiguous
    raw = np.empty(view.size * 4 + 1, np.uint8)[1:].view(np.float32).reshape(view.shape)  # unaligned
    raw[...] = view
    outs = []
    for x in (np.ascontiguousarray(view), view, raw):
        bn = BatchNorm2d(3)
        outs.append(bn.forward(x))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def _bits(isa_name, threads, x, dy, training):
    st.set_isa(isa_name)
    st.set_num_threads(threads)
    bn = BatchNorm2d(x.shape[1])
    bn.weight.data[...] = np.linspace(0.5, 1.5, x.shape[1])
    bn.train(training)
    y = bn.forward(x)
    dx = bn.backward(dy)
    return [y, dx, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]


@pytest.mark.parametrize("shape", [(16, 32, 12, 12), (32, 3, 20, 20)])
@pytest.mark.parametrize("training", [True, False])
def test_bit_identical_for_any_thread_count_and_isa(rng, shape, training):
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    first = _bits(SUPPORTED_ISAS[0], 1, x, dy, training)
    for isa_name in SUPPORTED_ISAS:
        for threads in (1, 2, 3, 7):
            got = _bits(isa_name, threads, x, dy, training)
            for a, b in zip(first, got):
                assert np.array_equal(a, b), (isa_name, threads)


def _args(n=2, c=3, hw=4):
    x = np.zeros((n, c, hw, hw), np.float32)
    v = np.ones(c, np.float32)
    return x, v


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, v: _core.batch_norm_forward_train(x[0], v, v, 1e-5), "`x`"),
        (lambda x, v: _core.batch_norm_forward_train(x, v[:2], v, 1e-5), "`weight`"),
        (lambda x, v: _core.batch_norm_forward_train(x, v, v.reshape(1, 3), 1e-5), "`bias`"),
        (lambda x, v: _core.batch_norm_forward_train(x, v, v, 0.0), "`eps`"),
        (lambda x, v: _core.batch_norm_forward_train(x, v, v, float("nan")), "`eps`"),
        (lambda x, v: _core.batch_norm_forward_train(x[:0], v, v, 1e-5), "`x`"),
        (lambda x, v: _core.batch_norm_forward_apply(x, v, v[:1], v), "`scale`"),
        (lambda x, v: _core.batch_norm_forward_apply(x, v, v, np.ones(4, np.float32)), "`shift`"),
        (lambda x, v: _core.batch_norm_backward(x[:1], x, v, v, v, True, True, True, True), "`dy`"),
        (lambda x, v: _core.batch_norm_backward(x, x, v[:2], v, v, True, True, True, True), "`mean`"),
        (lambda x, v: _core.batch_norm_backward(x, x, v, v, v[:0], False, True, True, True), "`weight`"),
    ],
)
def test_bindings_refuse_bad_arguments_naming_them(call, match):
    x, v = _args()
    with pytest.raises(ValueError, match=match):
        call(x, v)


def test_bindings_refuse_wrong_dtype_naming_the_argument():
    x, v = _args()
    with pytest.raises((TypeError, ValueError), match="`x`"):
        _core.batch_norm_forward_train(x.astype(np.float64), v, v, 1e-5)
    with pytest.raises((TypeError, ValueError), match="`mean`"):
        _core.batch_norm_forward_apply(x, v.astype(np.int32), v, v)


def test_backward_returns_only_what_is_asked(rng):
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    v = np.ones(3, np.float32)
    dx, dw, db = _core.batch_norm_backward(x, x, v * 0, v, v, True, False, True, False)
    assert dx is None and db is None and dw.shape == (3,)
