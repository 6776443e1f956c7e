"""MNIST from IDX files: a strict parser that refuses malformed or hostile files.

Reads the four IDX files (raw or ``.gz``, spelled ``train-images-idx3-ubyte``
or ``train-images.idx3-ubyte``), checks every header field before trusting it,
and never decompresses more than the header promises. Every violation raises
ValueError naming the file and the byte offset of the offending field.
``load_idx_set`` is the loader for any data set in this format; Fashion-MNIST
(``fashion.py``) uses it with its own mirror and digests.

Not here: other IDX element types than unsigned bytes, EMNIST's transposed
layout, or any caching of the decoded arrays.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .. import _files
from . import _download

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10
# Declared payloads above this are refused before reading (the real train set is 47 MB).
MAX_IDX_BYTES = 1 << 30

DEFAULT_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
BASE_URL_ENV = "STRIATE_MNIST_URL"

_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Published MD5 digests of the gzipped files (as distributed on the mirrors).
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}


def _spellings(stem: str) -> list[str]:
    # "train-images-idx3-ubyte" and "train-images.idx3-ubyte", each raw or gzipped.
    head, _, tail = stem.rpartition("-idx")
    names = [stem, f"{head}.idx{tail}"]
    return [n + suffix for n in names for suffix in ("", ".gz")]


def _find(root: Path, stem: str) -> Path | None:
    for name in _spellings(stem):
        p = root / name
        if p.is_file():
            return p
    return None


def _read_exact(f, n: int, name: str, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(
            f"{name}: truncated at byte offset {offset + len(data)} while reading {what} "
            f"({n} bytes expected from byte offset {offset})"
        )
    return data


def parse_idx(f, name: str, expected_magic: int, file_size: int | None = None) -> np.ndarray:
    """Parse one IDX stream of unsigned bytes; return a uint8 array of the declared shape.

    Parameters
    ----------
    f : binary file object
        Positioned at the start of the IDX data (raw or already wrapped in gzip).
    name : str
        The file name used in error messages.
    expected_magic : int
        2051 for images, 2049 for labels.
    file_size : int or None
        The exact size of a raw file; None for a compressed stream, which is then
        read only up to the declared size plus one byte.

    Raises
    ------
    ValueError
        On a bad magic number, zero or oversized dimensions, a size that does not
        equal ``4 + 4 * ndim + prod(dims)``, or a corrupt compressed stream. The
        message names the file and the byte offset.
    """
    try:
        magic = int.from_bytes(_read_exact(f, 4, name, 0, "the magic number"), "big")
        if magic != expected_magic:
            raise ValueError(
                f"{name}: bad magic number {magic} (0x{magic:08x}) at byte offset 0, expected {expected_magic}"
            )
        ndim = magic & 0xFF
        raw_dims = _read_exact(f, 4 * ndim, name, 4, f"{ndim} dimension sizes")
        dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
        for i, d in enumerate(dims[1:], start=1):
            if d == 0:
                raise ValueError(f"{name}: dimension {i} at byte offset {4 + 4 * i} is 0")
        header = 4 + 4 * ndim
        payload = 1
        for d in dims:
            payload *= d
        if payload > MAX_IDX_BYTES:
            raise ValueError(
                f"{name}: header at byte offset 4 declares dimensions {dims} ({payload} bytes), "
                f"more than the {MAX_IDX_BYTES}-byte limit"
            )
        expected_size = header + payload
        if file_size is not None and file_size != expected_size:
            where = (
                f"truncated at byte offset {file_size}"
                if file_size < expected_size
                else f"unexpected trailing data from byte offset {expected_size}"
            )
            raise ValueError(
                f"{name}: file is {file_size} bytes but the header (byte offset 4) declares dimensions {dims}, "
                f"i.e. 4 + 4*{ndim} + {payload} = {expected_size} bytes: {where}"
            )
        # Read at most one byte more than declared: a compressed stream can never
        # make us decompress more than the header promised.
        data = f.read(payload + 1)
        if len(data) < payload:
            raise ValueError(
                f"{name}: truncated at byte offset {header + len(data)}; the header (byte offset 4) "
                f"declares dimensions {dims}, i.e. {expected_size} bytes"
            )
        if len(data) > payload:
            raise ValueError(
                f"{name}: unexpected trailing data from byte offset {expected_size}; the header "
                f"(byte offset 4) declares dimensions {dims}"
            )
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a cut-off gzip stream is EOFError.
        pos = "unknown"
        try:
            pos = str(f.tell())
        except (OSError, ValueError):
            pass
        raise ValueError(f"{name}: corrupt or truncated compressed data near byte offset {pos}: {exc}") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) with :func:`parse_idx`."""
    path = Path(path)
    raw, size = _files.open_regular(path)  # a FIFO or a device is refused at once
    with raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return parse_idx(f, str(path), expected_magic)
        return parse_idx(raw, str(path), expected_magic, size)


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path) -> None:
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_path} declares {images.shape[0]} images but {lbl_path} declares {labels.shape[0]} labels "
            "(count field at byte offset 4 of each)"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{lbl_path}: label {int(labels[i])} at byte offset {8 + i} is out of range 0..{NUM_CLASSES - 1}"
        )


class IdxSource:
    """What differs between data sets in MNIST's format: the name, mirror and published digests."""

    def __init__(self, title: str, default_url: str, url_env: str, checksums: dict):
        self.title, self.default_url, self.url_env, self.checksums = title, default_url, url_env, checksums

    def where_hint(self, root: Path) -> str:
        names = ", ".join(self.checksums)
        return f"put {names} (or their uncompressed versions) in {root}"


MNIST = IdxSource("MNIST", DEFAULT_BASE_URL, BASE_URL_ENV, CHECKSUMS)


def find_files(root: Path) -> dict | None:
    """The paths of the four IDX files in ``root`` (any spelling), or None if one is missing."""
    paths = {}
    for key, stem in _STEMS.items():
        p = _find(root, stem)
        if p is None:
            return None
        paths[key] = p
    return paths


def fetch_missing(root: Path, source: IdxSource, base_url: str | None, checksums: dict | None,
                  progress: bool) -> None:
    """Download the gzipped files missing from ``root`` and check their digests."""
    url = _download.resolve_base_url(base_url, source.url_env, source.default_url)
    sums = dict(source.checksums)
    if checksums is not None:
        sums.update(checksums)
    for stem in _STEMS.values():
        if _find(root, stem) is not None:
            continue
        fname = stem + ".gz"
        _download.fetch(url + fname, root / fname, sums[fname], where_hint=source.where_hint(root),
                        progress=progress)


def load_idx_set(root: Path, source: IdxSource, download: bool, base_url: str | None, checksums: dict | None,
                 progress: bool):
    """The body of ``load_mnist`` for any data set in its format: fetch if asked, find, parse, check."""
    if download:
        fetch_missing(root, source, base_url, checksums, progress)
    paths = {}
    for key, stem in _STEMS.items():
        p = _find(root, stem)
        if p is None:
            raise FileNotFoundError(
                f"{source.title} file {stem} (raw or .gz, '-idx' or '.idx' spelling) not found in {root}; "
                "pass download=True or " + source.where_hint(root)
            )
        paths[key] = p
    out = []
    shape = None
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(ip, IMAGES_MAGIC)
        labels = read_idx(lp, LABELS_MAGIC)
        _check_pair(images, labels, ip, lp)
        if shape is not None and images.shape[1:] != shape:
            raise ValueError(
                f"{ip}: images are {images.shape[1]}x{images.shape[2]} (byte offset 8) but the training "
                f"images are {shape[0]}x{shape[1]}"
            )
        shape = images.shape[1:]
        x = images.reshape(images.shape[0], 1, images.shape[1], images.shape[2]).astype(np.float32)
        x /= np.float32(255.0)
        out.append((x, labels.astype(np.int64)))
    return out[0], out[1]


def load_mnist(root, download: bool = False, *, base_url: str | None = None, checksums: dict | None = None,
               progress: bool = True):
    """Load MNIST from the four IDX files in ``root``.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, raw or
        ``.gz``, with ``-idx`` or ``.idx`` spelling.
    download : bool
        Fetch missing files (gzipped) into ``root`` and verify their published
        MD5 before use.
    base_url : str, optional
        Where to download from; default the ``STRIATE_MNIST_URL`` environment
        variable, else ``https://ossci-datasets.s3.amazonaws.com/mnist/``.
    checksums : dict, optional
        ``{file name: "md5:<hex>" | "sha256:<hex>"}`` overriding the published
        digests (for private mirrors and tests).
    progress : bool
        Show a progress bar while downloading.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        float32 images of shape (N, 1, 28, 28) scaled to [0, 1], int64 labels.

    Raises
    ------
    FileNotFoundError
        A file is missing and ``download`` is False.
    ValueError
        A file is malformed; the message names the file and byte offset.
    striate.datasets.DownloadError
        ``download=True`` but the files could not be fetched; the message says
        where to put them by hand.

    Examples
    --------
    >>> (x, y), (xt, yt) = load_mnist("~/data/mnist")  # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype                      # doctest: +SKIP
    ((60000, 1, 28, 28), dtype('float32'), dtype('int64'))
    """
    root = Path(os.path.expanduser(os.fspath(root)))
    return load_idx_set(root, MNIST, download, base_url, checksums, progress)


__all__ = ["load_mnist", "parse_idx", "read_idx"]
