"""Tests of the Winograd F(2x2, 3x3) and F(2x2, 5x5) forward and dx
(csrc/conv_winograd.cpp).

``_core.conv2d_set_winograd("force")`` sends every shape Winograd supports
(3x3 or 5x5, stride 1, dilation 1, ungrouped; dx with padding at most 2 for
3x3, at most 4 for 5x5) through it,
whatever the channel counts, so the small cases here reach the tile, block and
padding edges. Checked: the float64 oracle of test_core_conv.py within the same
tolerance as every other conv path, bit-identical results for any thread count
and on both vector paths, which algorithm each shape takes, and the switch's
argument check. Not here: the other conv paths (test_core_conv.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_core_conv import _supported_isas, assert_close, call_backward, call_forward, make_inputs, ref_backward, ref_forward

from striate import _core

# (N, C, H, W, K, pads (t, b, l, r))
CASES3 = [
    pytest.param((2, 3, 7, 9, 5, (1, 1, 1, 1)), id="odd-planes"),
    pytest.param((3, 16, 8, 8, 16, (1, 1, 1, 1)), id="even-planes"),
    pytest.param((1, 5, 6, 5, 4, (0, 0, 0, 0)), id="no-padding"),
    pytest.param((2, 4, 5, 6, 3, (2, 2, 2, 2)), id="padding-2"),
    pytest.param((2, 4, 9, 7, 6, (2, 0, 1, 2)), id="asymmetric-padding"),
    pytest.param((2, 2, 1, 1, 3, (1, 1, 1, 1)), id="one-pixel"),
    pytest.param((1, 24, 33, 35, 20, (1, 1, 1, 1)), id="batch1-row-blocks"),
    pytest.param((40, 8, 6, 6, 8, (1, 1, 1, 1)), id="image-blocks-tail"),
    pytest.param((2, 40, 7, 7, 48, (1, 1, 1, 1)), id="7x7-wide"),
    pytest.param((3, 17, 12, 31, 33, (1, 1, 1, 1)), id="rows-past-a-vector"),
    # more than 256 input channels (forward) and output channels (dx): the
    # GEMM's depth runs in two blocks
    pytest.param((2, 300, 5, 6, 270, (1, 1, 1, 1)), id="two-depth-blocks"),
]

# 5x5: 6x6 tiles, rows 2 th0 .. 2 th1 + 4 per chunk, six column phases.
CASES5 = [
    pytest.param((2, 3, 7, 9, 5, (2, 2, 2, 2)), id="odd-planes"),
    pytest.param((2, 32, 14, 14, 64, (2, 2, 2, 2)), id="tutorial-14x14"),
    pytest.param((1, 5, 9, 8, 4, (0, 0, 0, 0)), id="no-padding"),
    pytest.param((2, 3, 5, 5, 4, (0, 0, 0, 0)), id="one-output"),
    pytest.param((2, 4, 6, 7, 3, (1, 1, 1, 1)), id="padding-1"),
    pytest.param((2, 4, 5, 6, 3, (3, 3, 3, 3)), id="padding-3"),
    pytest.param((2, 4, 5, 6, 3, (4, 4, 4, 4)), id="padding-4"),
    pytest.param((2, 4, 9, 7, 6, (4, 0, 1, 3)), id="asymmetric-padding"),
    pytest.param((2, 3, 8, 11, 5, (0, 3, 2, 0)), id="asymmetric-padding-2"),
    pytest.param((2, 2, 1, 1, 3, (2, 2, 2, 2)), id="one-pixel"),
    pytest.param((1, 24, 33, 35, 20, (2, 2, 2, 2)), id="batch1-row-blocks"),
    pytest.param((40, 8, 6, 6, 8, (2, 2, 2, 2)), id="image-blocks-tail"),
    pytest.param((3, 17, 12, 31, 33, (2, 2, 2, 2)), id="rows-past-a-vector"),
    pytest.param((2, 300, 5, 6, 270, (2, 2, 2, 2)), id="two-depth-blocks"),
    # an odd number of tile columns and enough images: blocks of 16 tile rows
    # of the whole batch, across images (7 rows each), the last one short
    pytest.param((12, 64, 14, 13, 64, (2, 2, 2, 2)), id="spans-across-images"),
]


def _with_k(k, cases):
    return [pytest.param((k,) + p.values[0], id=f"{k}x{k}-{p.id}") for p in cases]


CASES = _with_k(3, CASES3) + _with_k(5, CASES5)


def _run(case, seed=0, grads=True):
    k, N, C, H, W, K, pads = case
    rng = np.random.default_rng(seed)
    x, w, b = make_inputs(rng, N, C, H, W, K, k, k, 1)
    y = call_forward(x, w, b, pads=pads)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = call_backward(dy, x, w, pads=pads, need=(True, False, False))[0] if grads else None
    return x, w, b, dy, y, dx


@pytest.mark.parametrize("case", CASES)
def test_matches_oracle(case, force, isa):
    k, N, C, H, W, K, pads = case
    x, w, b, dy, y, dx = _run(case)
    algos = _core.conv2d_algorithms(x, w, 1, 1, *pads, 1, 1, 1)
    if isa != "generic":
        assert algos["forward"] == "winograd" and algos["dx"] == "winograd", algos
    assert_close(y, ref_forward(x, w, b, (1, 1), pads, (1, 1), 1), C * k * k, "y", case)
    assert_close(dx, ref_backward(dy, x, w, (1, 1), pads, (1, 1), 1)[0], K * k * k, "dx", case)


def _case(name):
    return next(p for p in CASES if p.id == name)


@pytest.mark.parametrize("k", [3, 5])
def test_a_sample_gets_the_same_bits_in_any_batch(k, force, isa):
    # The blocks (whole images or runs of tile rows) follow the batch size;
    # a sample's outputs must not.
    rng = np.random.default_rng(7)
    x, w, b = make_inputs(rng, 20, 16, 14, 13, 24, k, k, 1)
    p = k // 2
    pads = (p, p, p, p)
    y = call_forward(x, w, b, pads=pads)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = call_backward(dy, x, w, pads=pads, need=(True, False, False))[0]
    for lo, hi in ((3, 4), (5, 13), (0, 9)):
        assert call_forward(x[lo:hi], w, b, pads=pads).tobytes() == y[lo:hi].tobytes(), (lo, hi)
        got = call_backward(dy[lo:hi], x[lo:hi], w, pads=pads, need=(True, False, False))[0]
        assert got.tobytes() == dx[lo:hi].tobytes(), (lo, hi)


def test_spans_across_images_give_each_sample_its_own_bits(force, isa):
    # Blocks that cut images apart (a batch of 12) against whole-image and
    # single-image blocks (batches of 1 and 3): the same bits per sample.
    case = _case("5x5-spans-across-images").values[0]
    x, w, b, dy, y, dx = _run(case)
    pads = case[-1]
    for lo, hi in ((2, 3), (4, 7), (9, 12)):
        assert call_forward(x[lo:hi], w, b, pads=pads).tobytes() == y[lo:hi].tobytes(), (lo, hi)
        got = call_backward(dy[lo:hi], x[lo:hi], w, pads=pads, need=(True, False, False))[0]
        assert got.tobytes() == dx[lo:hi].tobytes(), (lo, hi)


@pytest.mark.parametrize(
    "case",
    [_case(n) for n in ("3x3-odd-planes", "3x3-batch1-row-blocks", "3x3-image-blocks-tail", "3x3-rows-past-a-vector",
                        "5x5-odd-planes", "5x5-asymmetric-padding", "5x5-batch1-row-blocks",
                        "5x5-image-blocks-tail", "5x5-rows-past-a-vector", "5x5-spans-across-images")],
)
def test_bit_identical_for_any_thread_count(case, force, isa):
    first = None
    for threads in (1, 2, 3, 8):
        _core.set_num_threads(threads)
        _, _, _, _, y, dx = _run(case)
        if first is None:
            first = (y, dx)
        else:
            assert y.tobytes() == first[0].tobytes() and dx.tobytes() == first[1].tobytes(), threads


@pytest.mark.parametrize("case", CASES)
def test_vector_paths_give_identical_bits(case, force):
    if "avx512" not in _supported_isas():
        pytest.skip("needs a CPU with both the avx512 and the avx2 path")
    before = _core.get_isa()
    try:
        out = {}
        for name in ("avx512", "avx2"):
            _core.set_isa(name)
            out[name] = _run(case)[4:]
    finally:
        _core.set_isa(before)
    for a, b in zip(out["avx512"], out["avx2"]):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "shape, pads, forward, dx",
    [
        (((8, 32, 16, 16), (32, 32, 3, 3)), (1, 1, 1, 1), "winograd", "winograd"),
        (((8, 8, 16, 16), (32, 8, 3, 3)), (1, 1, 1, 1), "direct", None),  # few input channels
        (((8, 32, 16, 16), (32, 32, 3, 3)), (3, 3, 3, 3), "winograd", None),  # dx padding above 2
        (((8, 64, 16, 16), (64, 64, 5, 5)), (2, 2, 2, 2), "winograd", "winograd"),
        (((8, 6, 14, 14), (16, 6, 5, 5)), (0, 0, 0, 0), "direct", None),  # LeNet C3: few input channels
        (((1, 64, 16, 16), (64, 64, 5, 5)), (2, 2, 2, 2), "winograd", "winograd"),  # never from the batch size
        (((8, 64, 16, 16), (64, 64, 5, 5)), (5, 5, 5, 5), "winograd", None),  # dx padding above 4
        (((8, 32, 16, 16), (32, 32, 7, 7)), (3, 3, 3, 3), "direct", None),  # no 7x7 Winograd
    ],
)
def test_auto_takes_winograd_where_it_pays(shape, pads, forward, dx):
    if _core.get_isa() == "generic":
        pytest.skip("the generic path takes im2col + GEMM everywhere")
    assert _core.conv2d_get_winograd() == "auto"
    x, w = np.zeros(shape[0], np.float32), np.zeros(shape[1], np.float32)
    got = _core.conv2d_algorithms(x, w, 1, 1, *pads, 1, 1, 1)
    assert got["forward"] == forward
    if dx is not None:
        assert got["dx"] == dx
    else:
        assert got["dx"] != "winograd"


@pytest.mark.parametrize("k", [3, 5])
def test_off_never_takes_winograd(k):
    x, w = np.zeros((8, 64, 16, 16), np.float32), np.zeros((64, 64, k, k), np.float32)
    p = k // 2
    try:
        _core.conv2d_set_winograd("off")
        got = _core.conv2d_algorithms(x, w, 1, 1, p, p, p, p, 1, 1, 1)
        assert "winograd" not in got.values()
    finally:
        _core.conv2d_set_winograd("auto")


def test_switch_refuses_unknown_modes_naming_the_argument():
    with pytest.raises(ValueError, match="`mode`.*'fast'"):
        _core.conv2d_set_winograd("fast")
    assert _core.conv2d_get_winograd() == "auto"


def test_non_finite_inputs_stay_where_they_belong(force):
    # Winograd mixes the inputs of a whole 4x4 tile into every output of the tile:
    # an inf reaches the outputs whose receptive field holds it, and may reach
    # their tile neighbours (as the GEMM's own accumulation would not); finite
    # tiles elsewhere stay finite.
    x = np.zeros((1, 16, 12, 12), np.float32)
    x[0, 3, 1, 1] = np.inf
    w = np.ones((16, 16, 3, 3), np.float32)
    y = call_forward(x, w, None, pads=(1, 1, 1, 1))
    assert not np.isfinite(y[0, :, :4, :4]).all()
    assert np.isfinite(y[0, :, 6:, 6:]).all()
