"""Tests for the convolution kernels in striate._core (csrc/conv*.cpp, csrc/bind_conv.cpp).

The oracle here is independent of striate.reference and of torch: a float64
NumPy convolution built from a padded input, sliding_window_view and einsum.
The oracle and determinism tests run once per ISA path the CPU supports
(avx512, avx2, generic; the ``isa`` fixture sets it with ``_core.set_isa`` and
restores it), and the vector paths are checked to give identical bits.
Not here: the user-facing argument handling of striate.functional and the full
shape grid against striate.reference (tests/test_functional.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from striate import _core

# ---------------------------------------------------------------- the oracle


def _windows(x, kh, kw, stride, pads, dil):
    """(N, C, OH, OW, kh, kw) view of the padded input x (float64)."""
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    eh, ew = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1], :: dil[0], :: dil[1]], xp.shape


def ref_forward(x, w, b, stride, pads, dil, groups):
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C = x.shape[:2]
    K, Cg, kh, kw = w.shape
    win, _ = _windows(x, kh, kw, stride, pads, dil)
    OH, OW = win.shape[2:4]
    win = win.reshape(N, groups, Cg, OH, OW, kh, kw)
    wg = w.reshape(groups, K // groups, Cg, kh, kw)
    y = np.einsum("ngchwij,gkcij->ngkhw", win, wg).reshape(N, K, OH, OW)
    if b is not None:
        y = y + b.astype(np.float64)[None, :, None, None]
    return y


def ref_backward(dy, x, w, stride, pads, dil, groups):
    dy, x, w = dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    win, padded_shape = _windows(x, kh, kw, stride, pads, dil)
    OH, OW = win.shape[2:4]
    win = win.reshape(N, groups, Cg, OH, OW, kh, kw)
    wg = w.reshape(groups, K // groups, Cg, kh, kw)
    dyg = dy.reshape(N, groups, K // groups, OH, OW)
    dw = np.einsum("ngkhw,ngchwij->gkcij", dyg, win).reshape(K, Cg, kh, kw)
    db = dy.sum(axis=(0, 2, 3))
    dcols = np.einsum("ngkhw,gkcij->ngchwij", dyg, wg).reshape(N, C, OH, OW, kh, kw)
    dxp = np.zeros(padded_shape)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dil[0], j * dil[1]
            dxp[:, :, r0 : r0 + stride[0] * (OH - 1) + 1 : stride[0], c0 : c0 + stride[1] * (OW - 1) + 1 : stride[1]] += (
                dcols[..., i, j]
            )
    pt, pb, pl, pr = pads
    dx = dxp[:, :, pt : pt + H, pl : pl + W]
    return dx, dw, db


def assert_close(got, ref, reduction, name, params):
    """|got - ref| <= (1e-5 + 1e-4 |ref|) * sqrt(reduction); reports the first failing index."""
    assert got.dtype == np.float32, name
    assert got.shape == ref.shape, (name, got.shape, ref.shape, params)
    tol = (1e-5 + 1e-4 * np.abs(ref)) * np.sqrt(max(reduction, 1))
    bad = ~(np.abs(got.astype(np.float64) - ref) <= tol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        pytest.fail(f"{name} differs at {idx}: got {got[idx]!r}, expected {ref[idx]!r}; params {params}")


# ---------------------------------------------------------------- helpers

_ISA_ORDER = ("generic", "avx2", "avx512")


def _supported_isas():
    top = _ISA_ORDER.index(_core.detected_isa())
    return _ISA_ORDER[: top + 1]


@pytest.fixture(params=list(reversed(_ISA_ORDER)))
def isa(request):
    """Run the test on one ISA path (skipped when the CPU lacks it), then restore the previous one."""
    if request.param not in _supported_isas():
        pytest.skip(f"this CPU has no {request.param} path")
    before = _core.get_isa()
    _core.set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.set_isa(before)



def call_forward(x, w, b, stride=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), groups=1):
    return _core.conv2d_forward(x, w, b, *stride, *pads, *dil, groups)


def call_backward(dy, x, w, stride=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), groups=1, need=(True, True, True)):
    return _core.conv2d_backward(dy, x, w, *stride, *pads, *dil, groups, *need)


def make_inputs(rng, N, C, H, W, K, kh, kw, groups, bias=True):
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C // groups, kh, kw), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32) if bias else None
    return x, w, b


# (N, C, H, W, K, kh, kw, stride, pads (t, b, l, r), dilation, groups, bias)
CASES = [
    pytest.param((2, 3, 7, 9, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="basic-3x3-pad1"),
    pytest.param((2, 4, 9, 8, 6, 3, 3, (2, 2), (1, 0, 2, 1), (1, 1), 1, True), id="stride2-asym-pad"),
    pytest.param((1, 3, 10, 11, 4, 3, 2, (1, 1), (0, 0, 0, 0), (2, 2), 1, False), id="dilation2-batch1"),
    pytest.param((3, 5, 12, 9, 7, 3, 3, (3, 2), (2, 1, 0, 3), (2, 3), 1, True), id="stride-dilation-mixed"),
    pytest.param((2, 6, 8, 8, 4, 3, 3, (1, 2), (1, 1, 0, 1), (1, 1), 2, True), id="groups2"),
    pytest.param((2, 5, 7, 6, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 5, True), id="depthwise"),
    pytest.param((2, 5, 7, 6, 10, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1), 5, False), id="depthwise-multiplier2"),
    pytest.param((1, 2, 5, 6, 3, 2, 2, (1, 1), (0, 1, 1, 0), (1, 1), 1, True), id="even-kernel-same-pad"),
    pytest.param((3, 17, 1, 1, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="1x1-spatial"),
    pytest.param((2, 17, 1, 1, 19, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="kernel-fits-by-padding"),
    pytest.param((2, 17, 5, 6, 20, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="pointwise"),
    pytest.param((2, 8, 5, 6, 12, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 4, False), id="pointwise-groups4"),
    pytest.param((2, 7, 9, 7, 5, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1, True), id="1x1-stride2"),
    pytest.param((2, 3, 5, 4, 4, 1, 1, (1, 1), (1, 1, 0, 2), (1, 1), 1, True), id="1x1-kernel-padded"),
    pytest.param((2, 3, 6, 5, 4, 2, 3, (1, 1), (2, 0, 3, 1), (1, 1), 1, True), id="pad-wider-than-kernel"),
    pytest.param((9, 19, 11, 13, 21, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="odd-channels-batch9"),
    pytest.param((5, 1, 12, 12, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True), id="one-channel-k5"),
    pytest.param((5, 3, 11, 13, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="three-channels-k3"),
    pytest.param((3, 2, 10, 9, 4, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, False), id="two-channels-stride2"),
    pytest.param((2, 6, 10, 10, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="lenet-c3-like"),
    # Output rows of 16 and 32: the direct kernel writes whole rows (rows mode).
    pytest.param((3, 5, 6, 16, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="rows-of-16"),
    pytest.param((2, 4, 5, 32, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, False), id="rows-of-32-groups"),
    pytest.param((2, 3, 7, 20, 5, 3, 5, (1, 1), (1, 1, 0, 0), (2, 1), 1, True), id="rows-of-16-dilated"),
    # 16 or more input channels per group: dw is computed channels-last (direct dw).
    pytest.param((5, 32, 9, 10, 26, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2, True), id="wide-groups-stride2"),
    pytest.param((2, 20, 8, 7, 7, 3, 2, (1, 1), (2, 0, 1, 1), (2, 1), 1, True), id="wide-dilated-asym"),
    pytest.param((1, 48, 5, 5, 50, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, False), id="wide-k5"),
    # Small outputs with many output channels: the forward vectorises over channels.
    pytest.param((3, 4, 9, 15, 32, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="channel-vectors-odd-rows"),
    pytest.param((2, 6, 11, 9, 20, 3, 2, (1, 1), (1, 0, 0, 1), (1, 2), 1, True), id="channel-vectors-tail"),
    pytest.param((2, 4, 8, 8, 32, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 2, True), id="channel-vectors-groups"),
    # 32 channels at a time (two vectors per tile, 7 positions per row) and a tail of 8.
    pytest.param((2, 4, 8, 9, 40, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="channel-vectors-32-and-tail"),
    # Stride 1, fewer than 16 input and at most 16 output channels per group: dw is
    # accumulated over positions flattened along the padded width (flat dw), with
    # output-channel tiles of 4 or 6 and row tiles of 6 or 4 plus their tails.
    pytest.param((5, 1, 28, 28, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True), id="flat-dw-lenet-c1"),
    pytest.param((9, 5, 9, 11, 13, 3, 2, (1, 1), (1, 0, 2, 1), (1, 1), 1, False), id="flat-dw-k13-tails"),
    pytest.param((3, 14, 8, 7, 14, 2, 3, (1, 1), (0, 1, 1, 1), (2, 1), 2, True), id="flat-dw-groups-dilated"),
    pytest.param((2, 2, 17, 33, 1, 4, 4, (1, 1), (0, 0, 0, 0), (1, 2), 1, True), id="flat-dw-one-output-channel"),
    pytest.param((5, 3, 12, 16, 16, 3, 2, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="flat-dw-16-output-channels"),
    # 32 output channels from 3 inputs (the CIFAR net's first layer): dw through im2col + GEMM.
    pytest.param((5, 3, 12, 16, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="gemm-dw-3-to-32"),
    # Stride 1, few input channels, 12 to 16 output channels per group, kernel width 3 or 5:
    # dw vectorised over output channels (kvec dw), tiles of 8 (k3) or 5 (k5) kernel rows.
    pytest.param((6, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="kvec-dw-lenet-c3"),
    pytest.param((5, 3, 9, 10, 13, 3, 3, (1, 1), (1, 1, 1, 1), (2, 1), 1, True), id="kvec-dw-k13-dilated-rows"),
    pytest.param((3, 14, 8, 9, 28, 4, 5, (1, 1), (2, 1, 0, 2), (1, 1), 2, False), id="kvec-dw-groups-row-tail"),
    # On AVX2 also 17 to 32 output channels from at most 3 inputs, kernel width 5 (vectors
    # of 8 in turn); im2col + GEMM on AVX-512.
    pytest.param((4, 1, 11, 13, 21, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True), id="kvec-dw-avx2-21-channels"),
    pytest.param((3, 4, 9, 9, 40, 5, 5, (1, 1), (2, 1, 2, 3), (1, 1), 2, True), id="kvec-dw-avx2-groups-20"),
    # Stride 1 dx by bands of kernel rows (scatter dx) where it needs fewer FMAs than the
    # direct kernel on the padded dy, or where dy's padding would be negative.
    pytest.param((3, 4, 9, 13, 5, 3, 3, (1, 1), (1, 1, 2, 2), (1, 2), 1, True), id="scatter-dx-dilated-width"),
    pytest.param((2, 5, 6, 7, 6, 2, 2, (1, 1), (3, 2, 3, 1), (1, 1), 1, True), id="scatter-dx-pad-beyond-kernel"),
    pytest.param((2, 7, 4, 40, 4, 3, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1, False), id="scatter-dx-long-bands"),
    # Few output positions per padded row (a quarter of the lanes are real): im2col + GEMM.
    pytest.param((2, 3, 6, 20, 4, 3, 3, (1, 1), (0, 0, 0, 0), (1, 8), 1, True), id="flat-dw-rejected-wide-dilation"),
    # Small dx planes with 32 input channels per group: dx vectorised over input channels.
    pytest.param((2, 32, 7, 7, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="kvec-dx-7x7"),
    pytest.param((3, 64, 6, 5, 40, 3, 2, (1, 1), (1, 1, 1, 0), (1, 1), 2, False), id="kvec-dx-groups-asym"),
    # One image: channel blocks, channel pairs and kernel taps are split over the threads.
    pytest.param((1, 20, 9, 9, 37, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="batch1-direct-tail-blocks"),
    pytest.param((1, 9, 9, 13, 10, 3, 3, (1, 1), (1, 1, 2, 2), (1, 2), 1, True), id="batch1-scatter-dx"),
    # The layers each specialised path was built for, at full size (small batches):
    # LeNet C1 (flat dw), LeNet C3 (kvec forward, kvec dw, scatter dx), 3->32 (GEMM dw),
    # 32->32 on 32x32 (rows mode), 64->64 and 128->128 (direct dw variants), 5x5 32->64.
    pytest.param((3, 1, 28, 28, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True), id="layer-lenet-c1"),
    pytest.param((3, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1, True), id="layer-lenet-c3"),
    pytest.param((2, 3, 32, 32, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="layer-3-to-32"),
    pytest.param((2, 32, 32, 32, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="layer-32-to-32"),
    pytest.param((2, 64, 16, 16, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="layer-64-to-64"),
    pytest.param((1, 128, 16, 16, 128, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="layer-128-to-128-batch1"),
    pytest.param((2, 32, 14, 14, 64, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True), id="layer-5x5-32-to-64"),
    pytest.param((1, 64, 8, 8, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="layer-8x8-batch1"),
    # 33 -> 24 channels: the AVX2 direct dw takes its 1 x 12 tile, whose 12 output
    # channels per tile are packed in two transposes of 8 (wider than a vector).
    pytest.param((2, 33, 6, 9, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True), id="direct-dw-tile-wider-than-vector"),
    pytest.param((5, 33, 5, 7, 24, 1, 4, (1, 1), (2, 2, 3, 2), (1, 1), 1, False), id="direct-dw-wide-tile-images"),
    # Strides above 1: the forward splits the padded image into stride phases and
    # runs the direct kernel on them; dx runs one stride-1 direct convolution per
    # phase of dx with that phase's taps (none when the kernel is smaller than
    # the stride, which leaves zeros).
    pytest.param((2, 3, 30, 30, 16, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1, True), id="strided-stem-k7"),
    pytest.param((2, 24, 16, 16, 40, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, True), id="strided-3x3-wide"),
    pytest.param((2, 8, 15, 17, 12, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 1, False), id="strided-5x5-odd-planes"),
    pytest.param((3, 5, 13, 14, 7, 3, 3, (3, 3), (1, 2, 0, 1), (1, 1), 1, True), id="strided-3-asym-pad"),
    pytest.param((2, 6, 11, 12, 9, 4, 2, (2, 3), (1, 1, 1, 1), (1, 1), 1, True), id="strided-2x3-even-kernel"),
    pytest.param((2, 5, 14, 9, 6, 2, 2, (4, 4), (0, 0, 0, 0), (1, 1), 1, True), id="strided-kernel-smaller-than-stride"),
    pytest.param((2, 16, 8, 8, 32, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1, True), id="strided-1x1-projection"),
    # dw of a strided kernel with few input channels builds im2col by positions
    # (runs of kw floats copied as whole vectors): runs longer than one AVX2
    # vector, longer than one AVX-512 vector (stride along the width only), and groups.
    pytest.param((2, 2, 23, 25, 8, 3, 11, (2, 2), (1, 1, 5, 5), (1, 1), 1, True), id="strided-dw-runs-past-a-vector"),
    pytest.param((1, 1, 9, 40, 4, 2, 17, (1, 2), (0, 0, 8, 8), (1, 1), 1, False), id="strided-dw-runs-past-16"),
    pytest.param((2, 6, 11, 11, 8, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 2, True), id="strided-dw-groups"),
    pytest.param((2, 12, 10, 10, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 12, True), id="strided-depthwise"),
    pytest.param((1, 32, 9, 9, 48, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, True), id="strided-batch1"),
    # 3x3 stride 2 with 8+ input channels reads the padded image at the stride
    # (channel vectors): asymmetric padding, odd planes, a channel tail.
    pytest.param((3, 10, 11, 12, 20, 3, 3, (2, 2), (0, 1, 2, 0), (1, 1), 1, True), id="strided-3x3-kvec-asym-pad"),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_oracle(rng, case, isa):
    N, C, H, W, K, kh, kw, stride, pads, dil, groups, bias = case
    x, w, b = make_inputs(rng, N, C, H, W, K, kh, kw, groups, bias)
    y = call_forward(x, w, b, stride, pads, dil, groups)
    y_ref = ref_forward(x, w, b, stride, pads, dil, groups)
    Cg, Kg = C // groups, K // groups
    assert_close(y, y_ref, Cg * kh * kw, "y", case)

    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = call_backward(dy, x, w, stride, pads, dil, groups)
    dx_ref, dw_ref, db_ref = ref_backward(dy, x, w, stride, pads, dil, groups)
    OH, OW = y.shape[2:]
    assert_close(dx, dx_ref, Kg * kh * kw, "dx", case)
    assert_close(dw, dw_ref, N * OH * OW, "dw", case)
    assert_close(db, db_ref, N * OH * OW, "db", case)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)])
def test_backward_computes_only_what_is_asked(rng, need, isa):
    x, w, _ = make_inputs(rng, 3, 4, 6, 6, 5, 3, 3, 1)
    dy = rng.standard_normal((3, 5, 6, 6), dtype=np.float32)
    full = call_backward(dy, x, w, pads=(1, 1, 1, 1))
    part = call_backward(dy, x, w, pads=(1, 1, 1, 1), need=need)
    for got, want, asked in zip(part, full, need):
        if asked:
            np.testing.assert_array_equal(got, want)
        else:
            assert got is None


# ---------------------------------------------------------------- determinism

DET_CASES = [
    (13, 3, 12, 12, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (11, 1, 14, 14, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    (9, 8, 10, 9, 12, 3, 3, (2, 1), (1, 0, 1, 2), (2, 1), 2),
    (7, 6, 8, 8, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),
    (10, 16, 6, 6, 24, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (17, 20, 9, 9, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (6, 12, 8, 16, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (9, 36, 7, 9, 18, 3, 3, (2, 1), (1, 1, 0, 1), (1, 2), 2),
    (7, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (14, 10, 9, 11, 14, 3, 2, (1, 1), (1, 0, 2, 1), (2, 1), 2),
    (13, 14, 8, 9, 28, 4, 5, (1, 1), (2, 1, 0, 2), (1, 1), 2),
    (6, 4, 9, 13, 10, 3, 3, (1, 1), (1, 1, 2, 2), (1, 2), 2),
    (9, 3, 12, 16, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # One or two images (one dw chunk): the direct forward and dx split channel blocks,
    # the scatter dx channel pairs and the direct dw kernel taps over the threads.
    (1, 20, 9, 9, 37, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 12, 8, 16, 21, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 34, 7, 7, 50, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    (1, 9, 9, 13, 10, 3, 3, (1, 1), (1, 1, 2, 2), (1, 2), 1),
    (1, 7, 4, 40, 4, 3, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (9, 32, 7, 7, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (5, 4, 8, 9, 40, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    # One image above the forward's serial threshold (1 MFLOP) with few output
    # channels: the channel-vector kernel splits pairs of output rows, the
    # position kernel runs of positions (fewer channel tasks than threads).
    (1, 1, 28, 28, 32, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    (1, 4, 48, 48, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 8, 32, 32, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # Channel counts of the big layers (direct dw variants, rows-mode direct) and 3->32.
    (5, 64, 8, 8, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (6, 32, 16, 16, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (5, 3, 16, 16, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # Strided forward and dx by phases (one image: blocks over the threads).
    (5, 3, 22, 22, 16, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    (7, 24, 12, 12, 40, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (1, 32, 9, 9, 48, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (4, 6, 11, 12, 9, 4, 2, (2, 3), (1, 1, 1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("case", DET_CASES)
def test_bitwise_identical_across_thread_counts(rng, case, isa):
    N, C, H, W, K, kh, kw, stride, pads, dil, groups = case
    x, w, b = make_inputs(rng, N, C, H, W, K, kh, kw, groups)
    results = []
    for threads in (1, 2, 3, 8):
        _core.set_num_threads(threads)
        y = call_forward(x, w, b, stride, pads, dil, groups)
        dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
        grads = call_backward(dy, x, w, stride, pads, dil, groups)
        grads_again = call_backward(dy, x, w, stride, pads, dil, groups)
        for g1, g2 in zip(grads, grads_again):
            assert g1.tobytes() == g2.tobytes(), f"backward not repeatable at threads={threads}"
        results.append((threads, [y, *grads]))
    _, base = results[0]
    for threads, arrays in results[1:]:
        for name, a, b0 in zip(("y", "dx", "dw", "db"), arrays, base):
            assert a.tobytes() == b0.tobytes(), f"{name} differs between 1 and {threads} threads"


def _all_outputs(case, seed=0):
    N, C, H, W, K, kh, kw, stride, pads, dil, groups, bias = case
    rng = np.random.default_rng(seed)
    x, w, b = make_inputs(rng, N, C, H, W, K, kh, kw, groups, bias)
    y = call_forward(x, w, b, stride, pads, dil, groups)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    return [y, *call_backward(dy, x, w, stride, pads, dil, groups)]


@pytest.mark.parametrize("case", CASES)
def test_vector_isas_give_identical_bits(case, request):
    # Every specialised kernel sums each output in one order that depends on the
    # shape only (flat dw in 16 logical lanes on both paths), and both paths
    # choose the same algorithms, so AVX2 reproduces AVX-512 bit for bit. The
    # exception is a dw that goes through the GEMM as dy . cols^T with 5 to 64
    # output channels: AVX-512 takes its dot kernels there and AVX2 the packed
    # GEMM (faster on 8 ymm lanes), or the kvec dw for at most 3 input and up to
    # 32 output channels, so those dw agree within tolerance only.
    if "avx512" not in _supported_isas():
        pytest.skip("needs a CPU with both the avx512 and the avx2 path")
    before = _core.get_isa()
    try:
        results = {}
        for name in ("avx512", "avx2"):
            _core.set_isa(name)
            results[name] = _all_outputs(case)
    finally:
        _core.set_isa(before)
    _assert_vector_isas_agree(case, results["avx512"], results["avx2"], request.node.callspec.id in GEMM_DW_CASES)


# Cases whose dw runs through the GEMM's A . B^T with 5..64 rows (see above).
GEMM_DW_CASES = {
    "stride2-asym-pad", "stride-dilation-mixed", "pointwise", "1x1-stride2", "channel-vectors-odd-rows",
    "channel-vectors-tail", "channel-vectors-32-and-tail", "gemm-dw-3-to-32", "layer-3-to-32",
    "kvec-dw-avx2-21-channels", "kvec-dw-avx2-groups-20",
    "strided-stem-k7", "strided-5x5-odd-planes", "strided-3-asym-pad", "strided-2x3-even-kernel",
    "strided-kernel-smaller-than-stride",
}


def _assert_vector_isas_agree(case, a512, a2, gemm_dw):
    """y, dx and db bit for bit; dw too unless it may come from the GEMM's dot kernels."""
    N, C, H, W, K, kh, kw, stride, pads, dil, groups, bias = case
    for what, a, b in zip(("y", "dx", "dw", "db"), a512, a2):
        if what == "dw" and gemm_dw:
            OH, OW = a512[0].shape[2:]
            assert_close(b, a.astype(np.float64), N * OH * OW, "dw [avx2 vs avx512]", case)
        else:
            assert a.tobytes() == b.tobytes(), f"{what} differs between avx512 and avx2 for {case}"


def _random_case(rng):
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    Cg = int(rng.choice([1, 2, 3, 5, 6, 7, 12, 15, 16, 17, 20, 32, 33]))
    Kg = int(rng.choice([1, 4, 6, 8, 12, 13, 16, 17, 24, 32, 40]))
    kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
    dh, dw = (int(v) for v in rng.choice([1, 1, 2], size=2))
    H = int(rng.integers(max(1, dh * (kh - 1)), 16))
    W = int(rng.integers(max(1, dw * (kw - 1)), 34))
    pads = tuple(int(v) for v in rng.integers(0, 4, size=4))
    stride = (1, 1) if rng.random() < 0.8 else tuple(int(v) for v in rng.integers(1, 3, size=2))
    N = int(rng.integers(1, 7))
    return (N, Cg * groups, H, W, Kg * groups, kh, kw, stride, pads, (dh, dw), groups, bool(rng.random() < 0.5))


@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_agree_across_isas(seed):
    # Random geometry reaches tile shapes and tails the fixed cases may miss: the
    # vector paths must give the same bits, and all paths must match the oracle.
    rng = np.random.default_rng(seed)
    before = _core.get_isa()
    try:
        for _ in range(12):
            case = _random_case(rng)
            N, C, H, W, K, kh, kw, stride, pads, dil, groups, bias = case
            if H + pads[0] + pads[1] < dil[0] * (kh - 1) + 1 or W + pads[2] + pads[3] < dil[1] * (kw - 1) + 1:
                continue
            results = {}
            for name in _supported_isas():
                _core.set_isa(name)
                results[name] = _all_outputs(case, seed)
            if "avx512" in results:
                # dw may come from the GEMM (see test_vector_isas_give_identical_bits);
                # the oracle check below holds it to the tolerance on every path.
                _assert_vector_isas_agree(case, results["avx512"], results["avx2"], gemm_dw=True)
            # The oracle on the inputs and dy _all_outputs drew.
            rng_case = np.random.default_rng(seed)
            x, w, b = make_inputs(rng_case, N, C, H, W, K, kh, kw, groups, bias)
            y_ref = ref_forward(x, w, b, stride, pads, dil, groups)
            dy = rng_case.standard_normal(y_ref.shape, dtype=np.float32)
            dx_ref, dw_ref, db_ref = ref_backward(dy, x, w, stride, pads, dil, groups)
            OH, OW = y_ref.shape[2:]
            for name, (y, dx, dw, db) in results.items():
                assert_close(y, y_ref, (C // groups) * kh * kw, f"y [{name}]", case)
                assert_close(dx, dx_ref, (K // groups) * kh * kw, f"dx [{name}]", case)
                assert_close(dw, dw_ref, N * OH * OW, f"dw [{name}]", case)
                assert_close(db, db_ref, N * OH * OW, f"db [{name}]", case)
    finally:
        _core.set_isa(before)


# ---------------------------------------------------------------- edge cases


def test_flat_dw_keeps_uncovered_inf_out(rng, isa):
    # Column W-1 lies under no window of taps j = 0, 1 (3 wide, no padding): an inf
    # there must not reach dw[..., 0] or dw[..., 1], though the flattened
    # positions of the flat dw path read it.
    x, w, _ = make_inputs(rng, 5, 3, 9, 12, 8, 3, 3, 1, bias=False)
    x[:, :, :, -1] = np.inf
    dy = rng.standard_normal((5, 8, 7, 10), dtype=np.float32)
    _, dw, _ = call_backward(dy, x, w, need=(False, True, False))
    x_finite = x.copy()
    x_finite[:, :, :, -1] = 0.0
    _, dw_ref, _ = ref_backward(dy, x_finite, w, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert np.all(np.isfinite(dw[..., :2]))
    assert_close(dw[..., :2], dw_ref[..., :2], 5 * 7 * 10, "dw", "inf in the last column")
    assert not np.any(np.isfinite(dw[..., 2]))



@pytest.mark.parametrize(
    "N, C, H, W, K, k, stride, pads, dil",
    [
        (3, 32, 14, 14, 24, 5, (1, 1), (2, 2, 2, 2), (1, 1)),  # the TF-tutorial CNN's second layer, smaller
        (2, 16, 9, 11, 16, 3, (2, 1), (1, 0, 2, 1), (1, 1)),  # strided, uneven padding
        (2, 16, 10, 10, 8, 3, (1, 1), (3, 3, 2, 2), (2, 2)),  # dilated: some taps see padding only on rows
        (2, 16, 6, 6, 8, 5, (1, 1), (4, 4, 4, 4), (1, 1)),  # padding wider than half the kernel
    ],
)
def test_dw_skipping_padding_equals_dw_on_the_padded_image(rng, N, C, H, W, K, k, stride, pads, dil, isa):
    # The direct dw leaves out the positions whose pixel is padding: exactly the
    # zero terms, so its bits are those of the same sums over an image padded
    # by hand (where every term is computed), and its algorithm is "direct".
    x, w, _ = make_inputs(rng, N, C, H, W, K, k, k, 1, bias=False)
    t, b, l, r = pads
    xp = np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (t, b), (l, r))))
    dy = call_forward(xp, w, None, stride, (0, 0, 0, 0), dil)
    dy = rng.standard_normal(dy.shape, dtype=np.float32)
    if isa != "generic":
        assert _core.conv2d_algorithms(x, w, *stride, *pads, *dil, 1)["dw"] == "direct"
    _, dw, _ = call_backward(dy, x, w, stride, pads, dil, need=(False, True, False))
    _, dw_padded, _ = call_backward(dy, xp, w, stride, (0, 0, 0, 0), dil, need=(False, True, False))
    assert dw.tobytes() == dw_padded.tobytes()


@pytest.mark.parametrize(
    "N, C, H, W, K, k, stride, pads, dil, groups",
    [
        (2, 64, 16, 16, 128, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # ResNet's downsampling layer: channel vectors, unsplit
        (1, 64, 16, 16, 128, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # the same for one image (rows over threads)
        (3, 24, 15, 13, 40, 3, (2, 1), (1, 0, 2, 1), (1, 1), 1),
        (2, 16, 14, 14, 32, 5, (1, 2), (2, 2, 2, 2), (1, 1), 1),
        (2, 16, 17, 17, 48, 3, (2, 2), (2, 1, 1, 2), (2, 2), 1),  # dilated
        (2, 32, 13, 13, 48, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2),  # groups
        (2, 16, 20, 19, 24, 3, (3, 3), (1, 1, 1, 1), (1, 1), 1),  # stride 3: the phase split
        (2, 8, 40, 40, 8, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # large output: positions, the phase split
    ],
)
def test_strided_forward_is_the_stride_1_output_subsampled_bit_for_bit(rng, N, C, H, W, K, k, stride, pads, dil,
                                                                       groups, isa):
    # Every strided forward path (the channel-vector tiles reading the padded
    # image at the stride, or the phase split) sums each output's taps in the
    # order the stride-1 direct kernels do: the same bits as the stride-1
    # output at the strided positions (Winograd, which rounds differently, off).
    x, w, b = make_inputs(rng, N, C, H, W, K, k, k, groups)
    before = _core.conv2d_get_winograd()
    _core.conv2d_set_winograd("off")
    try:
        y = call_forward(x, w, b, stride, pads, dil, groups)
        full = call_forward(x, w, b, (1, 1), pads, dil, groups)
    finally:
        _core.conv2d_set_winograd(before)
    if isa != "generic":
        assert _core.conv2d_algorithms(x, w, *stride, *pads, *dil, groups)["forward"] == "strided"
    sub = full[:, :, ::stride[0], ::stride[1]][:, :, :y.shape[2], :y.shape[3]]
    assert y.shape == sub.shape
    assert y.tobytes() == np.ascontiguousarray(sub).tobytes()


@pytest.mark.parametrize("groups", [1, 2])
def test_zero_dy_gives_exactly_zero_gradients(rng, groups, isa):
    x, w, _ = make_inputs(rng, 6, 4, 7, 7, 6, 3, 3, groups)
    dy = np.zeros((6, 6, 4, 4), dtype=np.float32)
    for grad in call_backward(dy, x, w, stride=(2, 2), pads=(1, 1, 1, 1), groups=groups):
        assert np.all(grad == 0)


@pytest.mark.parametrize("kh,C", [(3, 4), (5, 1), (1, 4)])
def test_empty_batch(rng, kh, C, isa):
    x = np.zeros((0, C, 8, 8), dtype=np.float32)
    w = rng.standard_normal((6, C, kh, kh), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    y = call_forward(x, w, b, pads=(1, 1, 1, 1))
    assert y.shape == (0, 6, 10 - kh + 1, 10 - kh + 1)
    dx, dw, db = call_backward(y, x, w, pads=(1, 1, 1, 1))
    assert dx.shape == x.shape
    assert dw.shape == w.shape and np.all(dw == 0)
    assert db.shape == (6,) and np.all(db == 0)


def test_outputs_are_fresh_arrays(rng):
    x, w, b = make_inputs(rng, 2, 3, 5, 5, 4, 1, 1, 1)
    y = call_forward(x, w, b)
    dx, dw, db = call_backward(y, x, w)
    for out in (y, dx, dw, db):
        for inp in (x, w, b):
            assert not np.shares_memory(out, inp)


# ---------------------------------------------------------------- bad input


def _good(rng):
    x, w, b = make_inputs(rng, 2, 4, 6, 6, 6, 3, 3, 2)
    return x, w, b


def test_wrong_ndim(rng):
    x, w, b = _good(rng)
    with pytest.raises(ValueError, match="`x` must have 4 dimensions"):
        call_forward(x[0], w, b, groups=2)
    with pytest.raises(ValueError, match="`w` must have 4 dimensions"):
        call_forward(x, w[0], b, groups=2)
    with pytest.raises(ValueError, match="`b` must have 1 dimensions"):
        call_forward(x, w, b[None], groups=2)
    with pytest.raises(ValueError, match="`dy` must have 4 dimensions"):
        call_backward(np.zeros((2, 6, 4), np.float32), x, w, groups=2)


def test_channel_mismatch(rng):
    x, w, b = _good(rng)
    with pytest.raises(ValueError, match=r"channel mismatch.*\(2, 4, 6, 6\).*\(6, 2, 3, 3\)"):
        call_forward(x, w, b, groups=1)
    with pytest.raises(ValueError, match="channel mismatch"):
        call_backward(np.zeros((2, 6, 4, 4), np.float32), x, w, groups=1)


def test_groups_not_dividing_output_channels(rng):
    x = rng.standard_normal((2, 4, 6, 6), dtype=np.float32)
    w = rng.standard_normal((5, 2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="not divisible by `groups`=2"):
        call_forward(x, w, None, groups=2)


@pytest.mark.parametrize("groups", [0, -1])
def test_non_positive_groups(rng, groups):
    x, w, b = _good(rng)
    with pytest.raises(ValueError, match="`groups` must be positive"):
        call_forward(x, w, b, groups=groups)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(stride=(0, 1)), "stride_h"),
        (dict(stride=(1, -2)), "stride_w"),
        (dict(dil=(0, 1)), "dil_h"),
        (dict(dil=(1, 0)), "dil_w"),
        (dict(pads=(-1, 0, 0, 0)), "pad_top"),
        (dict(pads=(0, 0, 0, -1)), "pad_right"),
    ],
)
def test_bad_geometry_names_argument(rng, kwargs, name):
    x, w, b = _good(rng)
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        call_forward(x, w, b, groups=2, **kwargs)


def test_wrong_dy_shape(rng):
    x, w, _ = _good(rng)
    with pytest.raises(ValueError, match=r"`dy` must have shape \(2, 6, 4, 4\), got \(2, 6, 4, 5\)"):
        call_backward(np.zeros((2, 6, 4, 5), np.float32), x, w, groups=2)


def test_kernel_larger_than_padded_input(rng):
    x = rng.standard_normal((1, 2, 4, 4), dtype=np.float32)
    w = rng.standard_normal((3, 2, 5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="kernel .*larger than the padded input"):
        call_forward(x, w, None)
    with pytest.raises(ValueError, match="larger than the padded input"):
        call_forward(x, w, None, dil=(1, 3))
    # Fits once padded.
    assert call_forward(x, w, None, pads=(1, 0, 0, 0)).shape == (1, 3, 1, 2)


def test_bias_wrong_shape(rng):
    x, w, _ = _good(rng)
    with pytest.raises(ValueError, match=r"`b` must have shape \(6,\), got \(5,\)"):
        call_forward(x, w, np.zeros(5, np.float32), groups=2)


def test_float64_and_int_inputs_are_rejected(rng):
    x, w, b = _good(rng)
    with pytest.raises(TypeError):
        call_forward(x.astype(np.float64), w, b, groups=2)
    with pytest.raises(TypeError):
        call_forward(x, w.astype(np.float64), b, groups=2)
    with pytest.raises(TypeError):
        call_forward(x, w, b.astype(np.float64), groups=2)
    with pytest.raises(TypeError):
        call_backward(np.zeros((2, 6, 4, 4), np.float64), x, w, groups=2)
    with pytest.raises(TypeError):
        call_forward(x.astype(np.int32), w, b, groups=2)
    with pytest.raises(TypeError):
        call_forward(np.asfortranarray(x), w, b, groups=2)


@pytest.mark.parametrize("C, K, k, avx2_dw", [(1, 32, 5, "kvec"), (3, 24, 5, "kvec"), (3, 33, 5, "gemm"),
                                              (4, 32, 5, "gemm"), (3, 32, 3, "gemm"), (1, 64, 5, "gemm")])
def test_dw_for_few_inputs_up_to_32_outputs_and_width_5_is_kvec_on_avx2_only(C, K, k, avx2_dw, isa):
    x = np.zeros((8, C, 16, 16), np.float32)
    w = np.zeros((K, C, k, k), np.float32)
    p = k // 2
    got = _core.conv2d_algorithms(x, w, 1, 1, p, p, p, p, 1, 1, 1)["dw"]
    assert got == (avx2_dw if isa == "avx2" else "gemm")


@pytest.mark.parametrize(
    "case, forward, dx, dw",
    [
        ((2, 3, 30, 30, 16, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1), "strided", "strided", "gemm"),  # 3 input channels
        ((2, 24, 16, 16, 40, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1), "strided", "strided", "direct"),
        ((2, 16, 8, 8, 32, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1), "strided", "strided", "direct"),
        ((3, 5, 12, 9, 7, 3, 3, (3, 2), (2, 1, 0, 3), (2, 3), 1), "strided", "gemm", "gemm"),  # dilated dx: not by phases
        ((2, 16, 8, 8, 32, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1), "gemm", "gemm", "gemm"),
        ((2, 4, 40, 40, 8, 3, 3, (17, 2), (0, 0, 0, 0), (1, 1), 1), "gemm", "gemm", "gemm"),  # every phase walked: capped
    ],
)
def test_algorithm_choice_for_strides(case, forward, dx, dw, isa):
    N, C, H, W, K, kh, kw, stride, pads, dil, groups = case
    x = np.zeros((N, C, H, W), np.float32)
    w = np.zeros((K, C // groups, kh, kw), np.float32)
    got = _core.conv2d_algorithms(x, w, *stride, *pads, *dil, groups)
    if isa == "generic":  # no direct kernels there: everything is im2col + GEMM
        assert got == {"forward": "gemm", "dx": "gemm", "dw": "gemm"}
    else:
        assert got == {"forward": forward, "dx": dx, "dw": dw}
