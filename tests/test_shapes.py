"""Tests for striate.datasets.shapes: shapes, classes, determinism and what each class draws."""

from __future__ import annotations

import numpy as np
import pytest

from striate.datasets import SHAPE_CLASSES, make_shapes
from striate.datasets.shapes import _CHUNK


def test_output_contract():
    x, y = make_shapes(57, size=24, seed=3)
    assert x.shape == (57, 1, 24, 24) and x.dtype == np.float32
    assert y.shape == (57,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(SHAPE_CLASSES) >= 8 and len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)
    assert set(y.tolist()) == set(range(len(SHAPE_CLASSES)))


def test_classes_balanced():
    y = make_shapes(1003, size=16)[1]
    counts = np.bincount(y, minlength=len(SHAPE_CLASSES))
    assert counts.max() - counts.min() <= 1


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = make_shapes(200, seed=7)
    b = make_shapes(200, seed=7)
    c = make_shapes(200, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_chunking_does_not_change_samples(monkeypatch):
    import striate.datasets.shapes as shapes

    x, y = make_shapes(50, seed=5)
    monkeypatch.setattr(shapes, "_CHUNK", 7)
    x2, y2 = make_shapes(50, seed=5)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(x, x2)


def test_empty():
    x, y = make_shapes(0)
    assert x.shape == (0, 1, 32, 32) and y.shape == (0,)


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        ({"n": -1}, ValueError, "`n` must be >= 0, got -1"),
        ({"n": 2.5}, TypeError, "`n` must be an int, got float"),
        ({"n": 4, "size": 4}, ValueError, "`size` must be >= 8, got 4"),
        ({"n": 4, "seed": -3}, ValueError, "`seed` must be >= 0, got -3"),
        ({"n": True}, TypeError, "`n` must be an int, got bool"),
    ],
)
def test_bad_arguments(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        make_shapes(**kw)


def _mean_image(cls, n=400, size=32):
    x, y = make_shapes(n, size=size, seed=11)
    return x[y == cls, 0].mean(axis=0), x[y == cls, 0]


def _ink(img):
    """Centre of mass and second moments of the ink (background removed)."""
    w = np.clip(img - np.median(img) - 0.2, 0, None)
    h, wd = img.shape
    yy, xx = np.mgrid[0:h, 0:wd]
    m = w.sum()
    cy, cx = (w * yy).sum() / m, (w * xx).sum() / m
    vxx = (w * (xx - cx) ** 2).sum() / m
    vyy = (w * (yy - cy) ** 2).sum() / m
    vxy = (w * (xx - cx) * (yy - cy)).sum() / m
    return vxx, vyy, vxy


def test_lines_have_the_named_orientation():
    x, y = make_shapes(200, seed=2)
    for cls, check in [
        (SHAPE_CLASSES.index("horizontal_line"), lambda v: v[0] > 5 * v[1]),
        (SHAPE_CLASSES.index("vertical_line"), lambda v: v[1] > 5 * v[0]),
        # y grows downwards: "/" has x and y anti-correlated, "\" correlated.
        (SHAPE_CLASSES.index("diagonal_up"), lambda v: v[2] < -0.6 * np.sqrt(v[0] * v[1])),
        (SHAPE_CLASSES.index("diagonal_down"), lambda v: v[2] > 0.6 * np.sqrt(v[0] * v[1])),
    ]:
        for img in x[y == cls, 0]:
            assert check(_ink(img)), (SHAPE_CLASSES[cls], _ink(img))


def test_circle_is_hollow_and_semicircle_open_below():
    x, y = make_shapes(300, size=32, seed=4)
    circle = SHAPE_CLASSES.index("circle")
    semi = SHAPE_CLASSES.index("semicircle")
    for img in x[y == circle, 0]:
        w = np.clip(img - np.median(img) - 0.2, 0, None)
        yy, xx = np.mgrid[0:32, 0:32]
        cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        assert w[int(round(cy)), int(round(cx))] == 0  # the centre of a ring is empty
    for img in x[y == semi, 0]:
        rows = (img > np.median(img) + 0.3).sum(axis=1)
        nz = np.flatnonzero(rows)
        t, b = nz[0], nz[-1]
        q = max(1, (b - t + 1) // 4)
        # The arc's crown (top quarter) carries more ink than its two feet (bottom quarter).
        assert rows[t:t + q].sum() > 1.2 * rows[b - q + 1:b + 1].sum()


def test_each_class_differs_from_the_others():
    x, y = make_shapes(2000, size=16, seed=0)
    means = np.stack([x[y == c, 0].mean(axis=0).ravel() for c in range(len(SHAPE_CLASSES))])
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.3


def test_random_position_scale_thickness_and_noise():
    x, y = make_shapes(400, seed=9)
    imgs = x[y == SHAPE_CLASSES.index("plus"), 0]
    ink = imgs > np.median(imgs, axis=(1, 2), keepdims=True) + 0.3
    areas = ink.sum(axis=(1, 2))
    assert areas.std() > 0.15 * areas.mean()  # scale and thickness vary
    centres = [np.argwhere(m).mean(axis=0) for m in ink]
    assert np.std(centres, axis=0).min() > 1.0  # position varies
    bg = np.array([np.std(img[~m]) for img, m in zip(imgs, ink)])
    assert bg.max() > 0.03 and bg.min() < bg.max() / 2  # noise level varies


def test_fast_enough_to_be_vectorised():
    # Not a timing assertion: 10k images must be drawn per class in bulk, i.e. the
    # number of _distance calls is per class and chunk, not per sample.
    import striate.datasets.shapes as shapes

    calls = []
    orig = shapes._distance

    def spy(cls, *a):
        calls.append(cls)
        return orig(cls, *a)

    shapes._distance = spy
    try:
        make_shapes(10_000, seed=1)
    finally:
        shapes._distance = orig
    top_level = len(SHAPE_CLASSES) * -(-10_000 // _CHUNK)
    assert len(calls) <= 3 * top_level
