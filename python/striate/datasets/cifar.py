"""CIFAR-10 from its binary or Python distribution, without ever running code from a file.

The binary version (``cifar-10-batches-bin``) is preferred: fixed records of
1 label byte + 3072 pixel bytes. The Python version (``cifar-10-batches-py``)
is pickled; it is read only through :class:`RestrictedUnpickler`, whose
``find_class`` hands out exactly the numpy array-rebuild functions,
``numpy.ndarray``, ``numpy.dtype`` and a latin-1-only ``_codecs.encode``. Any
other global in the stream is refused before it is looked up, so no payload
runs. ``download=True`` fetches the binary archive, checks its published MD5
and extracts it with the ``"data"`` tar filter.

Not here: CIFAR-100, label names (``batches.meta``), or any caching.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
from pathlib import Path

import numpy as np

from .. import _files
from . import _download

RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10
MAX_FILE_BYTES = 1 << 30

DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
BASE_URL_ENV = "STRIATE_CIFAR10_URL"
ARCHIVE = "cifar-10-binary.tar.gz"
# Published MD5 digests of the two distributions.
CHECKSUMS = {
    "cifar-10-binary.tar.gz": "md5:c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a",
}

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]


def _reconstruct_fn():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles store bytes as _codecs.encode(<str>, "latin1"); nothing else is needed.
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode call with encoding {encoding!r}")
    return codecs.encode(obj, "latin1")


def _checked_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refused object dtype {dt}")
    return dt


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that can rebuild plain numpy arrays and nothing else.

    ``find_class`` allows exactly ``numpy.core.multiarray._reconstruct`` /
    ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``
    (without object fields) and ``_codecs.encode`` (latin-1 only). Any other
    global, and any persistent id, raises ``pickle.UnpicklingError`` without
    being imported.

    It is the pure-Python unpickler so that BUILD can be checked: numpy's
    ``__setstate__`` trusts its argument (a dtype state of the wrong shape
    crashes the interpreter), so a dtype's state must equal the one the dtype
    already has (nothing is set), and an array's state must be
    ``(1, shape, dtype, fortran_order, bytes)`` with exactly the bytes the shape
    needs.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if type(state) is not tuple or state != inst.__reduce__()[2]:
                raise pickle.UnpicklingError(f"refused dtype state {state!r:.80}")
            self.stack.pop()
            return
        if not isinstance(inst, np.ndarray):
            raise pickle.UnpicklingError(f"refused BUILD on a {type(inst).__name__}")
        _check_array_state(state)
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_fn(),
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_fn(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refused global {module}.{name}: not a numpy array component") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def _check_array_state(state) -> None:
    ok = type(state) is tuple and len(state) == 5
    if ok:
        version, shape, dtype, fortran, data = state
        ok = (version == 1 and type(shape) is tuple and all(type(d) is int and d >= 0 for d in shape)
              and isinstance(dtype, np.dtype) and not dtype.hasobject and type(fortran) is bool
              and type(data) is bytes and len(data) == math.prod(shape) * dtype.itemsize)
    if not ok:
        raise pickle.UnpicklingError(f"refused array state {state!r:.80}")


def _check_labels(labels: np.ndarray, name: str, offsets=None) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        where = f" at byte offset {offsets(i)}" if offsets else f" (record {i})"
        raise ValueError(f"{name}: label {int(labels[i])}{where} is out of range 0..{NUM_CLASSES - 1}")


def parse_cifar_bin(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary CIFAR-10 batch: records of 1 label byte + 3072 pixel bytes.

    Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``. Raises
    ValueError naming the file and byte offset when the size is not a positive
    multiple of 3073 or a label is >= 10.
    """
    n, rem = divmod(len(data), RECORD_BYTES)
    if rem or n == 0:
        raise ValueError(
            f"{name}: size {len(data)} is not a positive multiple of the {RECORD_BYTES}-byte record; "
            f"the last record is incomplete from byte offset {n * RECORD_BYTES}"
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    _check_labels(labels, name, lambda i: i * RECORD_BYTES)
    return rec[:, 1:].reshape(n, 3, 32, 32), labels


def _field(d: dict, key: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise ValueError(f"missing key {key!r}")


def parse_cifar_pickle(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one Python-version CIFAR-10 batch through :class:`RestrictedUnpickler`.

    The batch is a dict (keys bytes or str) with ``data``, a uint8 array of
    shape (N, 3072), and ``labels``, N ints in 0..9. Returns
    ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``. Anything else, including
    a stream that names a forbidden global, raises ValueError naming the file.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # every malformed or hostile stream ends here, unexecuted
        raise ValueError(f"{name}: refused or unreadable pickle: {type(exc).__name__}: {exc}") from None
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a dict, got {type(obj).__name__}")
        images = _field(obj, "data")
        labels = _field(obj, "labels")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
                or images.shape[1] != 3 * 32 * 32 or images.shape[0] == 0:
            desc = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) \
                else type(images).__name__
            raise ValueError(f"'data' must be a non-empty uint8 array of shape (N, 3072), got {desc}")
        if isinstance(labels, np.ndarray):
            if labels.ndim != 1 or labels.dtype.kind not in "iu":
                raise ValueError(f"'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
            lab = labels.astype(np.int64)
        elif isinstance(labels, list) and all(type(v) is int for v in labels):
            if any(v < 0 or v >= NUM_CLASSES for v in labels):
                bad = next(v for v in labels if v < 0 or v >= NUM_CLASSES)
                raise ValueError(f"label {bad} at index {labels.index(bad)} is out of range 0..{NUM_CLASSES - 1}")
            lab = np.array(labels, dtype=np.int64)
        else:
            raise ValueError("'labels' must be a list of ints or an integer array")
        if lab.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {lab.shape[0]} labels")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    _check_labels(lab, name)
    return images.reshape(-1, 3, 32, 32), lab


def _read_capped(path: Path) -> bytes:
    return _files.read_bounded(path, MAX_FILE_BYTES)  # regular files only, at most the size checked


def _locate(root: Path) -> tuple[Path, str] | None:
    # Binary first (no pickle involved); the folder itself or its named subfolder.
    for sub, first, kind in ((BIN_DIR, "data_batch_1.bin", "bin"), (PY_DIR, "data_batch_1", "py")):
        if (root / sub).is_dir():
            return root / sub, kind
        if root.is_dir() and (root.name == sub or (root / first).is_file()):
            return root, kind
    return None


def _fetch_missing(root: Path, base_url: str | None, checksums: dict | None, progress: bool) -> None:
    parent = root.parent if root.name in (BIN_DIR, PY_DIR) else root
    sums = dict(CHECKSUMS)
    if checksums is not None:
        sums.update(checksums)
    archive = parent / ARCHIVE
    hint = f"put {ARCHIVE} (or the extracted folder {BIN_DIR}) in {parent}"
    if archive.is_file():
        _download.verify(archive, sums[ARCHIVE])
    else:
        url = _download.resolve_base_url(base_url, BASE_URL_ENV, DEFAULT_BASE_URL)
        _download.fetch(url + ARCHIVE, archive, sums[ARCHIVE], where_hint=hint, progress=progress)
    _download.extract_tar(archive, parent)


def _load_split(folder: Path, kind: str, stems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for stem in stems:
        path = folder / (stem + ".bin" if kind == "bin" else stem)
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 file {path} not found; pass download=True or restore {folder}")
        data = _read_capped(path)
        x, y = parse_cifar_bin(data, str(path)) if kind == "bin" else parse_cifar_pickle(data, str(path))
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).astype(np.float32)
    x /= np.float32(255.0)
    return x, np.concatenate(ys)


def load_cifar10(root, download: bool = False, *, base_url: str | None = None, checksums: dict | None = None,
                 progress: bool = True):
    """Load CIFAR-10 from its binary or Python distribution.

    Parameters
    ----------
    root : str or path-like
        ``cifar-10-batches-bin`` or ``cifar-10-batches-py`` itself, or the folder
        holding one of them. The binary version is preferred when both exist.
    download : bool
        When no batches are found, fetch ``cifar-10-binary.tar.gz`` into
        ``root`` (its parent if ``root`` names a batches folder), check its MD5
        and extract it with the ``"data"`` tar filter.
    base_url : str, optional
        Where to download from; default the ``STRIATE_CIFAR10_URL`` environment
        variable, else ``https://www.cs.toronto.edu/~kriz/``.
    checksums : dict, optional
        ``{file name: "md5:<hex>" | "sha256:<hex>"}`` overriding the published digests.
    progress : bool
        Show a progress bar while downloading.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        float32 images of shape (N, 3, 32, 32) scaled to [0, 1], int64 labels.

    Raises
    ------
    FileNotFoundError
        No batches found and ``download`` is False.
    ValueError
        A malformed batch (the message names the file and the byte offset), a
        pickle that refers to anything but numpy array components (refused
        without running it), a checksum mismatch or a hostile archive.
    striate.datasets.DownloadError
        The archive could not be fetched; the message says where to put it.

    Examples
    --------
    >>> (x, y), (xt, yt) = load_cifar10("~/data")  # doctest: +SKIP
    >>> x.shape                                    # doctest: +SKIP
    (50000, 3, 32, 32)
    """
    root = Path(os.path.expanduser(os.fspath(root)))
    found = _locate(root)
    if found is None and download:
        _fetch_missing(root, base_url, checksums, progress)
        found = _locate(root.parent if root.name in (BIN_DIR, PY_DIR) else root)
    if found is None:
        raise FileNotFoundError(
            f"no CIFAR-10 batches in {root} (expected {BIN_DIR}/ or {PY_DIR}/); pass download=True or "
            f"put {ARCHIVE} extracted ({BIN_DIR}/) there"
        )
    folder, kind = found
    return _load_split(folder, kind, _TRAIN), _load_split(folder, kind, _TEST)


__all__ = ["RestrictedUnpickler", "load_cifar10", "parse_cifar_bin", "parse_cifar_pickle"]
