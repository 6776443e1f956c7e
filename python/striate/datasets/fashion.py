"""Fashion-MNIST by name: Zalando's 28x28 grayscale clothing images, in MNIST's IDX format.

``load_fashion_mnist()`` without a folder looks where Debian's
``dataset-fashion-mnist`` package installs the four gzipped IDX files
(``/usr/share/datasets/fashion-mnist``), then in striate's cache folder
(``<cache>/fashion-mnist``, see ``_download.cache_dir``); ``download=True``
fetches whatever is missing into the cache, checked against the published MD5
digests. Parsing, validation and downloading are MNIST's (``mnist.py``).

Not here: the images as PNG, other Zalando data, or a copy of the files.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _download
from .mnist import IdxSource, find_files, load_idx_set

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Where Debian's dataset-fashion-mnist puts train-images-idx3-ubyte.gz and the three others.
DEBIAN_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
CACHE_SUBDIR = "fashion-mnist"

DEFAULT_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
BASE_URL_ENV = "STRIATE_FASHION_MNIST_URL"

# The digests published in Fashion-MNIST's README (Debian's package recompresses
# the files, so its .gz files differ; local files are parsed, not hashed).
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
}

FASHION_MNIST = IdxSource("Fashion-MNIST", DEFAULT_BASE_URL, BASE_URL_ENV, CHECKSUMS)


def default_dirs() -> list[Path]:
    """The folders searched when no ``root`` is given, in order: Debian's, then the cache."""
    return [*DEBIAN_DIRS, _download.cache_dir() / CACHE_SUBDIR]


def load_fashion_mnist(root=None, download: bool = False, *, base_url: str | None = None,
                       checksums: dict | None = None, progress: bool = True):
    """Load Fashion-MNIST: the same tuples as :func:`load_mnist`, labels as in ``FASHION_MNIST_CLASSES``.

    Parameters
    ----------
    root : str or path-like, optional
        Folder holding the four IDX files (raw or ``.gz``). Default: the first
        of Debian's ``/usr/share/datasets/fashion-mnist`` and striate's cache
        folder (``$STRIATE_CACHE_DIR``, ``$XDG_CACHE_HOME/striate`` or
        ``~/.cache/striate``, then ``fashion-mnist``) that holds all four.
    download : bool
        Fetch missing files (into ``root``, or the cache folder when no folder
        already holds them) and verify their published MD5 before use.
    base_url : str, optional
        Where to download from; default the ``STRIATE_FASHION_MNIST_URL``
        environment variable, else Zalando's mirror.
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
        The files are not found and ``download`` is False; the message lists
        the folders searched.
    ValueError
        A file is malformed or a download fails its checksum.
    striate.datasets.DownloadError
        ``download=True`` but the files could not be fetched.

    Examples
    --------
    >>> (x, y), (xt, yt) = load_fashion_mnist()   # doctest: +SKIP
    >>> x.shape, FASHION_MNIST_CLASSES[int(y[0])]  # doctest: +SKIP
    ((60000, 1, 28, 28), 'Ankle boot')
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be None, a str or path-like, got {type(root).__name__}")
        root = Path(os.path.expanduser(os.fspath(root)))
        return load_idx_set(root, FASHION_MNIST, download, base_url, checksums, progress)
    dirs = default_dirs()
    for d in dirs:
        if find_files(d) is not None:
            return load_idx_set(d, FASHION_MNIST, False, base_url, checksums, progress)
    cache = dirs[-1]
    if download:
        return load_idx_set(cache, FASHION_MNIST, True, base_url, checksums, progress)
    searched = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"Fashion-MNIST's four IDX files were not found in {searched}; install Debian's dataset-fashion-mnist "
        f"package, pass download=True to fetch them into {cache}, or pass root= the folder holding them"
    )
