"""Tests for striate.datasets.mnist (and the download helpers it shares with CIFAR-10).

Every file is generated here in the real IDX format; nothing is fetched from
the internet (downloads are served from a local http.server on 127.0.0.1).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket

import numpy as np
import pytest
from local_http import serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from striate.datasets import DownloadError, load_mnist
from striate.datasets import _download
from striate.datasets.mnist import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def make_set(rng, n_train=12, n_test=5, size=28):
    xtr = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    ytr = rng.integers(0, 10, n_train, dtype=np.uint8)
    xte = rng.integers(0, 256, (n_test, size, size), dtype=np.uint8)
    yte = rng.integers(0, 10, n_test, dtype=np.uint8)
    return dict(zip(STEMS, (xtr, ytr, xte, yte)))


def write_set(root, arrays, gz=False, dotted=False, override=None):
    root.mkdir(parents=True, exist_ok=True)
    override = override or {}
    paths = {}
    for stem, arr in arrays.items():
        data = override.get(stem, idx_bytes(arr))
        name = stem.replace("-idx", ".idx") if dotted else stem
        if gz:
            name += ".gz"
            data = gzip.compress(data)
        (root / name).write_bytes(data)
        paths[stem] = root / name
    return paths


@pytest.fixture
def arrays(rng):
    return make_set(rng)


def check_loaded(result, arrays):
    (x, y), (xt, yt) = result
    assert x.shape == (12, 1, 28, 28) and xt.shape == (5, 1, 28, 28)
    assert x.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], arrays[STEMS[0]].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, arrays[STEMS[1]])
    np.testing.assert_array_equal(xt[:, 0] * 255, arrays[STEMS[2]].astype(np.float32))
    np.testing.assert_array_equal(yt, arrays[STEMS[3]])
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_loads_raw_and_gz_both_spellings(tmp_path, arrays, gz, dotted):
    write_set(tmp_path, arrays, gz=gz, dotted=dotted)
    check_loaded(load_mnist(tmp_path), arrays)


def test_root_may_be_str(tmp_path, arrays):
    write_set(tmp_path, arrays)
    check_loaded(load_mnist(str(tmp_path)), arrays)


def test_missing_file(tmp_path, arrays):
    paths = write_set(tmp_path, arrays)
    paths[STEMS[3]].unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*download=True"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path, arrays, gz):
    bad = idx_bytes(arrays[STEMS[0]], magic=2050)
    write_set(tmp_path, arrays, gz=gz, override={STEMS[0]: bad})
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*bad magic number 2050 .*byte offset 0.*2051"):
        load_mnist(tmp_path)


def test_labels_file_with_image_magic(tmp_path, arrays):
    bad = idx_bytes(arrays[STEMS[1]].reshape(12, 1, 1))
    write_set(tmp_path, arrays, override={STEMS[1]: bad})
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: bad magic number 2051.*byte offset 0"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, arrays, gz):
    full = idx_bytes(arrays[STEMS[2]])
    write_set(tmp_path, arrays, gz=gz, override={STEMS[2]: full[:-100]})
    expected = len(full) - 100
    with pytest.raises(ValueError, match=rf"t10k-images-idx3-ubyte.*truncated at byte offset {expected}"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("cut", [0, 3, 7, 14])
def test_truncated_header(tmp_path, arrays, cut):
    full = idx_bytes(arrays[STEMS[0]])
    write_set(tmp_path, arrays, override={STEMS[0]: full[:cut]})
    with pytest.raises(ValueError, match=rf"train-images-idx3-ubyte: truncated at byte offset {cut}"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_data(tmp_path, arrays, gz):
    full = idx_bytes(arrays[STEMS[1]])
    write_set(tmp_path, arrays, gz=gz, override={STEMS[1]: full + b"\x00"})
    with pytest.raises(ValueError, match=rf"train-labels-idx1-ubyte.*trailing data from byte offset {len(full)}"):
        load_mnist(tmp_path)


def test_decompression_bomb_is_cut_at_declared_size(tmp_path, arrays, monkeypatch):
    # The header promises one 28x28 image; the stream inflates to 32 MB of zeros.
    head = idx_bytes(np.zeros((1, 28, 28), np.uint8))
    bomb = gzip.compress(head + bytes(32 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    path = tmp_path / "bomb.gz"
    path.write_bytes(bomb)
    reads = []
    orig = gzip.GzipFile.read

    def spy(self, size=-1):
        reads.append(size)
        return orig(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", spy)
    from striate.datasets.mnist import read_idx

    with pytest.raises(ValueError, match=r"bomb.gz: unexpected trailing data from byte offset 800"):
        read_idx(path, IMAGES_MAGIC)
    assert all(0 <= s <= 28 * 28 + 1 for s in reads), reads  # never "read everything"


def test_oversized_header_refused_before_reading(tmp_path):
    data = IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (60000, 60000, 60000))
    with pytest.raises(ValueError, match=r"x: header at byte offset 4 declares dimensions \(60000, 60000, 60000\)"):
        parse_idx(io.BytesIO(data), "x", IMAGES_MAGIC)


def test_zero_dimension(tmp_path, arrays):
    bad = IMAGES_MAGIC.to_bytes(4, "big") + (12).to_bytes(4, "big") + (0).to_bytes(4, "big") + (28).to_bytes(4, "big")
    write_set(tmp_path, arrays, override={STEMS[0]: bad})
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: dimension 1 at byte offset 8 is 0"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path, arrays):
    arrays[STEMS[3]] = arrays[STEMS[3]][:4]
    write_set(tmp_path, arrays)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte declares 5 images but .*t10k-labels-idx1-ubyte "
                                         r"declares 4 labels.*byte offset 4"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path, arrays):
    arrays[STEMS[1]][7] = 10
    write_set(tmp_path, arrays)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 10 at byte offset 15 is out of range"):
        load_mnist(tmp_path)


def test_image_size_mismatch_between_splits(tmp_path, arrays):
    arrays[STEMS[2]] = arrays[STEMS[2]][:, :20, :20]
    write_set(tmp_path, arrays)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: images are 20x20"):
        load_mnist(tmp_path)


def test_corrupt_gzip_stream(tmp_path, arrays):
    paths = write_set(tmp_path, arrays, gz=True)
    p = paths[STEMS[0]]
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(data[: len(data) // 2]))  # cut the compressed stream
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)
    p.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate" * 3)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st_.binary(max_size=64), magic=st_.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]),
       prefix=st_.booleans(), compressed=st_.booleans())
def test_fuzz_parse_idx_only_value_error(data, magic, prefix, compressed):
    if prefix:  # a valid magic so that the dimensions and the payload get parsed too
        data = magic.to_bytes(4, "big") + data
    f = io.BytesIO(data)
    size = len(data)
    if compressed:
        f = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data) if prefix else data))
        size = None
    try:
        out = parse_idx(f, "fuzz", magic, size)
    except ValueError as exc:
        assert "fuzz" in str(exc)
    else:
        assert out.dtype == np.uint8 and out.ndim == (magic & 0xFF)


# --- download -----------------------------------------------------------------------




def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def mirror(tmp_path, arrays, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    src = tmp_path / "mirror"
    paths = write_set(src, arrays, gz=True)
    sums = {p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()}
    return src, sums


def test_download_verifies_and_loads(tmp_path, arrays, mirror):
    src, sums = mirror
    root = tmp_path / "data"
    with serve(src) as url:
        result = load_mnist(root, download=True, base_url=url, checksums=sums, progress=False)
    check_loaded(result, arrays)
    assert sorted(p.name for p in root.iterdir()) == sorted(sums)
    # Already there: no network needed the second time.
    check_loaded(load_mnist(root, download=True, base_url=closed_port_url(), checksums=sums), arrays)


def test_download_base_url_from_environment(tmp_path, arrays, mirror, monkeypatch):
    src, sums = mirror
    with serve(src) as url:
        monkeypatch.setenv("STRIATE_MNIST_URL", url)
        check_loaded(load_mnist(tmp_path / "data", download=True, checksums=sums, progress=False), arrays)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    src, sums = mirror
    name = "t10k-images-idx3-ubyte.gz"
    sums[name] = "md5:" + "0" * 32
    root = tmp_path / "data"
    with serve(src) as url, pytest.raises(ValueError, match=rf"{name}: md5 checksum mismatch"):
        load_mnist(root, download=True, base_url=url, checksums=sums, progress=False)
    assert not (root / name).exists() and not (root / (name + ".part")).exists()


def test_published_checksums_are_used_by_default(tmp_path, mirror):
    src, _ = mirror  # the small test files cannot match the real MNIST digests
    with serve(src) as url, pytest.raises(ValueError, match="md5 checksum mismatch, expected f68b3c2d"):
        load_mnist(tmp_path / "data", download=True, base_url=url, progress=False)


def test_offline_error_says_where_to_put_files(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=rf"place them as follows: put train-images-idx3-ubyte.gz.* in {root}"):
        load_mnist(root, download=True, base_url=closed_port_url(), progress=False)


def test_http_404_is_a_download_error(tmp_path, mirror):
    with serve(tmp_path / "empty_dir_that_does_not_exist") as url, pytest.raises(DownloadError, match="404"):
        load_mnist(tmp_path / "data", download=True, base_url=url, progress=False)


@pytest.mark.parametrize("bad", ["md5:123", "sha1:" + "0" * 40, "z" * 32, 42])
def test_bad_checksum_spec(bad):
    with pytest.raises((ValueError, TypeError), match="checksum"):
        _download.parse_checksum(bad)


def test_bad_base_url(tmp_path):
    with pytest.raises(ValueError, match="`base_url` must be"):
        load_mnist(tmp_path, download=True, base_url="ftp://example.org/")
