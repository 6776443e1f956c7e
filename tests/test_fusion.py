"""Buffer reuse in the layer chain (in-place ReLU after a conv or Linear) and the planned inference path.

Checks that the in-place walk gives the same bits as the allocating one,
never writes to an array the caller holds (input, dloss, earlier outputs),
and leaves training unchanged; and that ``Sequential.fuse()``'s planned
forward matches the evaluation-mode model and is invalidated on weight
changes. Not here: the kernels themselves (test_core_conv.py) or BatchNorm
folding alone (test_residual_features.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import striate as st
from striate import layers as L
from striate import zoo
from striate.layers.activation import ReLU

BACKENDS = ["numpy"] + (["cpp"] if hasattr(st._core, "conv2d_forward") else [])


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request):
    st.set_backend(request.param)
    yield request.param
    st.set_backend("cpp" if "cpp" in BACKENDS else "numpy")


@pytest.fixture
def no_inplace(monkeypatch):
    """Turn the in-place walk off (the allocating path every layer had before)."""
    def off():
        monkeypatch.setattr(ReLU, "_can_inplace", False)
    return off


def make(seed=0):
    st.seed(seed)
    return st.Sequential([
        L.Conv2d(2, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
        L.Residual(st.Sequential([L.Conv2d(4, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU()])),
        L.ReLU(),
        L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.Identity(), L.ReLU(),
        L.Flatten(), L.Linear(64, 16), L.ReLU(), L.Dropout(0.25), L.Linear(16, 5), L.ReLU(),
    ])


def run_step(model, x, d):
    for layer in st.layers.chain.leaves(model):
        if isinstance(layer, L.Dropout):
            layer.set_rng(np.random.default_rng(7))
    y = model.forward(x)
    dx = model.backward(d)
    grads = [p.grad.copy() for p in model.parameters()]
    return y, dx, grads


def data(seed=1, n=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 8, 8), dtype=np.float32), rng.standard_normal((n, 5), dtype=np.float32)


def test_inplace_walk_is_bit_identical(no_inplace):
    x, d = data()
    y1, dx1, g1 = run_step(make().train(), x, d)
    no_inplace()
    y0, dx0, g0 = run_step(make().train(), x, d)
    assert np.array_equal(y1, y0) and np.array_equal(dx1, dx0)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g0))


def test_caller_arrays_are_never_written():
    m = make().train()
    x, d = data()
    x_copy, d_copy = x.copy(), d.copy()
    y1 = m.forward(x)
    y1_copy = y1.copy()
    m.backward(d)
    y2 = m.forward(data(seed=2)[0])
    m.backward(d)
    assert np.array_equal(x, x_copy) and np.array_equal(d, d_copy)
    assert np.array_equal(y1, y1_copy) and not np.shares_memory(y1, y2)


def test_relu_called_alone_is_not_in_place():
    x = np.array([-1.0, 2.0], np.float32)
    r = ReLU()
    y = r(x)
    assert x[0] == -1.0 and not np.shares_memory(x, y)
    dy = np.ones(2, np.float32)
    r.backward(dy)
    assert np.array_equal(dy, [1.0, 1.0])


def fitted_hash(build):
    """SHA-256 of the state of ``build()`` after two seeded epochs on small random data."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 2, 8, 8), dtype=np.float32)
    y = rng.integers(0, 5, 24)
    m = build()
    m.fit(x, y, epochs=2, batch_size=8, seed=0, verbose=0)
    return hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in m.state_dict().values())).hexdigest()


def test_short_fit_unchanged(no_inplace):
    with_reuse = fitted_hash(make)
    no_inplace()
    assert fitted_hash(make) == with_reuse


def test_inplace_taken_only_after_private_outputs(monkeypatch):
    seen = []
    plain = ReLU.forward

    def spy(self, x):
        seen.append(self._inplace)
        return plain(self, x)

    monkeypatch.setattr(ReLU, "forward", spy)
    m = make().train()
    m.forward(data()[0])
    # conv, (residual body: bn), residual, bn -> identity, linear, linear: every ReLU here follows a private output
    assert seen == [True, True, True, True, True, True]
    seen.clear()
    st.Sequential([L.ReLU(), L.Tanh(), L.ReLU()]).forward(np.ones((1, 3), np.float32))
    assert seen == [False, False]


def pooled(seed=0):
    st.seed(seed)
    return st.Sequential([
        L.Conv2d(2, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(4, 6, 3, padding=1), L.ReLU(), L.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        L.ReLU(), L.MaxPool2d(1),  # a ReLU after a pool: the pool's kept output is not written in place
        L.Flatten(), L.Linear(24, 5),
    ]).train()


def test_max_pool_takes_the_relu_backward_before_it(monkeypatch):
    x, d = data()
    calls = []
    plain = ReLU.backward
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: calls.append(self) or plain(self, dy))
    m = pooled()
    y1, dx1, g1 = run_step(m, x, d)
    assert calls == []  # all three ReLUs come right before a MaxPool2d
    monkeypatch.setattr(L.MaxPool2d, "_absorbs_relu", False)
    y0, dx0, g0 = run_step(pooled(), x, d)
    assert len(calls) == 3
    assert np.array_equal(y1, y0) and np.array_equal(dx1, dx0)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g0))


def test_pool_output_is_kept_intact_for_the_mask():
    m = pooled()
    x, d = data()
    m.forward(x)
    kept = m[5]._y.copy()
    assert not np.shares_memory(m[6]._y, m[5]._y)  # the ReLU after the pool wrote a new array
    m.backward(d)
    assert np.array_equal(m[5]._y, kept)


def test_relu_then_pool_fit_unchanged(monkeypatch):
    absorbed = fitted_hash(pooled)
    monkeypatch.setattr(L.MaxPool2d, "_absorbs_relu", False)
    assert fitted_hash(pooled) == absorbed


def test_dead_relu_positions_get_zero_gradient_through_the_pool():
    # a window whose maximum is a clamped negative sends no gradient; a live one sends it to its argmax
    m = st.Sequential([L.ReLU(), L.MaxPool2d(2)]).train()
    x = np.array([[[[-1.0, -2.0, 3.0, 1.0], [-3.0, -4.0, 0.5, 2.0]]]], np.float32)
    m.forward(x)
    dx = m.backward(np.array([[[[-5.0, 5.0]]]], np.float32))
    assert dx.tolist() == [[[[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]]
    assert not np.signbit(dx).any()


# --- the planned inference path --------------------------------------------------------------


def bn_model(seed=0):
    st.seed(seed)
    m = st.Sequential([
        L.Conv2d(2, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2), L.ReLU(),
        L.Residual(st.Sequential([L.Conv2d(4, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU()])),
        L.Conv2d(4, 4, 3, padding=1), L.Tanh(), L.ReLU(),
        L.Flatten(), L.Linear(64, 16), L.ReLU(), L.Dropout(0.25), L.Linear(16, 5),
    ])
    rng = np.random.default_rng(seed)
    for layer in st.layers.chain.leaves(m):
        if isinstance(layer, L.BatchNorm2d):  # non-trivial statistics, so the folding matters
            layer.running_mean[...] = rng.standard_normal(4)
            layer.running_var[...] = rng.uniform(0.5, 2.0, 4)
    return m.eval()


@pytest.mark.parametrize("n", [1, 5])
def test_fused_planned_matches_eval_model(n):
    m = bn_model()
    f = m.fuse()
    x = data(n=n)[0]
    ref = m(x)
    for _ in range(3):  # first call plans, the next ones run the plan
        np.testing.assert_allclose(f(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_planned_is_bit_identical_to_the_chain():
    f = bn_model().fuse()
    x = data(n=4)[0]
    chain = st.layers.chain.forward_chain(f.layers, x)
    planned = [f(x) for _ in range(3)]
    assert all(np.array_equal(p, chain) for p in planned)
    assert not np.shares_memory(planned[0], planned[1])  # each call returns a new array


def test_plan_reads_the_weights_live():
    f = bn_model().fuse()
    x = data()[0]
    before = f(x)
    f(x)  # planned now
    f[0].weight.data *= 2.0  # in place
    f[10].bias.data = f[10].bias.data + 1.0  # replaced
    expect = st.layers.chain.forward_chain(f.layers, x)
    assert not np.array_equal(expect, before)
    assert np.array_equal(f(x), expect)


def test_plan_follows_a_changed_layer_list():
    f = bn_model().fuse()
    x = data()[0]
    f(x), f(x)
    f[13] = L.Linear(16, 3).eval()
    assert f(x).shape == (3, 3)


def test_planned_forward_never_writes_the_input_and_falls_back():
    f = st.Sequential([L.ReLU(), L.Flatten(), L.ReLU()]).fuse()
    x = data()[0]
    keep = x.copy()
    for _ in range(3):
        y = f(x)
    assert np.array_equal(x, keep) and not np.shares_memory(x, y)
    g = bn_model().fuse()
    xt = np.ascontiguousarray(data()[0].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # not C-contiguous
    assert np.array_equal(g(xt), g(np.ascontiguousarray(xt)))
    assert g(xt.astype(np.float64)).dtype == np.float64  # float64 takes the reference path
    with pytest.raises(ValueError):
        g(np.zeros((1, 3, 8, 8), np.float32))  # wrong channels: the checked path raises, as before


def test_predict_unchanged_and_sees_training():
    m = bn_model()
    x = np.random.default_rng(5).standard_normal((10, 2, 8, 8), dtype=np.float32)
    logits = m(x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    first = m.predict(x, batch_size=4)
    np.testing.assert_allclose(first, e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
    m.predict(x, batch_size=4)  # planned now for batch shapes 4 and 2
    m.train()
    m.fit(x, np.arange(10) % 5, epochs=1, batch_size=5, verbose=0, seed=0)
    m.eval()
    logits = m(x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(m.predict(x, batch_size=4), e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
    assert not getattr(m, "_predicting", False)


def test_predict_of_a_planned_batch_runs_straight_on_the_plan(monkeypatch, backend):
    """An eval-mode model's next call for a planned shape takes the plan directly, with the same answer;
    a layer in training mode, a new shape or a batch that must be split go the general way."""
    import striate.model as M

    m = make()
    m.eval()
    x = np.random.default_rng(6).standard_normal((3, 2, 8, 8)).astype(np.float32)
    first = m.predict(x)  # plans, through the general path
    taken = []
    real = M.Sequential._predict_on_plan

    def spy(self, x_, batch_size):
        out = real(self, x_, batch_size)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(M.Sequential, "_predict_on_plan", spy)
    assert np.array_equal(m.predict(x), first)
    assert taken[-1] == (backend == "cpp")
    m.layers[12].train()  # the Dropout
    assert np.array_equal(m.predict(x), first)  # switched to evaluation mode for the call
    assert taken[-1] is False and m.layers[12].training
    m.eval()
    assert np.array_equal(m.predict(x[:2]), first[:2]) and taken[-1] is False  # a shape not planned yet
    monkeypatch.setattr(M, "_PLAN_BYTES", 64)
    assert np.array_equal(m.predict(x), first) and taken[-1] is False  # split into smaller batches


def test_plan_honours_a_dropout_switched_to_training():
    f = bn_model().fuse()
    x = data()[0]
    ref = f(x)
    f(x)
    f[12].training = True  # a layer's own mode, changed after planning
    f[12].set_rng(np.random.default_rng(0))
    assert not np.array_equal(f(x), ref)
    f[12].training = False
    assert np.array_equal(f(x), ref)


def resnet_like(seed=0):
    """BatchNorm, a nested Sequential and both kinds of Residual, in evaluation mode with real statistics."""
    st.seed(seed)
    m = st.Sequential([
        L.Conv2d(2, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(),
        L.Residual(st.Sequential([L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(),
                                  L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4)])),
        L.ReLU(),
        L.Residual(st.Sequential([L.Conv2d(4, 6, 3, 2, 1, bias=False), L.BatchNorm2d(6)]),
                   st.Sequential([L.Conv2d(4, 6, 1, 2, bias=False), L.BatchNorm2d(6)])),
        L.ReLU(),
        st.Sequential([L.Conv2d(6, 6, 1), L.BatchNorm2d(6)]),
        L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(6, 5),
    ])
    rng = np.random.default_rng(seed)
    for layer in st.layers.chain.leaves(m):
        if isinstance(layer, L.BatchNorm2d):
            c = layer.num_features
            layer.running_mean[...] = rng.standard_normal(c)
            layer.running_var[...] = rng.uniform(0.5, 2.0, c)
            layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
            layer.bias.data[...] = rng.standard_normal(c)
    return m.eval()


def test_plan_runs_through_batchnorm_residuals_and_nested_models_bit_for_bit(backend):
    # A BatchNorm right after a conv is folded into it per call, as fuse() folds it: the plan
    # gives the fused model's bits (and the unfused model's to float32 rounding).
    m = resnet_like()
    x = data(n=3)[0]
    unfused = st.layers.chain.forward_chain(m.layers, x)
    chain = st.layers.chain.forward_chain(m.fuse().layers, x) if backend == "cpp" else unfused  # numpy: no plan
    np.testing.assert_allclose(chain, unfused, rtol=1e-5, atol=1e-5 * np.abs(unfused).max())
    m._predicting = True
    try:
        m(x), m(x)  # plans the model, then (on its first planned run) each nested Sequential
        bns = [la for la in st.layers.chain.leaves(m) if isinstance(la, L.BatchNorm2d)]
        for bn in bns:
            bn._cache = None
        planned = [m(x) for _ in range(2)]
        if backend == "cpp":  # planned: no layer forward ran, nothing was saved
            assert all(bn._cache is None for bn in bns)
    finally:
        m._predicting = False
    assert all(np.array_equal(p, chain) for p in planned)
    assert not np.shares_memory(planned[0], planned[1])


def test_plan_reads_batchnorm_statistics_live_and_follows_a_switch_to_training():
    m = resnet_like()
    x = data(n=4)[0]
    m.predict(x)
    bn = m[1]  # folded into m[0] on every call
    bn.running_mean[...] += 0.5
    logits = st.layers.chain.forward_chain(m.layers, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(m.predict(x), e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
    m._predicting = True
    try:
        bn.training = True  # its own mode, changed after planning: batch statistics, tracked
        tracked = int(bn.num_batches_tracked)
        m(x)
        assert int(bn.num_batches_tracked) == tracked + 1
    finally:
        m._predicting = False


def test_predict_of_resnet20_matches_its_evaluation_forward(backend):
    m = st.zoo.resnet20(num_classes=10, in_channels=3).eval()
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32), dtype=np.float32)
    logits = m(x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    for _ in range(2):
        np.testing.assert_allclose(m.predict(x), e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
    if backend == "cpp":  # the plan folds as fuse() does
        assert np.array_equal(m.predict(x), m.fuse().predict(x))


def test_the_first_planned_answer_is_the_plans(backend):
    # The checked planning run computes BatchNorm unfolded; the answer returned
    # is still the plan's, so a new input shape never changes the bits.
    m = resnet_like()
    x = data(n=5)[0]
    first = [m.predict(x[:k]) for k in (5, 3, 5, 3)]
    assert np.array_equal(first[0], first[2]) and np.array_equal(first[1], first[3])


@pytest.mark.parametrize("n", [1, 7, 12])
def test_large_batches_run_as_smaller_ones_with_the_same_bits(monkeypatch, backend, n):
    import striate.model as M

    m = resnet_like()
    x = data(n=n)[0]
    whole = m.predict(x)
    # a budget below one batch's largest activation: the batch runs in 2 or 3 parts
    plan_bytes = max(1, x[:1].size * 4 * 3 * max(1, n // 3))
    monkeypatch.setattr(M, "_PLAN_BYTES", plan_bytes)
    parts = [m.predict(x) for _ in range(2)]
    assert all(np.array_equal(p, whole) for p in parts)
    if backend == "cpp" and n > 1:  # plans of the smaller shapes were made
        shapes = {k[0][0] for k in M._PLANS[m]}
        assert any(s < n for s in shapes)


def test_a_chain_with_residual_blocks_runs_in_smaller_batches(monkeypatch, backend):
    """A residual block keeps its input beside its body's activations: its chain counts them twice."""
    import striate.model as M

    if backend != "cpp":
        pytest.skip("the NumPy backend runs the layers themselves")
    plain = st.Sequential([L.Conv2d(2, 4, 3, padding=1), L.ReLU(), L.Conv2d(4, 4, 3, padding=1)])
    res = st.Sequential([L.Conv2d(2, 4, 3, padding=1), L.ReLU(),
                         L.Residual(st.Sequential([L.Conv2d(4, 4, 3, padding=1)]))])
    x = np.random.default_rng(2).random((8, 2, 8, 8), dtype=np.float32)
    row = 4 * 8 * 8 * 4  # the largest activation of one row, in bytes
    wholes = [m.predict(x) for m in (plain, res)]
    monkeypatch.setattr(M, "_PLAN_BYTES", 6 * row)  # 8 rows of activations pass it: the batch is split
    for m, whole in zip((plain, res), wholes):
        assert np.array_equal(m.predict(x), whole)
    assert {k[0][0] for k in M._PLANS[plain]} == {8, 4}, "8 rows of one activation: two parts"
    assert {k[0][0] for k in M._PLANS[res]} == {8, 3, 2}, "counted twice, 16 rows' worth: three parts"


@pytest.mark.parametrize("model", ["lenet5", "resnet20"])
def test_a_model_cast_after_planning_is_planned_again(model):
    """Parameters cast to float64 (or back) after a plan was made: the stale plan is dropped, not run."""
    m = zoo.lenet5(input_size=28) if model == "lenet5" else zoo.resnet20(in_channels=1)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    before = m.predict(x)
    m.astype(np.float64)
    as64 = m.predict(x)
    np.testing.assert_allclose(as64, before, rtol=1e-4, atol=1e-5)
    m.astype(np.float32)  # (BatchNorm's running statistics come back rounded to float32)
    np.testing.assert_allclose(m.predict(x), before, rtol=1e-6, atol=1e-7)
    f = m.fuse()
    y = f(x)
    f.layers[0].astype(np.float64)  # one layer only, inside a planned model
    np.testing.assert_allclose(f(x), y, rtol=1e-4, atol=1e-5)


def test_layers_after_the_large_activations_take_the_whole_batch(monkeypatch, backend):
    """A split batch joins again after the last large activation: the fully-connected layers see the whole batch."""
    import striate.model as M

    m = zoo.lenet5(input_size=28)
    x = np.random.default_rng(1).random((12, 1, 28, 28), dtype=np.float32)
    whole = m.predict(x)
    # 3200 bytes per row fit: the outputs up to the second conv's ReLU (6400 bytes a row) do not
    monkeypatch.setattr(M, "_PLAN_BYTES", 12 * 3200)
    assert np.array_equal(m.predict(x), whole)
    if backend != "cpp":
        return  # the NumPy backend runs the layers themselves
    keys = list(M._PLANS[m])
    assert any(k[0][0] < 12 and len(k[1]) == 5 for k in keys), "the first five layers ran as smaller batches"
    assert any(k[0] == (12, 16, 10, 10) and len(k[1]) == 7 for k in keys), "the last seven took all 12 rows"


def test_a_plain_chain_plans_into_core_steps_only(backend):
    """Item 5's one core call: LeNet-5's plan has no Python step; a nested or unknown layer becomes one."""
    if backend != "cpp":
        return
    import striate.model as M

    m = zoo.lenet5(input_size=28)
    m.predict(np.zeros((2, 1, 28, 28), np.float32))
    (plan,) = M._PLANS[m].values()
    assert plan.program.kinds() == ["conv", "max_pool", "conv", "max_pool", "flatten", "linear", "linear", "linear"]
    r = zoo.resnet20(in_channels=1)
    r.predict(np.zeros((2, 1, 28, 28), np.float32))
    kinds = list(M._PLANS[r].values())[0].program.kinds()
    assert "call" in kinds and kinds[-1] == "linear"
