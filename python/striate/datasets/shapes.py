"""A procedural dataset of simple strokes and outlines, drawn with distance fields.

``make_shapes`` draws the patterns that early convolutional filters respond
to (lines at four orientations, circle, semicircle, square, triangle, plus and
diagonal cross) at random position, scale and stroke thickness, with random
contrast and Gaussian noise. Everything is vectorised numpy: each class is
rendered for all of its samples at once from a distance field, so 10 000
images of 32x32 take a fraction of a second. The output depends only on
``(n, size, seed)``.

Not here: colour, textures, several shapes per image, or a train/test split.
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = (
    "horizontal_line",
    "vertical_line",
    "diagonal_up",      # "/"
    "diagonal_down",    # "\"
    "circle",
    "semicircle",       # upper half, open at the bottom
    "square",
    "triangle",         # pointing up
    "plus",             # "+"
    "x_cross",          # "x"
)

_CHUNK = 4096  # samples rendered at once: bounds the temporaries to a few MB per class


def _seg_dist(px, py, ax, ay, bx, by):
    """Distance from grid points (1, S, S) to segments with endpoints (m, 1, 1): (m, S, S)."""
    dx, dy = bx - ax, by - ay
    len2 = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0)
    ex = px - ax - t * dx
    ey = py - ay - t * dy
    return np.sqrt(ex * ex + ey * ey)


def _distance(cls: int, px, py, cx, cy, r):
    """Distance field of shape class ``cls`` centred at (cx, cy) with half-extent r; all (m, 1, 1)."""
    if cls == 0:
        return _seg_dist(px, py, cx - r, cy, cx + r, cy)
    if cls == 1:
        return _seg_dist(px, py, cx, cy - r, cx, cy + r)
    if cls == 2:
        return _seg_dist(px, py, cx - r, cy + r, cx + r, cy - r)
    if cls == 3:
        return _seg_dist(px, py, cx - r, cy - r, cx + r, cy + r)
    if cls in (4, 5):
        ux, uy = px - cx, py - cy
        ring = np.abs(np.sqrt(ux * ux + uy * uy) - r)
        if cls == 4:
            return ring
        # The upper half of the ring (y grows downwards); below the diameter,
        # the distance to the nearer end point of the arc.
        ends = np.sqrt(np.minimum((ux - r) ** 2, (ux + r) ** 2) + uy * uy)
        return np.where(uy <= 0, ring, ends)
    if cls == 6:
        h = r * np.float32(0.8)
        qx, qy = np.abs(px - cx) - h, np.abs(py - cy) - h
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        inside = np.minimum(np.maximum(qx, qy), 0)
        return np.abs(outside + inside)
    if cls == 7:
        # Equilateral triangle inscribed in the circle of radius r, apex up.
        c30, s30 = np.float32(np.sqrt(3) / 2), np.float32(0.5)
        x0, y0 = cx, cy - r
        x1, y1 = cx - r * c30, cy + r * s30
        x2, y2 = cx + r * c30, cy + r * s30
        d = _seg_dist(px, py, x0, y0, x1, y1)
        d = np.minimum(d, _seg_dist(px, py, x1, y1, x2, y2))
        return np.minimum(d, _seg_dist(px, py, x2, y2, x0, y0))
    if cls == 8:
        return np.minimum(_distance(0, px, py, cx, cy, r), _distance(1, px, py, cx, cy, r))
    if cls == 9:
        return np.minimum(_distance(2, px, py, cx, cy, r), _distance(3, px, py, cx, cy, r))
    raise AssertionError(cls)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` grey images of simple shapes, one of ``len(SHAPE_CLASSES)`` classes each.

    Parameters
    ----------
    n : int
        Number of images (>= 0). Classes are balanced: each appears
        ``n // 10`` or ``n // 10 + 1`` times, in random order.
    size : int
        Image height and width in pixels (>= 8).
    seed : int
        Seed (>= 0); the output is a pure function of ``(n, size, seed)``.

    Returns
    -------
    x : ndarray of float32, shape (n, 1, size, size)
        Anti-aliased strokes of random position, scale, thickness and
        contrast on a noisy background, clipped to [0, 1].
    y : ndarray of int64, shape (n,)
        Class indices into :data:`SHAPE_CLASSES`.

    Examples
    --------
    >>> x, y = make_shapes(100, size=32, seed=1)
    >>> x.shape, x.dtype, y.dtype
    ((100, 1, 32, 32), dtype('float32'), dtype('int64'))
    >>> SHAPE_CLASSES[y[0]] in SHAPE_CLASSES
    True
    """
    for name, v, lo in (("n", n, 0), ("size", size, 8), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"`{name}` must be >= {lo}, got {v}")
    n, size = int(n), int(size)
    k = len(SHAPE_CLASSES)
    rng = np.random.default_rng(int(seed))
    y = rng.permutation(np.arange(n, dtype=np.int64) % k)
    s = np.float32(size)
    # Per-sample parameters, drawn once for all samples so that they do not depend on chunking.
    r = rng.uniform(0.2, 0.36, n).astype(np.float32) * s                 # half-extent
    margin = np.maximum(s / 2 - r - 1.0, 0.0)
    cx = (s - 1) / 2 + rng.uniform(-1, 1, n).astype(np.float32) * margin
    cy = (s - 1) / 2 + rng.uniform(-1, 1, n).astype(np.float32) * margin
    width = rng.uniform(1.0, max(1.5, size / 10), n).astype(np.float32)   # stroke thickness, pixels
    fg = rng.uniform(0.6, 1.0, n).astype(np.float32)                      # stroke intensity
    bg = rng.uniform(0.0, 0.2, n).astype(np.float32)                      # background level
    sigma = rng.uniform(0.0, 0.08, n).astype(np.float32)                  # noise level
    # Noise first, for all samples at once, so that the chunking below cannot change it.
    x = rng.standard_normal((n, 1, size, size), dtype=np.float32)
    x *= sigma[:, None, None, None]

    grid = np.arange(size, dtype=np.float32)
    px = grid[None, None, :]
    py = grid[None, :, None]
    col = (slice(None), None, None)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        yc = y[start:stop]
        out = x[start:stop, 0]
        for c in range(k):
            idx = np.flatnonzero(yc == c)
            if idx.size == 0:
                continue
            j = idx + start
            d = _distance(c, px, py, cx[j][col], cy[j][col], r[j][col])
            # Anti-aliased stroke: full inside width/2, linear fall-off over one pixel.
            cover = np.clip(width[j][col] / 2 + 0.5 - d, 0.0, 1.0)
            out[idx] += bg[j][col] + (fg[j] - bg[j])[col] * cover
        np.clip(out, 0.0, 1.0, out=out)
    return x, y


__all__ = ["SHAPE_CLASSES", "make_shapes"]
