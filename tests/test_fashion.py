"""Tests for striate.datasets.load_fashion_mnist: the search path, the cache folder and downloads.

Debian's package is never needed: the tests build small IDX files in tmp_path
and point the search path (``fashion.DEBIAN_DIRS``) and the cache folder
(``STRIATE_CACHE_DIR``) at them; downloads come from a local http.server.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from local_http import serve

from striate.datasets import FASHION_MNIST_CLASSES, DownloadError, _download, fashion, load_fashion_mnist

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(arr: np.ndarray) -> bytes:
    head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


@pytest.fixture
def arrays(rng):
    return dict(zip(STEMS, (
        rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 7, dtype=np.uint8),
        rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 3, dtype=np.uint8),
    )))


def write_set(root: Path, arrays, stems=STEMS) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    sums = {}
    for stem in stems:
        data = gzip.compress(idx_bytes(arrays[stem]))
        (root / (stem + ".gz")).write_bytes(data)
        sums[stem + ".gz"] = "sha256:" + hashlib.sha256(data).hexdigest()
    return sums


def check_loaded(result, arrays):
    (x, y), (xt, yt) = result
    assert x.shape == (7, 1, 28, 28) and xt.shape == (3, 1, 28, 28)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0] * np.float32(255), arrays[STEMS[0]].astype(np.float32))
    np.testing.assert_array_equal(y, arrays[STEMS[1]])
    np.testing.assert_array_equal(yt, arrays[STEMS[3]])


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A fake Debian folder (empty at first) and an empty cache folder."""
    debian = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    cache = tmp_path / "cache"
    monkeypatch.setattr(fashion, "DEBIAN_DIRS", (debian,))
    monkeypatch.setenv("STRIATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return debian, cache / "fashion-mnist"


def test_debian_location_is_the_packages_folder():
    assert fashion.DEBIAN_DIRS == (Path("/usr/share/datasets/fashion-mnist"),)
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_loads_from_the_debian_folder_first(places, arrays, rng):
    debian, cache = places
    write_set(debian, arrays)
    other = {k: np.zeros_like(v) for k, v in arrays.items()}
    write_set(cache, other)
    check_loaded(load_fashion_mnist(), arrays)


def test_falls_back_to_the_cache(places, arrays):
    debian, cache = places
    write_set(debian, arrays, stems=STEMS[:3])  # an incomplete Debian folder is skipped
    write_set(cache, arrays)
    check_loaded(load_fashion_mnist(), arrays)


def test_not_found_lists_the_folders_searched(places):
    debian, cache = places
    with pytest.raises(FileNotFoundError, match=rf"not found in {debian}, {cache}; install Debian's"):
        load_fashion_mnist()


def test_explicit_root(tmp_path, places, arrays):
    write_set(tmp_path / "mine", arrays)
    check_loaded(load_fashion_mnist(tmp_path / "mine"), arrays)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST file train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "empty")
    with pytest.raises(TypeError, match="`root` must be None, a str or path-like"):
        load_fashion_mnist(3)


def test_download_into_the_cache(tmp_path, places, arrays):
    _, cache = places
    sums = write_set(tmp_path / "mirror", arrays)
    with serve(tmp_path / "mirror") as url:
        result = load_fashion_mnist(download=True, base_url=url, checksums=sums, progress=False)
    check_loaded(result, arrays)
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)
    check_loaded(load_fashion_mnist(), arrays)  # now found without the network


def test_download_url_from_environment(tmp_path, places, arrays, monkeypatch):
    sums = write_set(tmp_path / "mirror", arrays)
    with serve(tmp_path / "mirror") as url:
        monkeypatch.setenv("STRIATE_FASHION_MNIST_URL", url)
        check_loaded(load_fashion_mnist(tmp_path / "d", download=True, checksums=sums, progress=False), arrays)


def test_published_md5_checked_by_default(tmp_path, places, arrays):
    _, cache = places
    write_set(tmp_path / "mirror", arrays)
    with serve(tmp_path / "mirror") as url, pytest.raises(ValueError, match="md5 checksum mismatch, expected 8d4fb7e6"):
        load_fashion_mnist(download=True, base_url=url, progress=False)
    assert not any(cache.glob("*.part"))


def test_offline_download_says_where_to_put_files(tmp_path, places):
    _, cache = places
    with serve(tmp_path / "no_such_dir") as url, pytest.raises(DownloadError, match=rf"404.*in {cache}"):
        load_fashion_mnist(download=True, base_url=url, progress=False)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("STRIATE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _download.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("STRIATE_CACHE_DIR")
    assert _download.cache_dir() == tmp_path / "xdg" / "striate"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _download.cache_dir() == tmp_path / "home" / ".cache" / "striate"
