"""The embedded handwritten digits: UCI "Optical Recognition of Handwritten Digits".

Reads ``striate/data/digits.csv.gz`` (1,797 images of 8×8 pixels, values 0..16,
the copy scikit-learn ships; source and licence in ``striate/data/README.md``),
scales it to [0, 1], upsamples it bilinearly to ``size × size`` in NumPy and
splits it 80/20, stratified by class, with a fixed seed, so every call returns
the same split.

Not here: downloading, caching to disk, augmentation, or any dependency beyond
NumPy (no scipy, no scikit-learn at run time).
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

__all__ = ["load_digits"]

_FILE = "digits.csv.gz"
_N_IMAGES = 1797
_SIDE = 8
_SPLIT_SEED = 20240601  # fixed: the split is part of the data set's definition
_TEST_FRACTION = 0.2

_cache: dict[str, np.ndarray] = {}


def _read_raw() -> tuple[np.ndarray, np.ndarray]:
    """The raw (1797, 64) pixel values 0..16 as uint8, and the int64 labels; validated."""
    if "x" not in _cache:
        blob = resources.files("striate").joinpath("data", _FILE).read_bytes()
        text = gzip.decompress(blob).decode("ascii")
        table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
        if table.shape != (_N_IMAGES, _SIDE * _SIDE + 1):
            raise ValueError(f"{_FILE}: expected {_N_IMAGES} rows of 65 values, got shape {table.shape}")
        pixels, labels = table[:, :-1], table[:, -1]
        if pixels.min() < 0 or pixels.max() > 16:
            raise ValueError(f"{_FILE}: pixel values must lie in 0..16")
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{_FILE}: labels must lie in 0..9")
        _cache["x"] = pixels.astype(np.uint8)
        _cache["y"] = labels.astype(np.int64)
    return _cache["x"], _cache["y"]


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D bilinear resampling.

    Uses half-pixel centres with edge clamping (``align_corners=False``), the
    convention of ``torch.nn.functional.interpolate(mode="bilinear")`` and
    OpenCV's ``INTER_LINEAR``. An image resizes as ``M @ img @ M.T``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices: per class, a seeded 20% goes to the test set."""
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * _TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(size: int = 32) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The embedded real handwritten digits, upsampled and split 80/20.

    Parameters
    ----------
    size : int, default 32
        Side of the returned images (``>= 1``). The 8×8 originals are resized
        with bilinear interpolation (half-pixel centres, as
        ``torch.nn.functional.interpolate(..., mode="bilinear")``); ``size=8``
        returns them unchanged, scaled to [0, 1].

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        Images as float32 of shape ``(N, 1, size, size)`` with values in [0, 1]
        and int64 labels 0..9. The split is stratified by class and fixed: 1,438
        training and 359 test images, the same on every call and machine.

    Examples
    --------
    >>> from striate.datasets import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape
    ((1438, 1, 32, 32), (359, 1, 32, 32))
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"`size` must be an int, got {type(size).__name__}")
    if size < 1 or size > 4096:
        raise ValueError(f"`size` must be in [1, 4096], got {size}")
    pixels, labels = _read_raw()
    images: np.ndarray = pixels.reshape(-1, _SIDE, _SIDE).astype(np.float64) / 16.0
    if size != _SIDE:
        m = bilinear_matrix(_SIDE, int(size))
        images = np.einsum("oh,nhw,pw->nop", m, images, m, optimize=True)
    images = np.clip(images, 0.0, 1.0).astype(np.float32)[:, None, :, :]
    train, test = _stratified_split(labels)
    return (
        (np.ascontiguousarray(images[train]), labels[train].copy()),
        (np.ascontiguousarray(images[test]), labels[test].copy()),
    )
