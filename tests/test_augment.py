"""Tests for striate.augment: geometry conventions, exactness, determinism and bad input.

The oracle for the affine warp is scipy.ndimage.affine_transform (order 1,
``grid-constant`` fill) on the same mapping; directions are pinned by hand and
against np.rot90 (counter-clockwise).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st_

import striate as st
from striate import _core
from striate import augment as A


def batch(rng, shape=(4, 3, 9, 11)):
    return rng.random(shape, dtype=np.float32)


def scipy_affine(x, angle, tx, ty, scale, fill=0.0):
    """Reference: the same inverse map, in (row, col) coordinates, per image and channel."""
    n, c, h, w = x.shape
    angle, tx, ty, scale = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (angle, tx, ty, scale))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = np.empty(x.shape, np.float64)
    for i in range(n):
        t = np.deg2rad(angle[i])
        co, si = np.cos(t) / scale[i], np.sin(t) / scale[i]
        m = np.array([[co, si], [-si, co]])  # (row, col) of the input from (row, col) of the output
        off = np.array([cy, cx]) - m @ np.array([cy + ty[i], cx + tx[i]])
        for ch in range(c):
            out[i, ch] = ndi.affine_transform(x[i, ch].astype(np.float64), m, off, order=1,
                                              mode="grid-constant", cval=fill)
    return out


# --- affine: conventions and exactness -------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (1, 1, 1, 1), (2, 3, 1, 8), (5, 1, 32, 32)])
def test_affine_identity_is_exact(rng, shape, isa):
    x = batch(rng, shape)
    y = A.affine(x)
    assert np.array_equal(y, x) and not np.shares_memory(x, y)


def test_rotation_direction_by_hand(isa):
    # An asymmetric pattern: a bright pixel right of the centre, a dim one below it.
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 4] = 1.0  # right
    x[0, 0, 4, 2] = 0.5  # below
    y = A.affine(x, angle=90)[0, 0]
    # Counter-clockwise on screen: right -> top, below -> right.
    assert y[0, 2] == 1.0 and y[2, 4] == 0.5 and y.sum() == 1.5
    y = A.affine(x, angle=-90)[0, 0]
    assert y[4, 2] == 1.0 and y[2, 0] == 0.5


@pytest.mark.parametrize("k", [1, 2, 3, -1, 4, 5])
def test_quarter_turns_match_rot90(rng, k, isa):
    x = batch(rng, (3, 2, 8, 8))
    np.testing.assert_array_equal(A.affine(x, angle=90.0 * k), np.rot90(x, k=k, axes=(2, 3)))


def test_half_turn_on_non_square(rng, isa):
    x = batch(rng, (2, 1, 6, 9))
    np.testing.assert_array_equal(A.affine(x, angle=180), x[:, :, ::-1, ::-1])


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 2), (-3, 1), (2, -2)])
def test_whole_pixel_translation_is_a_shift(rng, dx, dy, isa):
    x = batch(rng, (2, 3, 7, 9))
    fill = 0.25
    y = A.affine(x, translate=(dx, dy), fill=fill)
    want = np.full_like(x, fill)
    h, w = x.shape[2:]
    want[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    np.testing.assert_array_equal(y, want)


def test_half_pixel_translation_averages_neighbours(rng, isa):
    x = batch(rng, (1, 1, 4, 6))
    y = A.affine(x, translate=(0.5, 0))
    np.testing.assert_allclose(y[..., 1:], (x[..., 1:] + x[..., :-1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(y[..., 0], x[..., 0] / 2, rtol=1e-6)  # half of the tap is fill=0


@pytest.mark.parametrize(
    "angle, translate, scale, fill",
    [(30.0, (1.5, -2.25), 1.2, 0.0), (-73.0, (0, 0), 0.7, 0.5), (200.0, (3, 4), 1.0, -1.0), (12.5, (0.3, 0.7), 2.0, 0.0)],
)
def test_affine_matches_scipy(rng, angle, translate, scale, fill, isa):
    x = batch(rng, (3, 2, 17, 23))
    y = A.affine(x, angle, translate, scale, fill)
    ref = scipy_affine(x, angle, *translate, scale, fill)
    np.testing.assert_allclose(y, ref, atol=1e-6, rtol=1e-6)


def test_affine_per_sample_parameters_match_one_by_one(rng, isa):
    x = batch(rng, (5, 3, 12, 10))
    angle = rng.uniform(-180, 180, 5)
    tr = rng.uniform(-3, 3, (5, 2))
    scale = rng.uniform(0.5, 1.5, 5)
    y = A.affine(x, angle, tr, scale, fill=0.1)
    y2 = A.affine(x, angle, (tr[:, 0], tr[:, 1]), scale, fill=0.1)
    np.testing.assert_array_equal(y, y2)
    for i in range(5):
        yi = A.affine(x[i:i + 1], angle[i], tuple(tr[i]), scale[i], fill=0.1)
        np.testing.assert_array_equal(y[i:i + 1], yi)
    np.testing.assert_allclose(y, scipy_affine(x, angle, tr[:, 0], tr[:, 1], scale, 0.1), atol=1e-6)


def test_affine_far_outside_is_fill(rng, isa):
    x = batch(rng, (2, 1, 5, 5))
    assert (A.affine(x, translate=(100, 0), fill=0.75) == 0.75).all()
    assert (A.affine(x, scale=1e-12, fill=0.75)[:, :, 2, 2] == x[:, :, 2, 2]).all()  # the centre stays
    assert (A.affine(x, scale=1e-300, fill=0.75)[:, :, 0, 0] == 0.75).all()


def test_affine_non_contiguous_input(rng, isa):
    base = batch(rng, (4, 3, 10, 12))
    x = base[:, :, :, ::2]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(A.affine(x, 17.0), A.affine(np.ascontiguousarray(x), 17.0))


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    assert A.affine(x, 10).shape == x.shape
    assert A.Compose([A.RandomAffine(10), A.RandomCrop(6, padding=1)])(x, 0).shape == (0, 3, 6, 6)


# --- flip, grayscale, crop -------------------------------------------------------------


def test_hflip(rng, isa):
    x = batch(rng)
    y = A.hflip(x)
    np.testing.assert_array_equal(y, x[..., ::-1])
    np.testing.assert_array_equal(A.hflip(y), x)


def test_grayscale_weights(rng, isa):
    x = batch(rng, (3, 3, 5, 4))
    y = A.grayscale(x)
    assert y.shape == (3, 1, 5, 4)
    want = 0.299 * x[:, 0:1].astype(np.float64) + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    one = np.zeros((1, 3, 1, 3), np.float32)
    one[0, :, 0, :] = np.eye(3)
    np.testing.assert_allclose(A.grayscale(one)[0, 0, 0], [0.299, 0.587, 0.114], rtol=1e-6)
    y3 = A.grayscale(x, num_output_channels=3)
    assert y3.shape == (3, 3, 5, 4) and all(np.array_equal(y3[:, i], y[:, 0]) for i in range(3))
    g = batch(rng, (2, 1, 5, 4))
    np.testing.assert_array_equal(A.grayscale(g), g)
    np.testing.assert_array_equal(A.Grayscale(3)(g, 0), np.repeat(g, 3, axis=1))


@pytest.mark.parametrize("size, padding", [((5, 7), 0), (4, 2), ((11, 13), 1), ((1, 1), 3)])
def test_crop_matches_pad_and_slice(rng, size, padding, isa):
    x = batch(rng, (4, 2, 9, 11))
    h, w = (size, size) if isinstance(size, int) else size
    top = rng.integers(0, 9 + 2 * padding - h + 1, 4)
    left = rng.integers(0, 11 + 2 * padding - w + 1, 4)
    y = A.crop(x, top, left, size, padding, fill=-2.0)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-2.0)
    for i in range(4):
        np.testing.assert_array_equal(y[i], xp[i, :, top[i]:top[i] + h, left[i]:left[i] + w])


def test_crop_full_size_is_identity(rng):
    x = batch(rng)
    np.testing.assert_array_equal(A.crop(x, 0, 0, (9, 11)), x)
    np.testing.assert_array_equal(A.crop(x, 2, 2, (9, 11), padding=2), x)


# --- random transforms -------------------------------------------------------------------


def pipeline():
    return A.Compose([
        A.RandomAffine(degrees=20, translate=(0.2, 0.1), scale=(0.8, 1.2), fill=0.1),
        A.RandomHorizontalFlip(0.5),
        A.RandomCrop((8, 10), padding=2),
    ])


def test_same_seed_same_output_different_seed_different(rng):
    x = batch(rng, (16, 3, 12, 12))
    aug = pipeline()
    a, b, c = aug(x, 5), aug(x, 5), aug(x, 6)
    assert a.shape == (16, 3, 8, 10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generator_draws_one_base_seed(rng):
    x = batch(rng, (6, 1, 10, 10))
    aug = pipeline()
    g1, g2 = np.random.default_rng(99), np.random.default_rng(99)
    np.testing.assert_array_equal(aug(x, g1), aug(x, g2))
    # The generator advanced by exactly one draw, so the next call differs from the first.
    seed = int(np.random.default_rng(99).integers(0, 2**63, dtype=np.int64))
    np.testing.assert_array_equal(aug(x, np.random.default_rng(99)), aug(x, seed))
    assert not np.array_equal(aug(x, g1), aug(x, seed))


def test_none_uses_striate_global_generator(rng):
    x = batch(rng, (4, 1, 10, 10))
    st.seed(3)
    a = pipeline()(x, None)
    st.seed(3)
    np.testing.assert_array_equal(pipeline()(x), a)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bit_identical_across_thread_counts(rng, threads, isa):
    x = batch(rng, (33, 3, 16, 16))
    aug = pipeline()
    st.set_num_threads(1)
    want = aug(x, 2024)
    st.set_num_threads(threads)
    np.testing.assert_array_equal(aug(x, 2024), want)
    np.testing.assert_array_equal(A.affine(x, np.linspace(-40, 40, 33), (1.5, -0.5), 1.1),
                                  _serial(lambda: A.affine(x, np.linspace(-40, 40, 33), (1.5, -0.5), 1.1)))


def _serial(fn):
    n = st.get_num_threads()
    st.set_num_threads(1)
    try:
        return fn()
    finally:
        st.set_num_threads(n)


@pytest.mark.parametrize("split", [1, 7, 16, 32])
def test_independent_of_batch_split(rng, split, isa):
    x = batch(rng, (33, 1, 12, 12))
    aug = pipeline()
    whole = aug(x, 11)
    parts = [aug(x[i:i + split], 11, start=i) for i in range(0, 33, split)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_sample_output_depends_only_on_its_own_stream(rng):
    x = batch(rng, (10, 1, 12, 12))
    aug = pipeline()
    y = aug(x, 4)
    x2 = x.copy()
    x2[3] = 0  # changing another sample leaves sample 5 alone
    np.testing.assert_array_equal(aug(x2, 4)[5], y[5])


def test_compose_of_one_equals_the_transform(rng):
    x = batch(rng, (8, 1, 10, 10))
    t = A.RandomAffine(30, scale=(0.5, 2))
    np.testing.assert_array_equal(A.Compose([t])(x, 8), t(x, 8))


def test_positions_in_compose_have_independent_streams(rng):
    x = batch(rng, (64, 1, 6, 6))
    twice = A.Compose([A.RandomHorizontalFlip(0.5), A.RandomHorizontalFlip(0.5)])(x, 1)
    flipped = np.array([not np.array_equal(twice[i], x[i]) for i in range(64)])
    assert 10 < flipped.sum() < 54  # same stream would give no flip at all


def test_compose_accepts_plain_callables_and_nesting(rng):
    x = batch(rng, (4, 1, 8, 8))
    seen = []

    def plus_one(xb, seed):
        seen.append(seed)
        return xb + np.float32(1)

    out = A.Compose([plus_one, A.Compose([A.RandomHorizontalFlip(1.0)])])(x, 0)
    np.testing.assert_array_equal(out, x[..., ::-1] + 1)
    assert isinstance(seen[0], int)


def test_random_affine_parameter_ranges():
    t = A.RandomAffine(degrees=(-5, 25), translate=(0.25, 0.5), scale=(0.5, 0.75))
    angle, dx, dy, scale = t.params(A._key(7, 0), 0, 4000, 16, 8)
    assert -5 <= angle.min() < 0 and 20 < angle.max() <= 25
    assert np.array_equal(dx, np.round(dx)) and np.abs(dx).max() == 2 and set(np.unique(dx)) == {-2, -1, 0, 1, 2}
    assert np.abs(dy).max() == 8
    assert 0.5 <= scale.min() < 0.51 and 0.74 < scale.max() <= 0.75
    assert abs(angle.mean() - 10) < 0.5


def test_random_affine_zero_is_identity(rng):
    x = batch(rng)
    np.testing.assert_array_equal(A.RandomAffine()(x, 3), x)


def test_random_affine_applies_its_params(rng):
    x = batch(rng, (6, 2, 10, 12))
    t = A.RandomAffine(45, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=0.2)
    angle, dx, dy, scale = t.params(A._key(5, 0), 0, 6, 10, 12)
    np.testing.assert_array_equal(t(x, 5), A.affine(x, angle, (dx, dy), scale, fill=0.2))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_random_flip_probability(rng, p):
    x = batch(rng, (2000, 1, 2, 3))
    y = A.RandomHorizontalFlip(p)(x, 9)
    flipped = (y != x).any(axis=(1, 2, 3))
    assert np.array_equal(y[flipped], x[flipped][..., ::-1]) and np.array_equal(y[~flipped], x[~flipped])
    assert abs(flipped.mean() - p) < 0.04


def test_random_crop_covers_all_offsets(rng):
    x = batch(rng, (500, 1, 6, 6))
    t = A.RandomCrop(4, padding=1)
    top, left = t.params(A._key(1, 0), 0, 500, 6, 6)
    assert set(top.tolist()) == set(range(5)) and set(left.tolist()) == set(range(5))
    y = t(x, 1)
    np.testing.assert_array_equal(y, A.crop(x, top, left, 4, 1))


def test_uniform_stream_properties():
    u = _core.augment_uniform(123, 0, 1000, 4)
    assert u.shape == (1000, 4) and u.dtype == np.float64
    assert (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.02 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1
    np.testing.assert_array_equal(_core.augment_uniform(123, 400, 10, 4), u[400:410])
    assert not np.array_equal(_core.augment_uniform(124, 0, 1000, 4), u)


def test_kernels_release_the_gil_and_are_thread_safe(rng):
    x = batch(rng, (32, 3, 16, 16))
    aug = pipeline()
    want = {s: aug(x, s) for s in range(8)}
    got = {}

    def work(s):
        for _ in range(5):
            got[s] = aug(x, s)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(8):
        np.testing.assert_array_equal(got[s], want[s])


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda x: A.affine(x[0]), ValueError, r"`x` must have 4 dimensions"),
        (lambda x: A.affine(x.astype(np.float64)), TypeError, "`x` must be float32, got float64"),
        (lambda x: A.affine(x.tolist()), TypeError, "`x` must be a numpy array"),
        (lambda x: A.affine(x, angle=np.nan), ValueError, "`angle` must be finite, got nan"),
        (lambda x: A.affine(x, angle=[0, 1]), ValueError, r"`angle` must be a scalar or have shape \(4,\)"),
        (lambda x: A.affine(x, translate=(np.inf, 0)), ValueError, "`translate` must be finite"),
        (lambda x: A.affine(x, translate=np.zeros((4, 3))), ValueError, r"`translate` must be a pair"),
        (lambda x: A.affine(x, scale=0.0), ValueError, "`scale` must be positive, got 0.0"),
        (lambda x: A.affine(x, scale=np.nan), ValueError, "`scale` must be finite"),
        (lambda x: A.affine(x, fill=np.nan), ValueError, "`fill` must be finite"),
        (lambda x: A.affine(x, angle="10"), TypeError, "`angle` must be a real number"),
        (lambda x: A.hflip(x[0]), ValueError, r"`x` must have 4 dimensions"),
        (lambda x: A.grayscale(x[:, :2]), ValueError, "`x` must have 1 or 3 channels"),
        (lambda x: A.grayscale(x, 2), ValueError, "`num_output_channels` must be 1 or 3, got 2"),
        (lambda x: A.crop(x, 0, 0, 20, padding=2), ValueError, r"`size` \(20, 20\) is larger than the padded image \(13, 15\)"),
        (lambda x: A.crop(x, 5, 0, 5), ValueError, r"`top` must be in \[0, 4\], got 5"),
        (lambda x: A.crop(x, 0, -1, 5), ValueError, r"`left` must be in \[0, 6\], got -1"),
        (lambda x: A.crop(x, 0, 0, 5, padding=-1), ValueError, "`padding` must be non-negative, got -1"),
        (lambda x: A.crop(x, 0, 0, 0), ValueError, r"`size` must be positive"),
        (lambda x: A.crop(x, 0.5, 0, 5), TypeError, "`top` must be an int"),
        (lambda x: A.RandomCrop(12, padding=1)(x, 0), ValueError, r"`size` \(12, 12\) is larger than the padded image \(11, 13\)"),
        (lambda x: A.RandomAffine(10)(x, -1), ValueError, r"`rng` seed must be in \[0, 2\*\*64\), got -1"),
        (lambda x: A.RandomAffine(10)(x, 1.5), TypeError, "`rng` must be an int seed or a numpy.random.Generator"),
        (lambda x: A.RandomAffine(10)(x, 0, start=-2), ValueError, "`start` must be non-negative, got -2"),
        (lambda x: A.Compose([A.RandomAffine(10)])(x[0], 0), ValueError, r"`x` must have 4 dimensions"),
        (lambda x: A.Compose([lambda xb, s: xb[0]])(x, 0), ValueError, r"`transforms\[0\] output` must have 4"),
    ],
)
def test_bad_calls(rng, call, exc, msg):
    x = batch(rng, (4, 3, 9, 11))
    with pytest.raises(exc, match=msg):
        call(x)


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: A.RandomAffine(-5), ValueError, "`degrees` must be non-negative when a single number, got -5"),
        (lambda: A.RandomAffine(np.nan), ValueError, "`degrees` must be finite, got nan"),
        (lambda: A.RandomAffine((10, 5)), ValueError, r"`degrees` must be \(min, max\) with min <= max"),
        (lambda: A.RandomAffine((1, 2, 3)), TypeError, "`degrees` must be a number or a"),
        (lambda: A.RandomAffine(5, translate=(0.1, 1.5)), ValueError, r"`translate` fractions must be in \[0, 1\]"),
        (lambda: A.RandomAffine(5, translate=(np.nan, 0.1)), ValueError, "`translate` must be finite"),
        (lambda: A.RandomAffine(5, scale=(0.0, 1.0)), ValueError, "`scale` must be > 0.0"),
        (lambda: A.RandomAffine(5, scale=(1.2, 0.8)), ValueError, r"`scale` must be \(min, max\)"),
        (lambda: A.RandomAffine(5, fill=np.inf), ValueError, "`fill` must be finite"),
        (lambda: A.RandomHorizontalFlip(1.5), ValueError, r"`p` must be in \[0, 1\], got 1.5"),
        (lambda: A.RandomHorizontalFlip(-0.1), ValueError, r"`p` must be in \[0, 1\], got -0.1"),
        (lambda: A.RandomHorizontalFlip(np.nan), ValueError, "`p` must be finite, got nan"),
        (lambda: A.RandomHorizontalFlip(True), TypeError, "`p` must be a real number"),
        (lambda: A.RandomCrop(0), ValueError, r"`size` must be positive"),
        (lambda: A.RandomCrop((3, 4, 5)), TypeError, "`size` must be an int or a pair of ints"),
        (lambda: A.RandomCrop(4, padding=-1), ValueError, "`padding` must be non-negative, got -1"),
        (lambda: A.Grayscale(2), ValueError, "`num_output_channels` must be 1 or 3, got 2"),
        (lambda: A.Compose(A.Grayscale()), TypeError, "`transforms` must be a list or tuple"),
        (lambda: A.Compose([A.Grayscale(), 3]), TypeError, r"`transforms\[1\]` must be callable"),
    ],
)
def test_bad_construction(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda x, d: _core.augment_affine(x, d, d, d, d[:2], 0.0), r"`scale` must have shape \(4,\)"),
        (lambda x, d: _core.augment_affine(x, d * np.nan, d, d, d, 0.0), "`angle` must be finite"),
        (lambda x, d: _core.augment_affine(x, d, d, d, d * 0, 0.0), "`scale` must be positive"),
        (lambda x, d: _core.augment_affine(x[0], d, d, d, d, 0.0), "`x` must have 4 dimensions"),
        (lambda x, d: _core.augment_hflip(x, np.ones(3, np.uint8)), r"`flags` must have shape \(4,\)"),
        (lambda x, d: _core.augment_hflip(x, np.ones(4, np.int64)), "`flags` must be a uint8 array"),
        (lambda x, d: _core.augment_crop(x, np.full(4, 99), np.zeros(4, np.int64), 3, 3, 0, 0.0), "`top` must be in"),
        (lambda x, d: _core.augment_crop(x, np.zeros(4, np.int64), np.zeros(4, np.int64), 3, 3, -1, 0.0),
         "`padding` must be in"),
        (lambda x, d: _core.augment_crop(x, np.zeros(4, np.int64), np.zeros(4, np.int64), 30, 3, 0, 0.0),
         "is larger than the padded image"),
        (lambda x, d: _core.augment_grayscale(x, 2), "`num_output_channels` must be 1 or 3"),
        (lambda x, d: _core.augment_uniform(1, -1, 2, 2), "must be non-negative"),
    ],
)
def test_core_checks_protect_memory(rng, call, msg):
    # Direct calls into the extension, bypassing the Python checks, still raise cleanly.
    x = batch(rng, (4, 3, 9, 11))
    with pytest.raises(ValueError, match=msg):
        call(x, np.ones(4))


def test_core_refuses_float64_without_converting(rng):
    x = batch(rng).astype(np.float64)
    with pytest.raises(TypeError):
        _core.augment_hflip(x)


@settings(max_examples=40, deadline=None)
@given(
    n=st_.integers(1, 3), c=st_.integers(1, 3), h=st_.integers(1, 12), w=st_.integers(1, 12),
    angle=st_.floats(-720, 720), dx=st_.floats(-15, 15), dy=st_.floats(-15, 15),
    scale=st_.floats(0.05, 20), fill=st_.floats(-2, 2), seed=st_.integers(0, 2**32 - 1),
)
def test_affine_matches_scipy_hypothesis(n, c, h, w, angle, dx, dy, scale, fill, seed):
    x = np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)
    y = A.affine(x, angle, (dx, dy), scale, fill)
    np.testing.assert_allclose(y, scipy_affine(x, angle, dx, dy, scale, fill), atol=2e-5, rtol=1e-5)


def test_read_only_input(rng):
    x = batch(rng)
    x.flags.writeable = False
    np.testing.assert_array_equal(A.affine(x), x)
    assert pipeline()(x, 1).shape == (4, 3, 8, 10)
