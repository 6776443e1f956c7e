"""Tiny learnable data sets for tests that train a few steps (introspection, plots)."""

from __future__ import annotations

import numpy as np


def blobs(n=96, seed=0):
    """Three classes of 10x10 images: a bright square in one of three places, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.normal(0, 0.1, size=(n, 1, 10, 10)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 3 * c : 3 * c + 4, 3 * c : 3 * c + 4] += 1.0
    return x, y
