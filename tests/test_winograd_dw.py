"""Tests of the Winograd F(3x3, 2x2) and F(5x5, 2x2) weight gradients (csrc/conv_dw_winograd.cpp).

``_core.conv2d_set_winograd("force")`` sends the dw of every shape Winograd
supports (3x3 or 5x5, stride 1, dilation 1, ungrouped, any padding) through it,
whatever the channel counts, so the small cases here reach the partial tiles,
the tile blocks, the batch chunks and the channel tails. Checked: the float64
``striate.reference`` within the tolerance of every other conv path,
bit-identical results for any thread count and on both vector paths, the
direct dw ('off') against Winograd ('auto'), which dw algorithm each shape
takes, and where a non-finite input ends up. Not here: the Winograd forward
and dx (test_winograd.py), the other dw paths (test_core_conv.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_core_conv import _supported_isas, assert_close, call_backward, call_forward
from test_winograd import CASES3, CASES5, _with_k

import striate.reference as R
from striate import _core

# (k, N, C, H, W, K, pads (t, b, l, r)); kBatchChunk is 4 images.
CASES_3 = CASES3[:5] + [  # the forward's first cases: odd and even planes, paddings 0, 2, asymmetric
    pytest.param((3, 17, 4, 5, 23, (3, 1, 0, 4)), id="padding-above-2"),
    pytest.param((2, 2, 1, 1, 3, (1, 1, 1, 1)), id="one-pixel"),
    pytest.param((9, 17, 11, 13, 23, (1, 1, 1, 1)), id="batch-across-chunks-odd-channels"),
    pytest.param((6, 40, 7, 7, 40, (1, 1, 1, 1)), id="7x7-40-channels"),
    pytest.param((10, 64, 6, 6, 64, (1, 1, 1, 1)), id="image-blocks-inside-chunks"),
    pytest.param((1, 24, 33, 35, 20, (1, 1, 1, 1)), id="batch1-row-blocks"),
    pytest.param((5, 16, 40, 37, 17, (0, 1, 1, 0)), id="row-blocks-odd-width"),
    pytest.param((2, 33, 12, 31, 17, (1, 1, 1, 1)), id="rows-past-a-vector"),
]
CASES_5 = CASES5[:10] + [  # the forward's 5x5 cases, then the blocks, chunks and tails at 5x5
    pytest.param((9, 17, 11, 13, 23, (2, 2, 2, 2)), id="batch-across-chunks-odd-channels"),
    pytest.param((10, 32, 6, 6, 64, (2, 2, 2, 2)), id="image-blocks-inside-chunks"),
    pytest.param((1, 24, 33, 35, 20, (2, 2, 2, 2)), id="batch1-row-blocks"),
    pytest.param((2, 33, 12, 31, 17, (1, 3, 0, 2)), id="rows-past-a-vector"),
    # 49 tiles an image against a block target of 32: still one block an image
    pytest.param((5, 32, 14, 14, 64, (2, 2, 2, 2)), id="image-past-the-block-target"),
]


CASES = _with_k(3, CASES_3) + _with_k(5, CASES_5)


def _inputs(case, seed=0):
    if len(case) == 6:
        case = (3,) + tuple(case)
    k, N, C, H, W, K, (pt, pb, pl, pr) = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C, k, k), dtype=np.float32)
    dy = rng.standard_normal((N, K, H + pt + pb - k + 1, W + pl + pr - k + 1), dtype=np.float32)
    return x, w, dy


def _dw(x, w, dy, pads):
    return call_backward(dy, x, w, pads=pads, need=(False, True, False))[1]


def _reference(x, w, dy, pads):
    # striate.reference takes symmetric padding: pad x itself, then no padding.
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return R.conv2d_backward(dy.astype(np.float64), xp, w.astype(np.float64), needs=("weight",))[1]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, force, isa):
    k, N, C, H, W, K, pads = case
    x, w, dy = _inputs(case)
    if isa != "generic":
        assert _core.conv2d_algorithms(x, w, 1, 1, *pads, 1, 1, 1)["dw"] == "winograd"
    dw = _dw(x, w, dy, pads)
    assert_close(dw, _reference(x, w, dy, pads), N * dy.shape[2] * dy.shape[3], "dw", case)


@pytest.mark.parametrize("case", [CASES[0], CASES[7], CASES[9], CASES[10], CASES[-4], CASES[-3], CASES[-2]])
def test_bit_identical_for_any_thread_count(case, force, isa):
    pads = case[-1]
    x, w, dy = _inputs(case)
    first = None
    for threads in (1, 2, 3, 8):
        _core.set_num_threads(threads)
        dw = _dw(x, w, dy, pads)
        if first is None:
            first = dw
        else:
            assert dw.tobytes() == first.tobytes(), threads


@pytest.mark.parametrize("case", CASES)
def test_vector_paths_give_identical_bits(case, force):
    if "avx512" not in _supported_isas():
        pytest.skip("needs a CPU with both the avx512 and the avx2 path")
    pads = case[-1]
    x, w, dy = _inputs(case)
    before = _core.get_isa()
    try:
        out = {}
        for name in ("avx512", "avx2"):
            _core.set_isa(name)
            out[name] = _dw(x, w, dy, pads)
    finally:
        _core.set_isa(before)
    assert out["avx512"].tobytes() == out["avx2"].tobytes()


def test_all_gradients_at_once_give_the_same_dw(force, isa):
    # dx (Winograd too) and db run in the same call and chunk tasks as dw.
    case = (6, 24, 9, 10, 20, (1, 1, 1, 1))
    x, w, dy = _inputs(case)
    dx, dw, db = call_backward(dy, x, w, pads=case[-1])
    assert dw.tobytes() == _dw(x, w, dy, case[-1]).tobytes()
    assert dx.shape == x.shape and db.shape == (20,)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param((3, 64, 16, 32, 32, 16, (1, 1, 1, 1)), id="16-32x32"),
        pytest.param((3, 8, 64, 8, 8, 64, (1, 1, 1, 1)), id="64-8x8"),
        pytest.param((3, 5, 40, 9, 11, 24, (1, 1, 1, 1)), id="40-24-odd"),
    ],
)
def test_off_and_auto_agree(case, isa):
    # 3x3 only: F(2x2, 5x5) rounds about ten times more than the direct dw (as
    # its forward and dx do), so two float32 results may differ by more than
    # one's tolerance; test_matches_reference holds each to the float64 oracle.
    k, N, C, H, W, K, pads = case
    x, w, dy = _inputs(case, seed=1)
    assert _core.conv2d_get_winograd() == "auto"
    try:
        _core.conv2d_set_winograd("off")
        assert _core.conv2d_algorithms(x, w, 1, 1, *pads, 1, 1, 1)["dw"] != "winograd"
        off = _dw(x, w, dy, pads)
    finally:
        _core.conv2d_set_winograd("auto")
    auto = _dw(x, w, dy, pads)
    assert_close(auto, off.astype(np.float64), N * dy.shape[2] * dy.shape[3], "dw [auto vs off]", case)


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pads, dil, groups, dw",
    [
        ((8, 32, 16, 16), (32, 32, 3, 3), 1, (1, 1, 1, 1), 1, 1, "winograd"),
        ((64, 16, 32, 32), (16, 16, 3, 3), 1, (1, 1, 1, 1), 1, 1, "winograd"),
        ((8, 128, 8, 8), (128, 128, 3, 3), 1, (1, 1, 1, 1), 1, 1, "winograd"),
        ((8, 32, 16, 16), (32, 32, 3, 3), 1, (0, 2, 3, 0), 1, 1, "winograd"),  # any padding
        ((8, 8, 16, 16), (32, 8, 3, 3), 1, (1, 1, 1, 1), 1, 1, "gemm"),  # few input channels
        ((8, 32, 16, 16), (8, 32, 3, 3), 1, (1, 1, 1, 1), 1, 1, "direct"),  # few output channels
        ((8, 32, 16, 16), (64, 32, 5, 5), 1, (2, 2, 2, 2), 1, 1, "winograd"),  # 5x5
        ((8, 32, 14, 14), (32, 32, 5, 5), 1, (2, 2, 2, 2), 1, 1, "winograd"),
        ((8, 16, 16, 16), (16, 16, 5, 5), 1, (2, 2, 2, 2), 1, 1, "direct"),  # 5x5, 16 output channels
        ((8, 64, 7, 7), (64, 64, 5, 5), 1, (2, 2, 2, 2), 1, 1, "direct"),  # 5x5 on a 7x7 plane
        ((8, 32, 16, 16), (32, 32, 3, 3), 2, (1, 1, 1, 1), 1, 1, "direct"),  # stride 2
        ((8, 32, 16, 16), (32, 32, 3, 3), 1, (2, 2, 2, 2), 2, 1, "direct"),  # dilation 2
        ((8, 64, 16, 16), (64, 32, 3, 3), 1, (1, 1, 1, 1), 1, 2, "direct"),  # groups
    ],
)
def test_auto_takes_winograd_dw_where_it_pays(x_shape, w_shape, stride, pads, dil, groups, dw):
    if _core.get_isa() == "generic":
        pytest.skip("the generic path takes im2col + GEMM everywhere")
    assert _core.conv2d_get_winograd() == "auto"
    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    got = _core.conv2d_algorithms(x, w, stride, stride, *pads, dil, dil, groups)
    assert got["dw"] == dw, got


def test_off_never_takes_winograd_dw_and_force_always_does():
    if _core.get_isa() == "generic":
        pytest.skip("the generic path takes im2col + GEMM everywhere")
    x, w = np.zeros((8, 3, 16, 16), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    try:
        _core.conv2d_set_winograd("off")
        assert _core.conv2d_algorithms(x, w, 1, 1, 1, 1, 1, 1, 1, 1, 1)["dw"] != "winograd"
        _core.conv2d_set_winograd("force")
        assert _core.conv2d_algorithms(x, w, 1, 1, 1, 1, 1, 1, 1, 1, 1)["dw"] == "winograd"
    finally:
        _core.conv2d_set_winograd("auto")


def test_non_finite_inputs_stay_in_their_channels(force):
    # Winograd mixes the 4x4 input patch of a tile into all 9 taps: an inf in x
    # may reach every tap of its input channel (the direct dw keeps an inf at
    # an image edge out of the taps whose windows miss it), and a NaN in dy
    # every tap of its output channel; the other channels stay finite and exact.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16, 10, 12), dtype=np.float32)
    w = np.ones((20, 16, 3, 3), np.float32)
    dy = rng.standard_normal((5, 20, 10, 12), dtype=np.float32)
    x[2, 3, 0, 11] = np.inf
    dy[4, 7, 5, 5] = np.nan
    pads = (1, 1, 1, 1)
    dw = _dw(x, w, dy, pads)
    x0, dy0 = x.copy(), dy.copy()
    x0[2, 3, 0, 11] = 0.0
    dy0[4, 7, 5, 5] = 0.0
    ref = _reference(x0, w, dy0, pads)
    keep_k = np.arange(20) != 7
    keep_c = np.arange(16) != 3
    assert not np.isfinite(dw[:, 3]).all()
    assert not np.isfinite(dw[7]).any()
    assert np.isfinite(dw[keep_k][:, keep_c]).all()
    assert_close(dw[keep_k][:, keep_c], ref[keep_k][:, keep_c], 5 * 10 * 12, "dw", "non-finite elsewhere")


def test_zero_dy_and_empty_batch_give_zero(force, isa):
    x, w, dy = _inputs((6, 16, 7, 7, 16, (1, 1, 1, 1)))
    assert np.all(_dw(x, w, np.zeros_like(dy), (1, 1, 1, 1)) == 0)
    empty = _dw(x[:0], w, dy[:0], (1, 1, 1, 1))
    assert empty.shape == w.shape and np.all(empty == 0)


@pytest.mark.parametrize("relu", [False, True], ids=["normal", "relu-like"])
@pytest.mark.parametrize("shape", [(8, 32, 14, 14, 48, 2), (4, 24, 20, 17, 40, 1)], ids=["14x14", "20x17"])
def test_5x5_winograd_error_is_small_against_the_outputs_scale(shape, relu, force, isa):
    # F(2x2, 5x5) rounds relative to the size of its terms, not of each output:
    # outputs near zero may leave the elementwise bound (the dw on some random
    # layers, docs/performance.md), but every pass stays within 1e-4 of the
    # output's rms; the forward and dx also within the elementwise bound.
    if isa == "generic":
        pytest.skip("Winograd runs on the vector paths only")
    N, C, H, W, K, p = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C, 5, 5), dtype=np.float32)
    dy = rng.standard_normal((N, K, H + 2 * p - 4, W + 2 * p - 4), dtype=np.float32)
    if relu:
        x = np.maximum(x, 0)
        dy = dy * (rng.random(dy.shape) < 0.5)
    pads = (p, p, p, p)
    algos = _core.conv2d_algorithms(x, w, 1, 1, *pads, 1, 1, 1)
    assert algos["forward"] == algos["dx"] == algos["dw"] == "winograd", algos
    y = call_forward(x, w, None, pads=pads)
    dx, dw = call_backward(dy, x, w, pads=pads, need=(True, True, False))[:2]
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    xp = np.pad(x64, ((0, 0), (0, 0), (p, p), (p, p)))
    ref_y = R.conv2d(xp, w64)
    ref_dx = R.conv2d_backward(dy64, xp, w64, needs=("x",))[0][:, :, p : p + H, p : p + W]
    ref_dw = _reference(x, w, dy, pads)
    for name, got, ref in (("forward", y, ref_y), ("dx", dx, ref_dx), ("dw", dw, ref_dw)):
        scale = float(np.sqrt(np.mean(ref**2)))
        worst = float(np.max(np.abs(got.astype(np.float64) - ref)))
        assert worst <= 1e-4 * scale, (name, worst / scale)
    assert_close(y, ref_y, C * 25, "forward", shape)
    assert_close(dx, ref_dx, K * 25, "dx", shape)
