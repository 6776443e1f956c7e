"""Tests for striate.datasets.cifar: binary and pickled batches, hostile pickles and archives.

All batches are generated here in the real formats (a few records each); the
download is served from a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
from local_http import serve
from hypothesis import given, settings
from hypothesis import strategies as st_

from striate.datasets import DownloadError, load_cifar10
from striate.datasets.cifar import RECORD_BYTES, parse_cifar_bin, parse_cifar_pickle

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = "test_batch"


def make_batches(rng, per_batch=3, n_test=4):
    out = {}
    for name, n in [(b, per_batch) for b in TRAIN] + [(TEST, n_test)]:
        out[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist())
    return out


def bin_bytes(images, labels):
    rec = np.concatenate([np.asarray(labels, np.uint8)[:, None], images], axis=1)
    return rec.tobytes()


def write_bin(folder, batches, override=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / f"{name}.bin").write_bytes((override or {}).get(name, bin_bytes(x, y)))
    (folder / "batches.meta.txt").write_text("airplane\nautomobile\n")


def py_bytes(images, labels, protocol=2, str_keys=False, old_numpy_name=False, extra=None):
    d = {"batch_label": "training batch", "labels": labels, "data": images, "filenames": ["a.png"] * len(labels)}
    if extra:
        d.update(extra)
    if not str_keys:
        d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
    data = pickle.dumps(d, protocol=protocol)
    if old_numpy_name:  # what numpy 1.x / Python 2 wrote: numpy.core.multiarray
        assert b"numpy._core.multiarray" in data and protocol == 2
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return data


def write_py(folder, batches, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(py_bytes(x, y, **kw))


@pytest.fixture
def batches(rng):
    return make_batches(rng)


def check_loaded(result, batches):
    (x, y), (xt, yt) = result
    assert x.shape == (15, 3, 32, 32) and xt.shape == (4, 3, 32, 32)
    assert x.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    want_x = np.concatenate([batches[b][0] for b in TRAIN]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(x * 255, want_x.astype(np.float32))
    np.testing.assert_array_equal(y, sum((batches[b][1] for b in TRAIN), []))
    np.testing.assert_array_equal(xt, batches[TEST][0].reshape(-1, 3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(yt, batches[TEST][1])
    assert 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("use_parent", [True, False])
def test_binary(tmp_path, batches, use_parent):
    write_bin(tmp_path / "cifar-10-batches-bin", batches)
    root = tmp_path if use_parent else tmp_path / "cifar-10-batches-bin"
    check_loaded(load_cifar10(root), batches)


@pytest.mark.parametrize("use_parent", [True, False])
@pytest.mark.parametrize("kw", [{}, {"str_keys": True}, {"protocol": 4}, {"old_numpy_name": True}])
def test_python_version(tmp_path, batches, use_parent, kw):
    write_py(tmp_path / "cifar-10-batches-py", batches, **kw)
    root = tmp_path if use_parent else tmp_path / "cifar-10-batches-py"
    check_loaded(load_cifar10(root), batches)


def test_binary_preferred_over_pickle(tmp_path, batches, rng):
    write_bin(tmp_path / "cifar-10-batches-bin", batches)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not even a pickle")
    check_loaded(load_cifar10(tmp_path), batches)


def test_label_array_instead_of_list(tmp_path, batches):
    folder = tmp_path / "cifar-10-batches-py"
    write_py(folder, batches)
    x, y = batches[TEST]
    (folder / TEST).write_bytes(py_bytes(x, np.array(y, np.int32)))
    check_loaded(load_cifar10(tmp_path), batches)


def test_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 batches.*download=True"):
        load_cifar10(tmp_path)


def test_missing_batch(tmp_path, batches):
    write_bin(tmp_path / "cifar-10-batches-bin", batches)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        load_cifar10(tmp_path)


# --- binary validation ------------------------------------------------------------


@pytest.mark.parametrize("delta", [-1, 1, -2 * RECORD_BYTES + 5])
def test_binary_size_not_multiple(tmp_path, batches, delta):
    x, y = batches["data_batch_2"]
    good = bin_bytes(x, y)
    bad = good[:delta] if delta < 0 else good + b"\x00" * delta
    n = len(bad) // RECORD_BYTES
    write_bin(tmp_path, batches, override={"data_batch_2": bad})
    with pytest.raises(ValueError, match=rf"data_batch_2.bin: size {len(bad)} is not a positive multiple of the "
                                         rf"3073-byte record.*byte offset {n * RECORD_BYTES}"):
        load_cifar10(tmp_path)


def test_binary_empty(tmp_path, batches):
    write_bin(tmp_path, batches, override={TEST: b""})
    with pytest.raises(ValueError, match="test_batch.bin: size 0"):
        load_cifar10(tmp_path)


def test_binary_label_out_of_range(tmp_path, batches):
    x, y = batches["data_batch_5"]
    y = list(y)
    y[2] = 10
    write_bin(tmp_path, batches, override={"data_batch_5": bin_bytes(x, y)})
    with pytest.raises(ValueError, match=rf"data_batch_5.bin: label 10 at byte offset {2 * RECORD_BYTES} is out"):
        load_cifar10(tmp_path)


@settings(max_examples=100, deadline=None)
@given(data=st_.binary(max_size=2 * RECORD_BYTES + 2))
def test_fuzz_binary_only_value_error(data):
    try:
        x, y = parse_cifar_bin(data, "fuzz")
    except ValueError as exc:
        assert "fuzz" in str(exc)
    else:
        assert x.shape == (len(data) // RECORD_BYTES, 3, 32, 32) and (y < 10).all()


@settings(max_examples=60, deadline=None)
@given(n=st_.integers(1, 3), labels=st_.lists(st_.integers(0, 255), min_size=3, max_size=3))
def test_fuzz_binary_records(n, labels):
    data = bin_bytes(np.zeros((n, 3072), np.uint8), labels[:n])
    if max(labels[:n]) < 10:
        assert parse_cifar_bin(data, "f")[1].tolist() == labels[:n]
    else:
        with pytest.raises(ValueError, match="out of range"):
            parse_cifar_bin(data, "f")


# --- pickle validation and hostile pickles ----------------------------------------


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y: pickle.dumps([x, y], protocol=2), "expected a dict, got list"),
        (lambda x, y: pickle.dumps({b"data": x}, protocol=2), "missing key 'labels'"),
        (lambda x, y: py_bytes(x.astype(np.float32), y), "'data' must be a non-empty uint8 array.*float32"),
        (lambda x, y: py_bytes(x.reshape(-1, 3, 32, 32), y), r"shape \(N, 3072\), got uint8 array of shape"),
        (lambda x, y: py_bytes(x[:0], [], protocol=4), "non-empty"),
        (lambda x, y: py_bytes(x, y[:-1]), "4 images but 3 labels"),
        (lambda x, y: py_bytes(x, y[:-1] + [12]), "label 12 at index 3 is out of range"),
        (lambda x, y: py_bytes(x, np.array(y[:-1] + [-1])), "label -1 .*out of range"),
        (lambda x, y: py_bytes(x, [1.0] * len(y)), "'labels' must be a list of ints"),
        (lambda x, y: py_bytes(x, y)[:-20], "refused or unreadable pickle"),
        (lambda x, y: b"", "refused or unreadable pickle"),
    ],
)
def test_pickle_validation(tmp_path, batches, mutate, message):
    folder = tmp_path / "cifar-10-batches-py"
    write_py(folder, batches)
    x, y = batches[TEST]
    (folder / TEST).write_bytes(mutate(x, y))
    with pytest.raises(ValueError, match=rf"test_batch: .*{message}"):
        load_cifar10(tmp_path)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _payloads(marker):
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('pwned')"
    return {
        "os.system": _System(f"touch {marker}"),
        "builtins.exec": _Exec(code),
        "builtins.open": _Open(str(marker)),
    }


def test_payload_really_has_a_side_effect_without_the_guard(tmp_path):
    # Proof that the payload is live: plain pickle runs it. The loader must not.
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_payloads(marker)["builtins.exec"], protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.open"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("hidden", [False, True])
def test_pickle_payload_refused_without_running(tmp_path, batches, kind, protocol, hidden):
    marker = tmp_path / "marker"
    payload = _payloads(marker)[kind]
    folder = tmp_path / "cifar-10-batches-py"
    write_py(folder, batches)
    x, y = batches["data_batch_3"]
    if hidden:  # a valid batch with the payload tucked into an extra key
        data = py_bytes(x, y, protocol=protocol, extra={"extra": payload})
    else:
        data = pickle.dumps(payload, protocol=protocol)
    (folder / "data_batch_3").write_bytes(data)
    with pytest.raises(ValueError, match=r"data_batch_3: refused or unreadable pickle: UnpicklingError: refused global"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_codecs_encode_other_than_latin1_refused():
    # _codecs.encode("x", "rot13") built by hand: GLOBAL, args tuple, REDUCE.
    data = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(ValueError, match="refused _codecs.encode call with encoding 'rot13'"):
        parse_cifar_pickle(data, "f")


def test_object_dtype_refused(rng):
    arr = np.array([1, "a"], dtype=object)
    with pytest.raises(ValueError, match="refused object dtype"):
        parse_cifar_pickle(pickle.dumps({b"data": arr, b"labels": [0]}, protocol=2), "f")


@settings(max_examples=150, deadline=None)
@given(data=st_.binary(max_size=200), flips=st_.lists(st_.integers(0, 10**6), max_size=3))
def test_fuzz_pickle_only_value_error(data, flips):
    good = py_bytes(np.zeros((1, 3072), np.uint8), [3])
    for source in (data, good):
        buf = bytearray(source)
        for f in flips:
            if buf:
                buf[f % len(buf)] ^= 0xFF
        try:
            x, y = parse_cifar_pickle(bytes(buf), "fuzz")
        except ValueError as exc:
            assert "fuzz" in str(exc)
        else:
            assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == np.int64


# --- download ---------------------------------------------------------------------




def make_archive(path, batches, extra_members=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in batches.items():
            data = bin_bytes(x, y)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra_members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.mark.parametrize("root_is_batches_dir", [False, True])
def test_download_extracts_and_loads(tmp_path, batches, no_proxy, root_is_batches_dir):
    src = tmp_path / "mirror"
    src.mkdir()
    md5 = make_archive(src / "cifar-10-binary.tar.gz", batches)
    data = tmp_path / "data"
    root = data / "cifar-10-batches-bin" if root_is_batches_dir else data
    with serve(src) as url:
        result = load_cifar10(root, download=True, base_url=url,
                              checksums={"cifar-10-binary.tar.gz": md5}, progress=False)
    check_loaded(result, batches)
    assert (data / "cifar-10-binary.tar.gz").is_file() and (data / "cifar-10-batches-bin").is_dir()


def test_download_base_url_from_environment(tmp_path, batches, no_proxy, monkeypatch):
    src = tmp_path / "mirror"
    src.mkdir()
    md5 = make_archive(src / "cifar-10-binary.tar.gz", batches)
    with serve(src) as url:
        monkeypatch.setenv("STRIATE_CIFAR10_URL", url)
        check_loaded(load_cifar10(tmp_path / "d", download=True, checksums={"cifar-10-binary.tar.gz": md5},
                                  progress=False), batches)


def test_download_checksum_mismatch(tmp_path, batches, no_proxy):
    src = tmp_path / "mirror"
    src.mkdir()
    make_archive(src / "cifar-10-binary.tar.gz", batches)
    with serve(src) as url, pytest.raises(ValueError, match="md5 checksum mismatch, expected c32a1d4a"):
        load_cifar10(tmp_path / "d", download=True, base_url=url, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_existing_archive_is_verified_then_extracted(tmp_path, batches):
    md5 = make_archive(tmp_path / "cifar-10-binary.tar.gz", batches)
    check_loaded(load_cifar10(tmp_path, download=True, checksums={"cifar-10-binary.tar.gz": md5}), batches)
    (tmp_path / "other").mkdir()
    make_archive(tmp_path / "other" / "cifar-10-binary.tar.gz", batches)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_cifar10(tmp_path / "other", download=True)


def _escape_member():
    info = tarfile.TarInfo("../escaped.bin")
    info.size = 3
    return info, b"bad"


def _absolute_member(target):
    info = tarfile.TarInfo(str(target))
    info.size = 3
    return info, b"bad"


def _symlink_member():
    info = tarfile.TarInfo("cifar-10-batches-bin/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info, None


@pytest.mark.parametrize("kind", ["escape", "absolute", "symlink"])
def test_hostile_archive_refused(tmp_path, batches, kind):
    dest = tmp_path / "d"
    dest.mkdir()
    outside = tmp_path / "abs_target.bin"
    member = {"escape": _escape_member, "absolute": lambda: _absolute_member(outside),
              "symlink": _symlink_member}[kind]()
    md5 = make_archive(dest / "cifar-10-binary.tar.gz", batches, [member])
    if kind == "absolute":
        # The data filter strips the leading "/" and so keeps the member inside dest.
        load_cifar10(dest, download=True, checksums={"cifar-10-binary.tar.gz": md5})
        assert (dest / str(outside).lstrip("/")).is_file()
    else:
        with pytest.raises(ValueError, match="cifar-10-binary.tar.gz: refused or unreadable tar archive"):
            load_cifar10(dest, download=True, checksums={"cifar-10-binary.tar.gz": md5})
    assert not outside.exists()
    assert not (tmp_path / "escaped.bin").exists()
    assert not (dest / "cifar-10-batches-bin" / "link").is_symlink()


def test_offline_error_says_where_to_put_files(tmp_path, no_proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DownloadError, match=rf"put cifar-10-binary.tar.gz .*cifar-10-batches-bin.* in {tmp_path}"):
        load_cifar10(tmp_path, download=True, base_url=f"http://127.0.0.1:{port}/", progress=False)
