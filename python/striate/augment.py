"""Batch image augmentation on (N, C, H, W) float32 arrays, backed by C++/OpenMP kernels.

Deterministic transforms (``affine``, ``hflip``, ``grayscale``, ``crop``) take
per-sample parameters, so a whole batch is warped in one kernel call. The random
transforms (``RandomAffine``, ``RandomHorizontalFlip``, ``RandomCrop``,
``Grayscale``, ``Compose``) are called as ``aug(x_batch, rng) -> x_batch``; they
draw a single base seed from ``rng`` and give every sample its own
counter-based stream keyed by (seed, position in the Compose, sample index).
The output therefore does not depend on the thread count, and a batch processed
in pieces (``start=`` the index of the piece's first sample) equals the batch
processed at once.

Geometry follows torchvision: x is the column, y the row (downwards), the centre
is ((W-1)/2, (H-1)/2), rotation is counter-clockwise on screen (as
``torchvision.transforms.functional.rotate`` and ``np.rot90``; note that
torchvision's ``functional.affine`` documents its angle as clockwise), scaling
is about the centre, and the translation (dx, dy) is applied last.
Bilinear taps outside the image read ``fill``.

Not here: shear, perspective, colour jitter, nearest or bicubic interpolation,
non-constant padding modes, PIL images.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _config, _core

__all__ = [
    "Compose",
    "Grayscale",
    "RandomAffine",
    "RandomCrop",
    "RandomHorizontalFlip",
    "affine",
    "crop",
    "grayscale",
    "hflip",
]

_MASK64 = (1 << 64) - 1


# --- argument checks -----------------------------------------------------------------


def _check_x(x, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"`{name}` must be float32, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have 4 dimensions (N, C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x)  # explicit copy only for non-contiguous input


def _real(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}")
    return v


def _per_sample(v, n: int, name: str) -> np.ndarray:
    """A scalar or an array of length n, as a contiguous float64 (n,) array of finite values."""
    a = np.asarray(v)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"`{name}` must be a real number or an array of them, got {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    elif a.shape != (n,):
        raise ValueError(f"`{name}` must be a scalar or have shape ({n},) (one value per sample), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"`{name}` must be finite, got {a[~np.isfinite(a)][0]}")
    return np.ascontiguousarray(a)


def _per_sample_int(v, n: int, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype.kind not in "iu":
        raise TypeError(f"`{name}` must be an int or an integer array, got {a.dtype}")
    a = a.astype(np.int64)
    if a.ndim == 0:
        a = np.full(n, int(a), dtype=np.int64)
    elif a.shape != (n,):
        raise ValueError(f"`{name}` must be an int or have shape ({n},) (one value per sample), got {a.shape}")
    return np.ascontiguousarray(a)


def _pair(v, name: str, *, positive: bool = True) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    if not (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v)):
        raise TypeError(f"`{name}` must be an int or a pair of ints, got {v!r}")
    h, w = int(v[0]), int(v[1])
    if positive and (h < 1 or w < 1):
        raise ValueError(f"`{name}` must be positive, got {(h, w)}")
    return h, w


def _nonneg_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"`{name}` must be non-negative, got {v}")
    return int(v)


# --- deterministic transforms ----------------------------------------------------------


def affine(x, angle=0.0, translate=(0, 0), scale=1.0, fill=0.0) -> np.ndarray:
    """Rotate, scale and translate every image of a batch, with bilinear sampling.

    Parameters
    ----------
    x : ndarray of float32, shape (N, C, H, W)
    angle : float or array of shape (N,)
        Degrees, counter-clockwise on screen, about the centre ((W-1)/2, (H-1)/2).
    translate : (dx, dy) or array of shape (N, 2)
        Pixels, applied after the rotation: +dx moves content right, +dy down.
        dx and dy may each be a scalar or an array of shape (N,). Fractional
        shifts interpolate.
    scale : float or array of shape (N,)
        Zoom about the centre (> 0); 2 makes content twice as large.
    fill : float
        The value read for bilinear taps outside the image.

    Returns
    -------
    ndarray of float32, shape (N, C, H, W)
        A new array. Identity parameters return an exact copy; multiples of 90
        degrees on square images move pixels exactly (as ``np.rot90``).

    Raises
    ------
    TypeError
        ``x`` is not a float32 array.
    ValueError
        ``x`` is not 4-D, a parameter is NaN or infinite, ``scale`` <= 0, or a
        per-sample array has the wrong length. The message names the argument.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import augment
    >>> x = np.zeros((1, 1, 3, 3), np.float32); x[0, 0, 1, 2] = 1  # right of centre
    >>> augment.affine(x, angle=90)[0, 0]                           # now above it
    array([[0., 1., 0.],
           [0., 0., 0.],
           [0., 0., 0.]], dtype=float32)
    """
    x = _check_x(x)
    n = x.shape[0]
    ang = _per_sample(angle, n, "angle")
    if isinstance(translate, (tuple, list)) and len(translate) == 2:
        dx = _per_sample(translate[0], n, "translate")
        dy = _per_sample(translate[1], n, "translate")
    else:
        t = np.asarray(translate)
        if t.shape != (n, 2):
            raise ValueError(f"`translate` must be a pair (dx, dy) or have shape ({n}, 2), got {t.shape}")
        dx = _per_sample(t[:, 0], n, "translate")
        dy = _per_sample(t[:, 1], n, "translate")
    sc = _per_sample(scale, n, "scale")
    if (sc <= 0).any():
        raise ValueError(f"`scale` must be positive, got {sc[sc <= 0][0]}")
    return _core.augment_affine(x, ang, dx, dy, sc, _real(fill, "fill"))


def hflip(x) -> np.ndarray:
    """Mirror every image of an (N, C, H, W) float32 batch left-right; returns a new array."""
    return _core.augment_hflip(_check_x(x), None)


def grayscale(x, num_output_channels: int = 1) -> np.ndarray:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of an (N, 3, H, W) batch (a copy for 1 channel).

    Parameters
    ----------
    x : ndarray of float32, shape (N, 3, H, W) or (N, 1, H, W)
    num_output_channels : {1, 3}
        3 repeats the luma in three channels.

    Returns
    -------
    ndarray of float32, shape (N, num_output_channels, H, W)
    """
    x = _check_x(x)
    if num_output_channels not in (1, 3) or isinstance(num_output_channels, bool):
        raise ValueError(f"`num_output_channels` must be 1 or 3, got {num_output_channels!r}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"`x` must have 1 or 3 channels, got shape {x.shape}")
    return _core.augment_grayscale(x, int(num_output_channels))


def crop(x, top, left, size, padding=0, fill=0.0) -> np.ndarray:
    """Cut a ``size`` window from each image after padding it with ``fill``.

    Parameters
    ----------
    x : ndarray of float32, shape (N, C, H, W)
    top, left : int or int array of shape (N,)
        The window's corner in padded coordinates: ``0 <= top <= H + 2*padding - h``.
    size : int or (h, w)
    padding : int
        Pixels of ``fill`` added on every side first.
    fill : float

    Returns
    -------
    ndarray of float32, shape (N, C, h, w)
    """
    x = _check_x(x)
    n, _, hgt, wid = x.shape
    h, w = _pair(size, "size")
    padding = _nonneg_int(padding, "padding")
    if h > hgt + 2 * padding or w > wid + 2 * padding:
        raise ValueError(f"`size` {(h, w)} is larger than the padded image {(hgt + 2 * padding, wid + 2 * padding)}")
    t = _per_sample_int(top, n, "top")
    lft = _per_sample_int(left, n, "left")
    return _core.augment_crop(x, t, lft, h, w, padding, _real(fill, "fill"))


# --- random transforms ---------------------------------------------------------------


def _mix64(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _base_seed(rng) -> int:
    """One 64-bit seed from an int seed, a numpy Generator, or None (striate's global generator)."""
    if rng is None:
        rng = _config.rng()
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63, dtype=np.int64))
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"`rng` must be an int seed or a numpy.random.Generator, got {type(rng).__name__}")
    if not 0 <= int(rng) < 2**64:
        raise ValueError(f"`rng` seed must be in [0, 2**64), got {rng}")
    return int(rng)


def _key(seed: int, position: int) -> int:
    """The stream key of the transform at ``position`` in a Compose (0 for a bare transform)."""
    return _mix64(_mix64(seed) + 0x9E3779B97F4A7C15 * (position + 1))


def _uniforms(key: int, start: int, n: int, k: int) -> np.ndarray:
    """(n, k) uniforms in [0, 1): row i belongs to sample ``start + i``, whatever the batch split."""
    return _core.augment_uniform(key, start, n, k)


class _Transform:
    """Base of the random transforms: ``t(x, rng, start=0)``."""

    def __call__(self, x, rng=None, *, start: int = 0) -> np.ndarray:
        x = _check_x(x)
        start = _nonneg_int(start, "start")
        return self._apply(x, _key(_base_seed(rng), 0), start)

    def _apply(self, x: np.ndarray, key: int, start: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _range(v, name: str, *, symmetric_from_number: bool, lo_bound: float | None = None,
           strict: bool = False) -> tuple[float, float]:
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and symmetric_from_number:
        d = _real(v, name)
        if d < 0:
            raise ValueError(f"`{name}` must be non-negative when a single number, got {d}")
        return -d, d
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise TypeError(f"`{name}` must be a number or a (min, max) pair, got {v!r}")
    a, b = _real(v[0], name), _real(v[1], name)
    if a > b:
        raise ValueError(f"`{name}` must be (min, max) with min <= max, got {(a, b)}")
    if lo_bound is not None and (a < lo_bound or (strict and a <= lo_bound)):
        raise ValueError(f"`{name}` must be {'>' if strict else '>='} {lo_bound}, got {(a, b)}")
    return a, b


class RandomAffine(_Transform):
    """Random rotation, translation and scale, torchvision's ``RandomAffine`` without shear.

    Parameters
    ----------
    degrees : float or (min, max)
        A number d >= 0 means a uniform angle in [-d, d] degrees (counter-clockwise).
    translate : (a, b), optional
        Fractions in [0, 1]: dx uniform in [-a*W, a*W] and dy in [-b*H, b*H],
        rounded to whole pixels as torchvision does.
    scale : (min, max), optional
        A uniform zoom factor in [min, max], min > 0.
    fill : float
        Value for pixels that come from outside the image.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import augment
    >>> aug = augment.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    >>> aug(np.zeros((8, 1, 28, 28), np.float32), 0).shape
    (8, 1, 28, 28)
    """

    def __init__(self, degrees=0, translate=None, scale=None, fill=0.0):
        self.degrees = _range(degrees, "degrees", symmetric_from_number=True)
        if translate is not None:
            if not (isinstance(translate, (tuple, list)) and len(translate) == 2):
                raise TypeError(f"`translate` must be a pair of fractions (a, b), got {translate!r}")
            translate = (_real(translate[0], "translate"), _real(translate[1], "translate"))
            if not all(0.0 <= f <= 1.0 for f in translate):
                raise ValueError(f"`translate` fractions must be in [0, 1], got {translate}")
        self.translate = translate
        if scale is not None:
            scale = _range(scale, "scale", symmetric_from_number=False, lo_bound=0.0, strict=True)
        self.scale = scale
        self.fill = _real(fill, "fill")

    def __repr__(self):
        return f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, fill={self.fill})"

    def params(self, key: int, start: int, n: int, height: int, width: int):
        """The per-sample (angle, dx, dy, scale) arrays this transform would use."""
        u = _uniforms(key, start, n, 4)
        lo, hi = self.degrees
        angle = lo + (hi - lo) * u[:, 0]
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
            dx = np.rint((2.0 * u[:, 1] - 1.0) * max_dx)
            dy = np.rint((2.0 * u[:, 2] - 1.0) * max_dy)
        else:
            dx = dy = np.zeros(n)
        if self.scale is not None:
            scale = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 3]
        else:
            scale = np.ones(n)
        return angle, dx, dy, scale

    def _apply(self, x, key, start):
        angle, dx, dy, scale = self.params(key, start, x.shape[0], x.shape[2], x.shape[3])
        return _core.augment_affine(x, angle, dx, dy, scale, self.fill)


class RandomHorizontalFlip(_Transform):
    """Mirror each image left-right with probability ``p`` (in [0, 1])."""

    def __init__(self, p=0.5):
        p = _real(p, "p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"`p` must be in [0, 1], got {p}")
        self.p = p

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"

    def params(self, key: int, start: int, n: int) -> np.ndarray:
        """The per-sample flip flags (uint8, 1 = flip) this transform would use."""
        return (_uniforms(key, start, n, 1)[:, 0] < self.p).astype(np.uint8)

    def _apply(self, x, key, start):
        return _core.augment_hflip(x, self.params(key, start, x.shape[0]))


class RandomCrop(_Transform):
    """Pad each image by ``padding`` pixels of ``fill``, then cut a random ``size`` window.

    ``size`` is an int or (h, w) and must fit in the padded image (checked when
    called, as the image size is known only then).
    """

    def __init__(self, size, padding=0, fill=0.0):
        self.size = _pair(size, "size")
        self.padding = _nonneg_int(padding, "padding")
        self.fill = _real(fill, "fill")

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"

    def params(self, key: int, start: int, n: int, height: int, width: int):
        """The per-sample (top, left) corners, in padded coordinates, this transform would use."""
        h, w = self.size
        ph, pw = height + 2 * self.padding, width + 2 * self.padding
        if h > ph or w > pw:
            raise ValueError(f"`size` {(h, w)} is larger than the padded image {(ph, pw)}")
        u = _uniforms(key, start, n, 2)
        top = np.minimum(np.floor(u[:, 0] * (ph - h + 1)), ph - h).astype(np.int64)
        left = np.minimum(np.floor(u[:, 1] * (pw - w + 1)), pw - w).astype(np.int64)
        return top, left

    def _apply(self, x, key, start):
        top, left = self.params(key, start, x.shape[0], x.shape[2], x.shape[3])
        return _core.augment_crop(x, top, left, self.size[0], self.size[1], self.padding, self.fill)


class Grayscale(_Transform):
    """Convert to luma (0.299 R + 0.587 G + 0.114 B); deterministic, ``rng`` is ignored."""

    def __init__(self, num_output_channels=1):
        if isinstance(num_output_channels, bool) or num_output_channels not in (1, 3):
            raise ValueError(f"`num_output_channels` must be 1 or 3, got {num_output_channels!r}")
        self.num_output_channels = int(num_output_channels)

    def __repr__(self):
        return f"Grayscale(num_output_channels={self.num_output_channels})"

    def _apply(self, x, key, start):
        return grayscale(x, self.num_output_channels)


class Compose(_Transform):
    """Apply transforms in order; transform i draws from its own stream (seed, i, sample).

    Parameters
    ----------
    transforms : sequence
        Transforms from this module, or any callable ``f(x_batch, seed) -> x_batch``
        (it receives an int seed derived from the base seed and its position).

    Examples
    --------
    >>> import numpy as np
    >>> from striate import augment
    >>> aug = augment.Compose([augment.RandomCrop(28, padding=2), augment.RandomHorizontalFlip()])
    >>> x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    >>> np.array_equal(aug(x, 7), aug(x, 7))
    True
    """

    def __init__(self, transforms):
        if not isinstance(transforms, (list, tuple)):
            raise TypeError(f"`transforms` must be a list or tuple, got {type(transforms).__name__}")
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"`transforms[{i}]` must be callable, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __repr__(self):
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"

    def __call__(self, x, rng=None, *, start: int = 0) -> np.ndarray:
        x = _check_x(x)
        start = _nonneg_int(start, "start")
        return self._apply(x, _base_seed(rng), start)

    def _apply(self, x, seed, start):
        for i, t in enumerate(self.transforms):
            key = _key(seed, i)
            if isinstance(t, _Transform):
                x = t._apply(x, key, start)
            else:
                x = _check_x(t(x, key), f"transforms[{i}] output")
        return x
