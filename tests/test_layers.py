"""striate.layers: gradients (float64 numerical and vs torch), init, modes, validation, config."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import striate as st
from striate import layers as L

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3


def _cpp_kernels_available():
    """True once the C++ conv and pool kernels are built into striate._core."""
    return all(hasattr(st._core, f"{op}_forward") for op in ("conv2d", "max_pool2d", "avg_pool2d", "lp_pool2d"))


BACKENDS = ["numpy"] + (["cpp"] if _cpp_kernels_available() else [])


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request):
    """Every test runs on the NumPy reference and, once built, on the C++ kernels."""
    st.set_backend(request.param)
    return request.param


# ----------------------------------------------------------------------------- cases
# (id, layer factory, input shape, input kind). Kinds keep the numerical gradient
# away from kinks: "spaced" has distinct values far apart (max-pool, ReLU),
# "positive" is bounded away from zero (odd-power Lp pooling).


def _bn_eval():
    bn = L.BatchNorm2d(3)
    r = np.random.default_rng(7)
    bn.running_mean[...] = r.standard_normal(3)
    bn.running_var[...] = r.uniform(0.5, 2.0, 3)
    bn.weight.data[...] = r.uniform(0.5, 1.5, 3)
    bn.bias.data[...] = r.standard_normal(3)
    return bn.eval()


def _bn_train():
    bn = L.BatchNorm2d(3)
    r = np.random.default_rng(8)
    bn.weight.data[...] = r.uniform(0.5, 1.5, 3)
    bn.bias.data[...] = r.standard_normal(3)
    return bn


CASES = [
    ("conv_basic", lambda: L.Conv2d(3, 4, 3), (2, 3, 6, 7), "normal"),
    ("conv_stride_pad", lambda: L.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6), "normal"),
    ("conv_dilation", lambda: L.Conv2d(2, 3, 3, dilation=2, padding=(2, 1)), (1, 2, 7, 8), "normal"),
    ("conv_groups", lambda: L.Conv2d(4, 6, 3, groups=2, bias=False), (2, 4, 5, 5), "normal"),
    ("conv_asym", lambda: L.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(0, 1)), (2, 2, 7, 5), "normal"),
    ("conv_same", lambda: L.Conv2d(2, 2, 4, padding="same"), (1, 2, 5, 6), "normal"),
    ("maxpool", lambda: L.MaxPool2d(2), (2, 3, 6, 6), "spaced"),
    ("maxpool_ceil_pad", lambda: L.MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 2, 6, 7), "spaced"),
    ("maxpool_dilated", lambda: L.MaxPool2d(2, 1, dilation=2), (1, 2, 5, 5), "spaced"),
    ("avgpool", lambda: L.AvgPool2d(2), (2, 3, 6, 6), "normal"),
    ("avgpool_pad_nocount", lambda: L.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 2, 6, 7), "normal"),
    ("lppool2", lambda: L.LPPool2d(2, 2), (2, 2, 6, 6), "positive"),
    ("lppool3_ceil", lambda: L.LPPool2d(3, (3, 2), stride=2, ceil_mode=True), (1, 2, 6, 7), "positive"),
    ("adaptive", lambda: L.AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5), "normal"),
    ("global", lambda: L.GlobalAvgPool2d(), (2, 3, 4, 5), "normal"),
    ("bn_train", _bn_train, (4, 3, 3, 2), "normal"),
    ("bn_eval", _bn_eval, (4, 3, 3, 2), "normal"),
    ("relu", lambda: L.ReLU(), (3, 7), "spaced"),
    ("tanh", lambda: L.Tanh(), (3, 7), "normal"),
    ("sigmoid", lambda: L.Sigmoid(), (3, 7), "normal"),
    ("softmax", lambda: L.Softmax(), (3, 7), "normal"),
    ("softmax_axis1", lambda: L.Softmax(axis=1), (2, 3, 2, 2), "normal"),
    ("flatten", lambda: L.Flatten(), (2, 3, 2, 2), "normal"),
    ("linear", lambda: L.Linear(5, 4), (3, 5), "normal"),
    ("linear_nobias", lambda: L.Linear(5, 4, bias=False), (3, 5), "normal"),
]
IDS = [c[0] for c in CASES]


def _input(shape, kind, rng):
    n = int(np.prod(shape))
    if kind == "spaced":
        vals = (rng.permutation(n) - n // 2) * 0.1 + 0.05
        return vals.reshape(shape).astype(np.float64)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    return rng.standard_normal(shape)


def _subset(n, k, rng):
    return np.arange(n) if n <= k else rng.choice(n, size=k, replace=False)


def gradcheck(layer, x, rng, before_forward=lambda: None, k=40):
    """Compare backward with central differences of sum(layer(x) * dy) in float64."""
    before_forward()
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy.copy())
    grads = {n: p.grad.copy() for n, p in layer.named_parameters()}

    def f():
        before_forward()
        return float(np.sum(layer(x) * dy))

    for idx in _subset(x.size, k, rng):
        i = np.unravel_index(idx, x.shape)
        old = x[i]
        x[i] = old + EPS
        fp = f()
        x[i] = old - EPS
        fm = f()
        x[i] = old
        num = (fp - fm) / (2 * EPS)
        assert abs(dx[i] - num) <= ATOL + RTOL * abs(num), f"dx{i}: analytic {dx[i]} numeric {num}"
    for name, p in layer.named_parameters():
        for idx in _subset(p.data.size, k, rng):
            i = np.unravel_index(idx, p.data.shape)
            old = p.data[i]
            p.data[i] = old + EPS
            fp = f()
            p.data[i] = old - EPS
            fm = f()
            p.data[i] = old
            num = (fp - fm) / (2 * EPS)
            g = grads[name][i]
            assert abs(g - num) <= ATOL + RTOL * abs(num), f"d{name}{i}: analytic {g} numeric {num}"
    return y, dx


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_float64(case, rng):
    _, make, shape, kind = case
    layer = make().astype(np.float64)
    x = _input(shape, kind, rng)
    y, dx = gradcheck(layer, x, rng)
    assert y.dtype == np.float64 and dx.dtype == np.float64 and dx.shape == x.shape
    for p in layer.parameters():
        assert p.grad.dtype == np.float64 and p.grad.shape == p.data.shape


def test_gradcheck_dropout_fixed_mask(rng):
    layer = L.Dropout(0.3).astype(np.float64)
    gradcheck(layer, rng.standard_normal((4, 6)), rng, before_forward=lambda: layer.set_rng(np.random.default_rng(5)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_matches_float64(case, rng):
    _, make, shape, kind = case
    st.seed(3)
    layer = make()
    x = _input(shape, kind, rng)
    y32 = layer(x.astype(np.float32))
    dy = rng.standard_normal(y32.shape)
    dx32 = layer.backward(dy.astype(np.float32))
    g32 = [p.grad for p in layer.parameters()]
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in g32)
    layer.astype(np.float64)
    if isinstance(layer, L.BatchNorm2d) and layer.training:
        layer.running_mean[...] = 0
    y64 = layer(x)
    dx64 = layer.backward(dy)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4)
    for g, p in zip(g32, layer.parameters()):
        np.testing.assert_allclose(g, p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_output_shape_matches_forward(case, rng):
    _, make, shape, kind = case
    layer = make()
    y = layer(_input(shape, kind, rng).astype(np.float32))
    if len(shape) == 4 and not isinstance(layer, L.Softmax):
        assert layer.output_shape(shape[1:]) == y.shape[1:]


def _float32_pass(case, rng):
    """Build the case's layer, run forward and backward in float32: (layer, x, y, dy, dx, grads)."""
    _, make, shape, kind = case
    layer = make()
    x = _input(shape, kind, rng).astype(np.float32)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    return layer, x, y, dy, dx, [p.grad.copy() for p in layer.parameters()]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_edge_cases(case, rng):
    """Zero dy gives zero gradients; backward twice is bitwise equal and overwrites."""
    layer, x, y, dy, dx1, g1 = _float32_pass(case, rng)
    dx2 = layer.backward(dy)
    np.testing.assert_array_equal(dx1, dx2)
    for a, p in zip(g1, layer.parameters()):
        np.testing.assert_array_equal(a, p.grad)  # overwritten, not accumulated
    dx0 = layer.backward(np.zeros_like(dy))
    assert not np.any(dx0)
    for p in layer.parameters():
        assert not np.any(p.grad)


# ----------------------------------------------------------------------------- torch


def _torch_layer(layer, torch):
    nn = torch.nn
    c = layer.config()
    if isinstance(layer, L.Conv2d):
        m = nn.Conv2d(**c)
    elif isinstance(layer, L.MaxPool2d):
        m = nn.MaxPool2d(c["kernel_size"], c["stride"], c["padding"], c.get("dilation", 1), ceil_mode=c["ceil_mode"])
    elif isinstance(layer, L.AvgPool2d):
        m = nn.AvgPool2d(**c)
    elif isinstance(layer, L.LPPool2d):
        m = nn.LPPool2d(**c)
    elif isinstance(layer, L.GlobalAvgPool2d):
        m = nn.AdaptiveAvgPool2d(1)
    elif isinstance(layer, L.AdaptiveAvgPool2d):
        m = nn.AdaptiveAvgPool2d(c["output_size"])
    elif isinstance(layer, L.BatchNorm2d):
        m = nn.BatchNorm2d(**c)
    elif isinstance(layer, L.Softmax):
        m = nn.Softmax(dim=c["axis"])
    elif isinstance(layer, L.Linear):
        m = nn.Linear(**c)
    else:
        m = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten}[type(layer).__name__]()
    m = m.double()
    sd = {k: torch.from_numpy(v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in layer.state_dict().items()}
    m.load_state_dict(sd)
    m.train(layer.training)
    return m


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    _, make, shape, kind = case
    layer = make().astype(np.float64)
    tl = _torch_layer(layer, torch)
    x = _input(shape, kind, rng)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = tl(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    tparams = dict(tl.named_parameters())
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, b in layer.buffers().items():
        np.testing.assert_allclose(b, getattr(tl, name).numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- init


def _uniform_ok(a, bound):
    a = a.ravel()
    assert a.min() >= -bound and a.max() <= bound
    # U(-b, b): mean 0, std b / sqrt(3); 4.5 standard errors of slack.
    se = bound / math.sqrt(3) / math.sqrt(a.size)
    assert abs(a.mean()) < 4.5 * se
    assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)


def test_conv_init_statistics():
    st.seed(0)
    conv = L.Conv2d(16, 64, 3, groups=2)
    fan_in = 8 * 9
    assert conv.weight.data.dtype == np.float32 and conv.weight.shape == (64, 8, 3, 3)
    _uniform_ok(conv.weight.data, 1 / math.sqrt(fan_in))
    assert np.abs(conv.bias.data).max() <= 1 / math.sqrt(fan_in)
    assert conv.bias.data.std() > 0


def test_linear_init_statistics():
    st.seed(0)
    lin = L.Linear(300, 200)
    _uniform_ok(lin.weight.data, 1 / math.sqrt(300))
    _uniform_ok(lin.bias.data, 1 / math.sqrt(300))


def test_init_is_seeded():
    st.seed(42)
    a = L.Conv2d(3, 4, 3).weight.data.copy()
    st.seed(42)
    b = L.Conv2d(3, 4, 3).weight.data
    np.testing.assert_array_equal(a, b)
    c = L.Conv2d(3, 4, 3).weight.data
    assert not np.array_equal(b, c)


def test_batchnorm_init_and_state_names():
    bn = L.BatchNorm2d(5)
    np.testing.assert_array_equal(bn.weight.data, np.ones(5, np.float32))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(5, np.float32))
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    assert [p.name for p in bn.parameters()] == ["weight", "bias"]


# ----------------------------------------------------------------------------- Dropout


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="`p`"):
        L.Dropout(p)


@pytest.mark.parametrize("p", ["0.5", True, None])
def test_dropout_rejects_non_numbers(p):
    with pytest.raises(TypeError, match="`p`"):
        L.Dropout(p)


def test_dropout_train_and_eval():
    d = L.Dropout(0.25)
    d.set_rng(np.random.default_rng(0))
    x = np.ones((200, 100), np.float32)
    y = d(x)
    assert y.dtype == np.float32
    zero = y == 0
    assert abs(zero.mean() - 0.25) < 0.01
    np.testing.assert_allclose(y[~zero], 1 / 0.75, rtol=1e-6)
    dx = d.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(dx == 0, zero)
    d.eval()
    assert not d.training
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(x * 3), x * 3)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 4096, 65536, 65537, 200001])
@pytest.mark.parametrize("p", [1e-6, 0.25, 0.4, 0.5, 0.999])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_mask_core_equals_its_numpy_twin(n, p, dtype):
    # The C++ mask (blocks over threads) and the NumPy one of the NumPy backend
    # are one stream: the same bits, and the values are exactly scale or 0.
    from striate import _core
    from striate.layers.core import _keep_mask_numpy

    key = 0x5DEECE66D1234567
    threshold, scale = min(2**32, int(np.ceil(p * 2**32))), 1.0 / (1.0 - p)
    want = _keep_mask_numpy(key, n, threshold, np.dtype(dtype).type(scale))
    for threads in (1, 2):  # conftest restores the thread count
        st.set_num_threads(threads)
        got = _core.dropout_mask(key, n, threshold, scale, dtype == np.float64)
        assert got.dtype == dtype and got.shape == (n,)
        assert got.tobytes() == want.tobytes()
    assert set(np.unique(want)) <= {0.0, np.dtype(dtype).type(scale)}
    if n >= 65536:
        assert abs((want == 0).mean() - p) < 0.01


def test_dropout_gives_the_same_masks_on_both_backends():
    x = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(np.float32)
    outs = []
    for backend in ("cpp", "numpy"):  # conftest restores the backend
        st.set_backend(backend)
        d = L.Dropout(0.3)
        d.set_rng(np.random.default_rng(11))
        outs.append((d(x), d(x), d.backward(np.ones_like(x))))
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("args, err", [((1, -1, 0, 1.0), ValueError), ((1, 4, 2**32 + 1, 1.0), ValueError),
                                       ((1, 4, 0, float("inf")), ValueError), ((1, 4, 0, 1e300), ValueError),
                                       ((-1, 4, 0, 1.0), TypeError)])
def test_dropout_mask_core_rejects_bad_arguments(args, err):
    from striate import _core

    with pytest.raises(err):
        _core.dropout_mask(*args)


def test_dropout_p0_is_identity_and_rng_reproducible():
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    np.testing.assert_array_equal(L.Dropout(0.0)(x), x)
    a, b = L.Dropout(0.5), L.Dropout(0.5)
    a.set_rng(np.random.default_rng(9))
    b.set_rng(np.random.default_rng(9))
    np.testing.assert_array_equal(a(x), b(x))
    st.seed(4)
    g1 = L.Dropout(0.5)(x)
    st.seed(4)
    g2 = L.Dropout(0.5)(x)
    np.testing.assert_array_equal(g1, g2)
    with pytest.raises(TypeError, match="`gen`"):
        a.set_rng(3)


# ----------------------------------------------------------------------------- BatchNorm


def test_batchnorm_running_stats_by_hand(rng):
    bn = L.BatchNorm2d(2, momentum=0.2)
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32) * 3 + 1
    bn(x)
    n = 3 * 2 * 2
    mean = x.astype(np.float64).mean(axis=(0, 2, 3))
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * n / (n - 1), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y = bn(x)
    expect = (x - bn.running_mean.reshape(1, -1, 1, 1)) / np.sqrt(bn.running_var.reshape(1, -1, 1, 1) + 1e-5)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_batchnorm_running_stats_vs_torch(rng):
    torch = pytest.importorskip("torch")
    bn = L.BatchNorm2d(4)
    tb = torch.nn.BatchNorm2d(4)
    for _ in range(3):
        x = (rng.standard_normal((5, 4, 3, 3)) * 2 + 0.5).astype(np.float32)
        y = bn(x)
        ty = tb(torch.from_numpy(x))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(bn, name), getattr(tb, name).numpy(), rtol=1e-6)
    assert int(bn.num_batches_tracked) == int(tb.num_batches_tracked) == 3
    bn.eval()
    tb.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(bn(x), tb(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_batchnorm_uses_running_stats(rng):
    bn = L.BatchNorm2d(2)
    bn.running_mean[...] = [1.0, -1.0]
    bn.running_var[...] = [4.0, 0.25]
    for p in bn.parameters():
        p.trainable = False
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    y = bn(x)
    assert bn.training
    np.testing.assert_array_equal(bn.running_mean, np.array([1.0, -1.0], np.float32))
    assert int(bn.num_batches_tracked) == 0
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 1) / np.sqrt(4 + 1e-5), rtol=1e-6)
    bn.backward(np.ones_like(y))
    assert bn.weight.grad is None and bn.bias.grad is None


def test_batchnorm_single_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value"):
        L.BatchNorm2d(3)(np.zeros((1, 3, 1, 1), np.float32))
    assert L.BatchNorm2d(3).eval()(np.zeros((1, 3, 1, 1), np.float32)).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("kw", [{"eps": 0.0}, {"momentum": 1.5}, {"momentum": -0.1}, {"num_features": 0}])
def test_batchnorm_rejects_bad_args(kw):
    args = {"num_features": 2, **kw}
    with pytest.raises(ValueError, match=f"`{next(iter(kw))}`"):
        L.BatchNorm2d(**args)


# ----------------------------------------------------------------------------- modes, needs_input_grad


def test_needs_input_grad_false_skips_dx_but_sets_grads(rng):
    for layer, shape in [(L.Conv2d(2, 3, 3), (2, 2, 5, 5)), (L.Linear(4, 3), (2, 4)), (L.BatchNorm2d(2), (2, 2, 3, 3))]:
        y = layer(rng.standard_normal(shape).astype(np.float32))
        layer.needs_input_grad = False
        assert layer.backward(np.ones_like(y)) is None
        assert all(p.grad is not None for p in layer.parameters())
    for layer in (L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Dropout(0.5), L.AvgPool2d(2)):
        y = layer(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
        layer.needs_input_grad = False
        assert layer.backward(np.ones_like(y)) is None


def test_frozen_parameters_get_no_grad(rng):
    conv = L.Conv2d(2, 3, 3)
    conv.weight.trainable = False
    y = conv(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    dx = conv.backward(np.ones_like(y))
    assert dx.shape == (1, 2, 4, 4)
    assert conv.weight.grad is None and conv.bias.grad is not None


def test_train_eval_flags():
    layer = L.ReLU()
    assert layer.training
    assert layer.eval() is layer and not layer.training
    layer.train()
    assert layer.training
    with pytest.raises(TypeError, match="`mode`"):
        layer.train("no")


def test_backward_before_forward_and_bad_dy():
    with pytest.raises(RuntimeError, match="before forward"):
        L.Linear(2, 2).backward(np.zeros((1, 2), np.float32))
    lin = L.Linear(2, 3)
    lin(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="`dy`"):
        lin.backward(np.zeros((4, 2), np.float32))


def test_input_validation():
    with pytest.raises(TypeError, match="float32 or float64"):
        L.ReLU()(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        L.Tanh()([1.0, 2.0])
    with pytest.raises(ValueError, match="4-D"):
        L.Conv2d(1, 1, 1)(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="in_channels=3"):
        L.Conv2d(3, 1, 1)(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        L.Linear(5, 1)(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="num_features=3"):
        L.BatchNorm2d(3)(np.zeros((2, 4, 2, 2), np.float32))


@pytest.mark.parametrize(
    "make, exc, arg",
    [
        (lambda: L.Conv2d(0, 1, 3), ValueError, "in_channels"),
        (lambda: L.Conv2d(1, 1, 0), ValueError, "kernel_size"),
        (lambda: L.Conv2d(1, 1, 3, stride=-1), ValueError, "stride"),
        (lambda: L.Conv2d(1, 1, 3, padding=-1), ValueError, "padding"),
        (lambda: L.Conv2d(1, 1, 3, padding="full"), ValueError, "padding"),
        (lambda: L.Conv2d(1, 1, 3, stride=2, padding="same"), ValueError, "padding"),
        (lambda: L.Conv2d(3, 4, 3, groups=2), ValueError, "groups"),
        (lambda: L.Conv2d(1, 1, 3, dilation=0), ValueError, "dilation"),
        (lambda: L.Conv2d(1.0, 1, 3), TypeError, "in_channels"),
        (lambda: L.Conv2d(True, 1, 3), TypeError, "in_channels"),
        (lambda: L.Conv2d(1, 1, (3, 3, 3)), ValueError, "kernel_size"),
        (lambda: L.Conv2d(1, 1, 3, bias=1), TypeError, "bias"),
        (lambda: L.MaxPool2d(2, padding=2), ValueError, "padding"),
        (lambda: L.AvgPool2d(0), ValueError, "kernel_size"),
        (lambda: L.LPPool2d(0, 2), ValueError, "norm_type"),
        (lambda: L.AdaptiveAvgPool2d(0), ValueError, "output_size"),
        (lambda: L.Linear(0, 1), ValueError, "in_features"),
        (lambda: L.Linear(1, -3), ValueError, "out_features"),
        (lambda: L.Softmax(axis=1.5), TypeError, "axis"),
    ],
)
def test_constructor_validation(make, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"):
        make()


def test_softmax_axis_out_of_range():
    with pytest.raises(ValueError, match="axis"):
        L.Softmax(axis=3)(np.zeros((2, 2), np.float32))


def test_sigmoid_softmax_stable_for_large_inputs():
    x = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    np.testing.assert_allclose(L.Sigmoid()(x), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(L.Softmax()(x), [[0.0, 0.0, 1.0]])


def test_relu_propagates_nan():
    y = L.ReLU()(np.array([np.nan, -1.0, 2.0], np.float32))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2


def test_empty_batch(rng):
    cases = [
        (L.Conv2d(2, 3, 3), (0, 2, 5, 5)),
        (L.Linear(4, 3), (0, 4)),
        (L.MaxPool2d(2), (0, 2, 4, 4)),
        (L.BatchNorm2d(2), (0, 2, 3, 3)),
        (L.Softmax(), (0, 5)),
    ]
    for layer, shape in cases:
        y = layer(np.zeros(shape, np.float32))
        assert y.shape[0] == 0
        dx = layer.backward(np.zeros_like(y))
        assert dx.shape == shape
        for p in layer.parameters():
            assert not np.any(p.grad)
    assert int(cases[3][0].num_batches_tracked) == 0


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_round_trip_and_state_spec(case):
    _, make, _, _ = case
    layer = make()
    cfg = layer.config()
    import json

    assert json.loads(json.dumps(cfg)) == cfg
    again = L.layer_from_config(type(layer).__name__, cfg)
    assert again.config() == cfg
    spec = type(layer).state_spec(cfg)
    assert spec == {k: (v.shape, v.dtype) for k, v in layer.state_dict().items()}


def test_state_spec_allocates_nothing():
    t = time.perf_counter()
    spec = L.Linear.state_spec({"in_features": 2**30, "out_features": 2**30})
    assert time.perf_counter() - t < 0.5
    assert spec["weight"] == ((2**30, 2**30), np.dtype(np.float32))


def test_layer_from_config_errors():
    with pytest.raises(ValueError, match="`type_name`"):
        L.layer_from_config("Conv3d", {})
    with pytest.raises(TypeError, match="unknown keys"):
        L.layer_from_config("ReLU", {"inplace": True})
    with pytest.raises(TypeError, match="`config`"):
        L.layer_from_config("ReLU", [])
    assert "Conv2d" in L.layer_types() and "Layer" not in L.layer_types()


def test_parameter_basics():
    p = st.Parameter(np.zeros((2, 3), np.float32), "w")
    assert p.grad is None and p.trainable and p.name == "w" and p.shape == (2, 3) and p.size == 6
    assert "trainable" not in repr(p)
    with pytest.raises(TypeError, match="`data`"):
        st.Parameter([1.0], "w")
    with pytest.raises(TypeError, match="`trainable`"):
        st.Parameter(np.zeros(1), "w", trainable=1)


def test_astype():
    lin = L.Linear(3, 2).astype(np.float64)
    assert lin.weight.data.dtype == np.float64
    bn = L.BatchNorm2d(2).astype(np.float64)
    assert bn.running_var.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match="`dtype`"):
        lin.astype(np.int32)


def test_repr_shows_non_default_args():
    assert repr(L.Conv2d(3, 8, 3, padding=1)) == "Conv2d(3, 8, 3, padding=1)"
    assert repr(L.Linear(4, 2, bias=False)) == "Linear(4, 2, bias=False)"
    assert repr(L.ReLU()) == "ReLU()"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_non_contiguous_inputs_give_the_same_results(case, rng):
    layer, x, y, dy, dx, grads = _float32_pass(case, rng)
    shape = x.shape
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)
    wide[..., ::2] = x
    for variant in (np.asfortranarray(x), wide[..., ::2]):
        np.testing.assert_array_equal(layer(variant), y)
        np.testing.assert_array_equal(layer.backward(np.asfortranarray(dy)), dx)
        for g, p in zip(grads, layer.parameters()):
            np.testing.assert_array_equal(p.grad, g)


def test_docstring_examples():
    import doctest

    from striate import layers as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
