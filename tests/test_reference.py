"""Tests of striate.reference, the NumPy oracle: float64 central-difference
gradient checks of every op (guarantee 1), hand-computed semantics
(output sizes, padding, ceil_mode, count_include_pad, index layout, ties, NaN,
lp scaling, adaptive windows), dtype handling, and a comparison with
torch.nn.functional when PyTorch is importable.

Not here: the C++ kernels (test_functional.py).
"""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest

import striate.reference as R

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3


# --------------------------------------------------------------------------- gradient check


def gradcheck(forward, backward, inputs, rng):
    """Central differences of ``sum(dy * forward(**inputs))`` against ``backward(dy, **inputs)``.

    ``backward`` returns a dict name -> analytic gradient for the inputs it covers.
    """
    y = forward(**inputs)
    dy = rng.standard_normal(y.shape)
    analytic = backward(dy, **inputs)
    assert analytic, "backward returned no gradient"
    for name, grad in analytic.items():
        base = inputs[name]
        assert grad.shape == base.shape and grad.dtype == np.float64, (name, grad.shape, grad.dtype)
        numeric = np.empty_like(base)
        for i in np.ndindex(base.shape):
            orig = base[i]
            base[i] = orig + EPS
            lp = float(np.sum(dy * forward(**inputs)))
            base[i] = orig - EPS
            lm = float(np.sum(dy * forward(**inputs)))
            base[i] = orig
            numeric[i] = (lp - lm) / (2 * EPS)
        bad = np.abs(numeric - grad) > ATOL + RTOL * np.abs(grad)
        if bad.any():
            j = tuple(int(v) for v in np.argwhere(bad)[0])
            raise AssertionError(f"d{name} at {j}: analytic {grad[j]!r}, numeric {numeric[j]!r}")


CONV_CASES = [
    # (N, C, H, W, K, kh, kw, params)
    (2, 3, 6, 5, 4, 3, 3, {}),
    (2, 2, 7, 6, 3, 3, 2, {"stride": (2, 1), "padding": (1, 0)}),
    (1, 2, 9, 7, 2, 2, 3, {"dilation": (2, 1), "padding": 1}),
    (2, 4, 5, 6, 6, 3, 3, {"groups": 2, "stride": 2, "padding": 1}),
    (1, 3, 5, 5, 3, 3, 3, {"groups": 3, "padding": "same"}),  # depthwise
    (1, 2, 5, 6, 2, 4, 2, {"padding": "same"}),  # even kernel: extra pad at bottom/right
    (1, 2, 6, 7, 2, 2, 2, {"padding": "same", "dilation": (1, 3)}),
    (2, 2, 6, 6, 2, 3, 3, {"padding": "valid", "stride": 2}),
    (1, 1, 2, 2, 2, 3, 3, {"padding": 1}),  # kernel fits only thanks to padding
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c[-1]) + f"-k{c[5]}x{c[6]}")
def test_conv2d_gradcheck(case, rng):
    N, C, H, W, K, kh, kw, p = case
    groups = p.get("groups", 1)
    inputs = {
        "x": rng.standard_normal((N, C, H, W)),
        "weight": rng.standard_normal((K, C // groups, kh, kw)),
        "bias": rng.standard_normal(K),
    }

    def fwd(x, weight, bias):
        return R.conv2d(x, weight, bias, **p)

    def bwd(dy, x, weight, bias):
        dx, dw, db = R.conv2d_backward(dy, x, weight, **p)
        return {"x": dx, "weight": dw, "bias": db}

    gradcheck(fwd, bwd, inputs, rng)


def _distinct(rng, shape, spacing=1e-2):
    """Values pairwise at least ``spacing`` apart, so no max-pool tie moves under EPS."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing - n * spacing / 2).reshape(shape).astype(np.float64)


MAX_CASES = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "ceil_mode": True},
    {"kernel_size": 2, "stride": 1, "dilation": (2, 1)},
    {"kernel_size": 3, "stride": 2, "ceil_mode": True},
]


@pytest.mark.parametrize("p", MAX_CASES, ids=str)
def test_max_pool2d_gradcheck(p, rng):
    x = _distinct(rng, (2, 2, 7, 6))

    def fwd(x):
        return R.max_pool2d(x, **p)[0]

    def bwd(dy, x):
        return {"x": R.max_pool2d_backward(dy, R.max_pool2d(x, **p)[1], x.shape)}

    gradcheck(fwd, bwd, {"x": x}, rng)


AVG_CASES = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    {"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 1), "ceil_mode": True},
    {"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 1), "ceil_mode": True, "count_include_pad": False},
]


@pytest.mark.parametrize("p", AVG_CASES, ids=str)
def test_avg_pool2d_gradcheck(p, rng):
    x = rng.standard_normal((2, 2, 7, 6))

    def fwd(x):
        return R.avg_pool2d(x, **p)

    def bwd(dy, x):
        return {"x": R.avg_pool2d_backward(dy, x.shape, **p)}

    gradcheck(fwd, bwd, {"x": x}, rng)


@pytest.mark.parametrize("norm", [1, 2, 3, 1.5])
@pytest.mark.parametrize(
    "p", [{"kernel_size": 2}, {"kernel_size": (3, 2), "stride": (2, 1)}, {"kernel_size": 3, "stride": 2, "ceil_mode": True}], ids=str
)
def test_lp_pool2d_gradcheck(norm, p, rng):
    x = rng.uniform(0.5, 1.5, (2, 2, 7, 6))
    if norm == 2:
        x *= rng.choice([-1.0, 1.0], x.shape)  # even power: signs are fine

    def fwd(x):
        return R.lp_pool2d(x, norm, **p)

    def bwd(dy, x):
        return {"x": R.lp_pool2d_backward(dy, x, R.lp_pool2d(x, norm, **p), norm, **p)}

    gradcheck(fwd, bwd, {"x": x}, rng)


@pytest.mark.parametrize("size", [1, (3, 2), (4, None), (7, 9), (2, 5)], ids=str)
def test_adaptive_avg_pool2d_gradcheck(size, rng):
    x = rng.standard_normal((2, 2, 5, 6))

    def fwd(x):
        return R.adaptive_avg_pool2d(x, size)

    def bwd(dy, x):
        return {"x": R.adaptive_avg_pool2d_backward(dy, x.shape, size)}

    gradcheck(fwd, bwd, {"x": x}, rng)


def test_linear_gradcheck(rng):
    inputs = {"x": rng.standard_normal((3, 5)), "weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(4)}

    def bwd(dy, x, weight, bias):
        dx, dw, db = R.linear_backward(dy, x, weight)
        return {"x": dx, "weight": dw, "bias": db}

    gradcheck(R.linear, bwd, inputs, rng)


def test_gradcheck_catches_a_wrong_gradient(rng):
    """The checker itself must fail on a wrong backward."""
    x = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(AssertionError, match="dx"):
        gradcheck(lambda x: R.avg_pool2d(x, 2), lambda dy, x: {"x": 1.01 * R.avg_pool2d_backward(dy, x.shape, 2)}, {"x": x}, rng)


# --------------------------------------------------------------------------- hand-computed semantics


def test_conv2d_hand_values():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(R.conv2d(x, w)[0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(R.conv2d(x, w, np.array([0.5]))[0, 0], [[8.5, 12.5], [20.5, 24.5]])
    # stride 2 with padding 1: windows start at -1 and 1
    np.testing.assert_array_equal(R.conv2d(x, w, stride=2, padding=1)[0, 0], [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]])
    # dilation 2 on a 3x3 input: the only window holds the four corners
    np.testing.assert_array_equal(R.conv2d(x, w, dilation=2)[0, 0], [[0 + 2 + 6 + 8]])


def test_conv2d_same_even_kernel_pads_bottom_right():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = R.conv2d(x, np.ones((1, 1, 2, 2)), padding="same")[0, 0]
    # total pad 1 per axis: 0 on top/left, 1 on bottom/right
    np.testing.assert_array_equal(y, [[8, 12, 7], [20, 24, 13], [13, 15, 8]])
    # dilation 3 with a 2-tap kernel: total pad 3 -> 1 before, 2 after
    y = R.conv2d(x, np.ones((1, 1, 1, 2)), padding="same", dilation=(1, 3))[0, 0]
    np.testing.assert_array_equal(y, [[2, 0, 1], [5, 3, 4], [8, 6, 7]])  # padded row: p 0 1 2 p p


def test_conv2d_groups_are_independent():
    x = np.zeros((1, 4, 3, 3))
    x[0, 2:] = 1.0  # only group 1 sees input
    w = np.ones((2, 2, 1, 1))
    y = R.conv2d(x, w, groups=2)
    np.testing.assert_array_equal(y[0, 0], 0)
    np.testing.assert_array_equal(y[0, 1], 2)


def test_conv2d_backward_needs_and_empty_batch(rng):
    x, w = rng.standard_normal((0, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    y = R.conv2d(x, w)
    assert y.shape == (0, 3, 3, 3)
    dx, dw, db = R.conv2d_backward(y, x, w)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    assert R.conv2d_backward(y, x, w, needs=("weight",))[::2] == (None, None)
    assert R.conv2d_backward(y, x, w, needs=())[:] == (None, None, None)


def test_max_pool2d_indices_ties_nan_and_padding():
    x = np.array(
        [[[[1, np.nan, 2, np.nan], [3, 3, -np.inf, -np.inf], [-np.inf, -np.inf, 5, 5], [-np.inf, -np.inf, 5, 5]]]]
    )
    y, idx = R.max_pool2d(x, 2)
    # window (0,0): NaN at 1 wins; (0,1): the last of two NaNs (3) wins as in PyTorch's CPU kernel
    # window (1,0): all -inf -> first position 8; (1,1): four tied 5s -> first (10)
    assert idx.tolist() == [[[[1, 3], [8, 10]]]]
    assert np.isnan(y[0, 0, 0]).all() and y[0, 0, 1].tolist() == [-np.inf, 5]
    assert idx.dtype == np.int64
    # padding never wins, even against -inf: the first real position is reported
    y, idx = R.max_pool2d(np.full((1, 1, 2, 2), -np.inf), 2, stride=1, padding=1)
    assert idx.tolist() == [[[[0, 0, 1], [0, 0, 1], [2, 2, 3]]]]
    # flat index h*W + w into each plane, W != H
    x = np.zeros((1, 2, 2, 3))
    x[0, 1, 1, 2] = 1
    assert R.max_pool2d(x, (2, 3))[1].ravel().tolist() == [0, 5]


def test_max_pool2d_backward_accumulates_overlaps():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the max of all four overlapping 2x2 windows
    y, idx = R.max_pool2d(x, 2, stride=1)
    assert (idx == 4).all()
    dx = R.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert dx[0, 0, 1, 1] == 4 and dx.sum() == 4


@pytest.mark.parametrize(
    "H,k,s,p,ceil,expected",
    [(5, 2, 2, 0, False, 2), (5, 2, 2, 0, True, 3), (4, 2, 3, 1, True, 2), (7, 3, 2, 1, True, 4), (6, 3, 2, 1, True, 4),
     (5, 3, 3, 1, True, 2)],  # the last: a window starting in the right padding is dropped,
)
def test_pool_output_size(H, k, s, p, ceil, expected):
    x = np.zeros((1, 1, H, H))
    assert R.max_pool2d(x, k, s, p, ceil_mode=ceil)[0].shape[2:] == (expected, expected)
    assert R.avg_pool2d(x, k, s, p, ceil_mode=ceil).shape[2:] == (expected, expected)


def test_avg_pool2d_divisors():
    x = np.ones((1, 1, 3, 3))
    # padding 1, k 2, s 2: windows at -1 and 1, each covering 1 or 2 real rows
    assert R.avg_pool2d(x, 2, padding=1).tolist() == [[[[0.25, 0.5], [0.5, 1.0]]]]
    assert R.avg_pool2d(x, 2, padding=1, count_include_pad=False).tolist() == [[[[1.0, 1.0], [1.0, 1.0]]]]
    # ceil_mode overhang (past the padded edge) is not counted even with count_include_pad
    y = R.avg_pool2d(x, 2, stride=2, ceil_mode=True)
    assert y.tolist() == [[[[1.0, 1.0], [1.0, 1.0]]]]
    # padding 1 and ceil_mode: last window starts at 3 = H + pad - 1 and reaches into the right pad only
    y = R.avg_pool2d(np.ones((1, 1, 4, 4)), 3, stride=2, padding=1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0].tolist() == pytest.approx([4 / 9, 6 / 9, 2 / 6])


def test_lp_pool2d_values_and_ceil_scaling():
    x = np.array([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    np.testing.assert_allclose(R.lp_pool2d(x, 2, (2, 2))[0, 0], [[np.sqrt(1 + 4 + 16 + 25)]])
    np.testing.assert_allclose(R.lp_pool2d(x, 1, (1, 3)), [[[[6.0], [15.0]]]])
    # ceil_mode: the second window holds only column 2 (count 2 of 4): sum scaled by 4/2, as PyTorch
    y = R.lp_pool2d(x, 2, 2, ceil_mode=True)
    np.testing.assert_allclose(y[0, 0], [[np.sqrt(46), np.sqrt((9 + 36) * 2)]])
    # odd p with a negative window sum is NaN (PyTorch); the gradient where y == 0 is zero
    assert np.isnan(R.lp_pool2d(-x, 3, 2)).all()
    z = np.zeros((1, 1, 2, 2))
    assert not R.lp_pool2d_backward(np.ones((1, 1, 1, 1)), z, R.lp_pool2d(z, 2, 2), 2, 2).any()


def test_adaptive_avg_pool2d_windows():
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    # H=5 -> 3: windows [0, 2), [1, 4), [3, 5)
    np.testing.assert_allclose(R.adaptive_avg_pool2d(x, (3, 1)).ravel(), [0.5, 2.0, 3.5])
    # upsampling: H=2 -> 3: windows [0, 1), [0, 2), [1, 2)
    np.testing.assert_allclose(R.adaptive_avg_pool2d(np.array([[[[0.0], [2.0]]]]), (3, 1)).ravel(), [0, 1, 2])
    assert R.adaptive_avg_pool2d(np.zeros((2, 3, 4, 6)), (None, 2)).shape == (2, 3, 4, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype, rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(dtype)
    w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    y = R.conv2d(x, w, rng.standard_normal(2).astype(dtype))
    outs = [y, *R.conv2d_backward(y, x, w), R.max_pool2d(x, 2)[0], R.avg_pool2d(x, 2), R.lp_pool2d(x, 2, 2),
            R.adaptive_avg_pool2d(x, 3), R.max_pool2d_backward(np.ones((1, 2, 3, 3), dtype), R.max_pool2d(x, 2)[1], x.shape),
            R.avg_pool2d_backward(np.ones((1, 2, 3, 3), dtype), x.shape, 2),
            R.adaptive_avg_pool2d_backward(np.ones((1, 2, 3, 3), dtype), x.shape, 3)]
    assert [o.dtype for o in outs] == [np.dtype(dtype)] * len(outs)


def test_float32_close_to_float64(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    y64 = R.conv2d(x, w, padding=1)
    y32 = R.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5 * 27**0.5)


def test_reference_rejects_bad_input(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    with pytest.raises(TypeError, match="`x`"):
        R.conv2d(x.astype(np.int32), np.ones((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"`dy`.*\(1, 1, 3, 3\).*\(1, 1, 4, 4\)"):
        R.conv2d_backward(np.ones((1, 1, 4, 4)), x, np.ones((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="`padding`"):
        R.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="`needs`"):
        R.conv2d_backward(np.ones((1, 1, 3, 3)), x, np.ones((1, 2, 3, 3)), needs=("w",))
    with pytest.raises(ValueError, match="`indices`"):
        R.max_pool2d_backward(np.ones((1, 2, 2, 2)), np.full((1, 2, 2, 2), 25, np.int64), x.shape)


def test_docstring_examples_run():
    result = doctest.testmod(R, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- against PyTorch


def _torch_cases():
    return [
        ("conv2d", (2, 4, 9, 7), {"weight": (6, 2, 3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}),
        ("conv2d", (1, 3, 6, 5), {"weight": (3, 1, 4, 2), "padding": "same", "groups": 3}),
        ("conv2d", (2, 2, 7, 7), {"weight": (4, 2, 2, 2), "padding": "same", "dilation": 3}),
        ("conv2d", (2, 3, 8, 8), {"weight": (5, 3, 3, 3), "padding": "valid", "stride": 3}),
        ("max_pool2d", (2, 3, 9, 8), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
        ("max_pool2d", (2, 3, 9, 8), {"kernel_size": (2, 3), "stride": 2, "padding": 1, "dilation": (2, 1), "ceil_mode": True}),
        ("avg_pool2d", (2, 3, 9, 8), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
        ("avg_pool2d", (2, 3, 9, 8), {"kernel_size": (3, 2), "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
        ("lp_pool2d", (2, 3, 9, 8), {"norm_type": 2, "kernel_size": 3, "stride": 2, "ceil_mode": True}),
        ("lp_pool2d", (2, 3, 9, 8), {"norm_type": 3, "kernel_size": (2, 3)}),
        ("lp_pool2d", (2, 3, 9, 8), {"norm_type": 1, "kernel_size": 2, "stride": 1}),
        ("adaptive_avg_pool2d", (2, 3, 9, 8), {"output_size": (4, 5)}),
        ("adaptive_avg_pool2d", (2, 3, 5, 4), {"output_size": (7, 3)}),
    ]


@pytest.mark.parametrize("case", _torch_cases(), ids=lambda c: c[0] + str(c[2]))
def test_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    op, xshape, p = case
    p = dict(p)
    x = rng.standard_normal(xshape)
    if op == "lp_pool2d":
        x = np.abs(x) + 0.1
    tx = torch.tensor(x, requires_grad=True)
    if op == "conv2d":
        w = rng.standard_normal(p.pop("weight"))
        b = rng.standard_normal(w.shape[0])
        tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
        with warnings.catch_warnings():  # PyTorch notes that even "same" kernels copy the input
            warnings.simplefilter("ignore", UserWarning)
            ty = TF.conv2d(tx, tw, tb, **p)
        y = R.conv2d(x, w, b, **p)
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        grads = dict(zip(("x", "w", "b"), R.conv2d_backward(dy, x, w, **p)))
        np.testing.assert_allclose(grads["w"], tw.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["b"], tb.grad.numpy(), rtol=1e-10, atol=1e-12)
    elif op == "max_pool2d":
        ty, tidx = TF.max_pool2d(tx, return_indices=True, **p)
        y, idx = R.max_pool2d(x, **p)
        np.testing.assert_array_equal(idx, tidx.numpy())
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        grads = {"x": R.max_pool2d_backward(dy, idx, x.shape)}
    else:
        ty = getattr(TF, op)(tx, **p)
        y = getattr(R, op)(x, **p)
        dy = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dy))
        if op == "lp_pool2d":
            norm = p.pop("norm_type")
            grads = {"x": R.lp_pool2d_backward(dy, x, y, norm, **p)}
        else:
            grads = {"x": getattr(R, op + "_backward")(dy, x.shape, **p)}
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_max_pool2d_nan_and_ties_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([[[[1, np.nan, 2, np.nan], [3, 3, -np.inf, -np.inf], [-np.inf, -np.inf, 5, 5], [0, np.nan, 5, 5]]]])
    for p in [{"kernel_size": 2}, {"kernel_size": 3, "stride": 1, "padding": 1}, {"kernel_size": 2, "padding": 1}]:
        ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **p)
        y, idx = R.max_pool2d(x, **p)
        np.testing.assert_array_equal(idx, tidx.numpy())
        np.testing.assert_array_equal(y, ty.numpy())


@pytest.mark.parametrize("seed", range(6))
def test_max_pool2d_special_values_match_torch(seed):
    """Ties (small integers), NaNs and -infs at random, with padding, dilation and ceil_mode."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (2, 3, 7, 8)).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.3] = -np.inf
    for p in MAX_CASES + [{"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2, "ceil_mode": True}]:
        ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **p)
        y, idx = R.max_pool2d(x, **p)
        np.testing.assert_array_equal(idx, tidx.numpy(), err_msg=str(p))
        np.testing.assert_array_equal(y, ty.numpy(), err_msg=str(p))
