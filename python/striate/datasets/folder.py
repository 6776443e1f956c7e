"""``ImageFolder``: a user's own images in torchvision's layout, ``root/<class>/<image>``.

The class names are the sub-folders of ``root``, sorted by name; every PNG,
JPEG, BMP or GIF below a class folder (sub-folders included, hidden names
skipped, other extensions ignored) is one sample of that class. Images are
decoded through Pillow (the ``[images]`` extra) only when asked for: ``ds[i]``
decodes one, ``ds.load()`` all of them into one array. Pillow is told to try
only those four formats and its decompression-bomb limit stays on; any file it
cannot decode raises ValueError naming the file. Resizing to ``image_size``
enlarges an image at most ``max_upscale`` times (4 by default) along each
side; a smaller image, and one a single pixel tall or wide that would be
stretched, raises ValueError naming the file, its size and how to allow it.

Not here: other formats (TIFF, WebP, ...), EXIF orientation, caching of decoded
images, augmentation (see ``striate.augment``) or batching (see ``DataLoader``).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from .. import _files

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the test environment
        raise ImportError(
            "reading image files needs Pillow: pip install 'striate[images]' (or pip install Pillow)"
        ) from exc
    return Image


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise TypeError(f"`image_size` must be None, an int or a (height, width) pair, got {image_size!r}")
    out = []
    for v in image_size:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"`image_size` must hold ints, got {image_size!r}")
        if v < 1:
            raise ValueError(f"`image_size` must be positive, got {tuple(image_size)}")
        out.append(int(v))
    return tuple(out)


def _check_max_upscale(max_upscale) -> float:
    if isinstance(max_upscale, (bool, np.bool_)) or not isinstance(max_upscale, numbers.Real):
        raise TypeError(
            f"`max_upscale` must be a number >= 1 (math.inf for no limit), got {type(max_upscale).__name__} "
            f"{max_upscale!r}"
        )
    value = float(max_upscale)
    if not value >= 1.0:  # NaN fails too
        raise ValueError(
            f"`max_upscale` must be >= 1 (1 refuses any enlargement, math.inf allows any), got {max_upscale!r}"
        )
    return value


class _Refused(ValueError):
    """An image that decodes but that ``image_size`` and ``max_upscale`` refuse; passed on as it is."""


def _refusal(path, hw, image_size, max_upscale):
    """Why an image of ``hw`` (H, W) cannot be resized to ``image_size``, or None when it can."""
    h, w = hw
    if h < 1 or w < 1:
        return f"{path} is {h}x{w} (H x W): an image without pixels"
    if image_size is None:
        return None
    th, tw = image_size
    thin = [what for what, have, want in (("tall", h, th), ("wide", w, tw)) if have == 1 and want > 1]
    if thin:
        return (
            f"{path} is only 1 pixel {' and '.join(thin)} ({h}x{w}, H x W): it cannot be stretched to "
            f"image_size {th}x{tw}; crop or remove it"
        )
    need = max(th / h, tw / w)
    if need > max_upscale:  # a ratio, not h * max_upscale < th, which rounds the other way at 55 * 4.6
        allow = math.ceil(need * 100) / 100
        if allow < need:  # need * 100 rounded down to a whole number
            allow += 0.01
        allow_text = f"{allow:.2f}".rstrip("0").rstrip(".")
        return (
            f"{path} is {h}x{w} (H x W), too small for image_size {th}x{tw}: it would be enlarged "
            f"{need:.4g} times, more than max_upscale={max_upscale:g}; pass max_upscale={allow_text} "
            "or more to allow it"
        )
    return None


def decode_image(path, channels: int = 3, image_size=None, *, max_upscale=4.0) -> np.ndarray:
    """Decode one image file to a ``(channels, H, W)`` float32 array in [0, 1].

    Parameters
    ----------
    path : str or path-like
        A PNG, JPEG, BMP or GIF file (the first frame of an animation).
    channels : {1, 3}
        1 converts to grayscale (ITU-R 601 luma), 3 to RGB; alpha is dropped.
    image_size : (int, int), optional
        ``(H, W)`` to resize to, with bilinear filtering.
    max_upscale : float, default 4.0
        The most an image may be enlarged along either side to reach
        ``image_size`` (``math.inf``: no limit); shrinking is not limited.

    Raises
    ------
    ValueError
        The file cannot be read or decoded (corrupt, truncated, not an image,
        another format, or over Pillow's decompression-bomb limit), or it is
        too small for ``image_size`` (a side below ``image_size / max_upscale``,
        or a single pixel that would be stretched); the message names the file.
    """
    Image = _pillow()
    path = os.fspath(path)
    max_upscale = _check_max_upscale(max_upscale)
    try:
        f, _ = _files.open_regular(path)
        with f, Image.open(f, formats=list(_PILLOW_FORMATS)) as img:
            why = _refusal(path, (img.size[1], img.size[0]), image_size, max_upscale)
            if why is not None:  # from the header, before decoding the pixels
                raise _Refused(why)
            img.load()
            if img.mode in _HIGH_DEPTH_MODES:  # 16-bit grayscale PNG
                img, scale = img.convert("F"), 65535.0
            else:
                if img.mode == "P":  # through RGBA, so palette transparency needs no warning
                    img = img.convert("RGBA")
                img, scale = img.convert("L" if channels == 1 else "RGB"), 255.0
            if image_size is not None and img.size != (image_size[1], image_size[0]):
                img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.float32)
    except (MemoryError, _Refused):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ValueError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from exc
    a = a / np.float32(scale)
    if scale != 255.0:
        np.clip(a, 0.0, 1.0, out=a)
    if a.ndim == 2:
        a = a[None]
        if channels == 3:
            a = np.repeat(a, 3, axis=0)
    else:
        a = np.ascontiguousarray(a.transpose(2, 0, 1))
    return a


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _scan(root: Path):
    """(classes, samples) of an image folder, or ValueError naming what is wrong."""
    if not root.exists():
        raise FileNotFoundError(f"`root` {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"`root` {root} is not a folder; expected root/<class name>/<image>")
    with os.scandir(root) as it:
        entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    if not classes:
        loose = any(e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
        hint = " (the images lie directly in it; put them in one sub-folder per class)" if loose else ""
        raise ValueError(f"`root` {root} has no class folders{hint}; expected root/<class name>/<image>")
    samples, empty = [], []
    for k, name in enumerate(classes):
        found: list = []
        for dirpath, dirnames, filenames in sorted(os.walk(root / name)):
            dirnames[:] = [d for d in dirnames if _visible(d)]
            found.extend(
                (os.path.join(dirpath, f), k)
                for f in sorted(filenames)
                if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)
            )
        if not found:
            empty.append(str(root / name))
        samples.extend(found)
    if empty:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"class folder(s) with no images ({exts}): {', '.join(empty)}")
    return classes, samples


class ImageFolder:
    """Images in ``root/<class name>/<image>``, decoded on demand.

    Parameters
    ----------
    root : str or path-like
        The folder holding one sub-folder per class. Classes are sorted by
        folder name; hidden files and folders and files with extensions other
        than .png, .jpg, .jpeg, .bmp and .gif are ignored.
    image_size : (int, int) or int, optional
        ``(H, W)`` every image is resized to, with bilinear filtering (an int
        means a square). Default: keep each image's size; ``load()`` then needs
        all of them to be the same.
    channels : {3, 1}
        3 converts every image to RGB, 1 to grayscale.
    max_upscale : float, default 4.0
        With ``image_size``, the most an image may be enlarged along either
        side: an image whose height is below ``image_size[0] / max_upscale``
        or whose width is below ``image_size[1] / max_upscale`` is refused
        when it is decoded, and so is one a single pixel tall or wide that
        would be stretched. 28x28 digits for a 32x32 input (1.14 times) pass;
        ``math.inf`` lifts the limit (but not the single-pixel rule), 1.0
        refuses any enlargement. Shrinking is never limited.

    Attributes
    ----------
    classes : list of str
        The class names, index ``k`` being label ``k``.
    class_to_idx : dict
        ``{class name: label}``.
    samples : list of (str, int)
        ``(file path, label)`` of every image, in the data set's order.
    targets : numpy.ndarray
        The int64 labels, in the same order.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist.
    TypeError
        ``root``, ``image_size``, ``channels`` or ``max_upscale`` is of the
        wrong type.
    ValueError
        ``root`` is not a folder, has no class folders, or a class folder has
        no images; ``channels``, ``image_size`` or ``max_upscale`` is out of
        range; when an image is read (``ds[i]``, ``get_batch``, ``load``): the
        file cannot be decoded, or it is too small for ``image_size`` (the
        message names the file, its size and the ``max_upscale`` that would
        allow it).

    Examples
    --------
    >>> ds = ImageFolder("~/photos", image_size=(32, 32))   # doctest: +SKIP
    >>> ds.classes, len(ds)                                 # doctest: +SKIP
    (['cat', 'dog'], 200)
    >>> x, y = ds.load()                                    # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype                           # doctest: +SKIP
    ((200, 3, 32, 32), dtype('float32'), dtype('int64'))
    """

    def __init__(self, root, image_size=None, channels=3, *, max_upscale=4.0):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a str or path-like, got {type(root).__name__}")
        if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):
            raise TypeError(f"`channels` must be 1 or 3, got {type(channels).__name__}")
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3, got {channels}")
        self.image_size = _check_image_size(image_size)
        self.max_upscale = _check_max_upscale(max_upscale)
        self.channels = int(channels)
        self.root = Path(os.path.expanduser(os.fspath(root)))
        _pillow()  # fail now, not at the first image, when Pillow is missing
        self.classes, self.samples = _scan(self.root)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.targets = np.array([k for _, k in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self):
        return (f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes, "
                f"image_size={self.image_size}, channels={self.channels}, max_upscale={self.max_upscale:g})")

    def __getitem__(self, i):
        """``(x, y)``: image ``i`` as ``(C, H, W)`` float32 in [0, 1], and its int label."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -n <= int(i) < n:
            raise IndexError(f"index {int(i)} is out of range for {n} images")
        path, label = self.samples[int(i)]
        return self._decode(path), int(label)

    def _decode(self, path) -> np.ndarray:
        return decode_image(path, self.channels, self.image_size, max_upscale=self.max_upscale)

    def _fill(self, indices) -> tuple[np.ndarray, np.ndarray]:
        x = None
        first = None
        for j, i in enumerate(indices):
            path = self.samples[i][0]
            a = self._decode(path)
            if x is None:
                x = np.empty((len(indices),) + a.shape, dtype=np.float32)
                first = path
            elif a.shape != x.shape[1:]:
                raise ValueError(
                    f"{path} is {a.shape[1]}x{a.shape[2]} but {first} is {x.shape[2]}x{x.shape[3]}; "
                    "pass image_size=(H, W) to resize every image to one size"
                )
            x[j] = a
        return x, self.targets[np.asarray(indices, dtype=np.int64)]  # type: ignore[return-value]

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Decode the images at ``indices`` into ``(x (B, C, H, W) float32, y int64)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"`indices` must be a non-empty 1-D array, got shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"`indices` must lie in [0, {len(self)})")
        return self._fill(idx.tolist())

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode every image: ``(x (N, C, H, W) float32 in [0, 1], y (N,) int64)``.

        Raises
        ------
        ValueError
            An image cannot be decoded, is too small for ``image_size`` (see
            ``max_upscale``), or (without ``image_size``) two images differ in
            size; the message names the file.
        """
        return self._fill(range(len(self)))
