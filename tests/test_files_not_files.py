"""Tests that saves and loads handle paths that are not regular files (RELIABILITY item 22).

Saving through a symlink updates the target and keeps the link; saving onto a
FIFO, a device or a directory raises before writing; a killed save leaves no
temp file behind once the next save ran. Every loader refuses a FIFO, a
device or a directory at once (no hang, no unbounded read). Not here: the
atomicity of saves under kill -9 (test_reliability.py, item 14).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import striate as st
from striate import _files, io, layers as L, onnx_io
from striate.datasets import cifar, folder, mnist
from striate.model import Sequential
from striate.training.checkpoint import load_checkpoint

PYTHON_DIR = str(Path(st.__file__).resolve().parent.parent)


def _model():
    st.seed(0)
    return Sequential([L.Flatten(), L.Linear(4, 2)])


def _no_hang(fn, timeout=10.0):
    """Run ``fn``; the exception it raised. Fails when it does not return within ``timeout``."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call hung"
    return box.get("exc")


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe.safetensors"
    os.mkfifo(p)
    yield p
    try:  # unblock a reader left hanging by a regression, so the process can end
        fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_save_through_symlink_updates_target_and_keeps_link(tmp_path):
    target = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    _model().save(target)
    link.symlink_to(target)
    m = _model()
    m.layers[1].weight.data[...] = 7.0
    m.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert np.all(st.load(target).layers[1].weight.data == 7.0)
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real.safetensors"]


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_save_onto_non_file_raises_and_leaves_it(tmp_path, kind):
    path = tmp_path / "x.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:  # a link to the null device: the save must follow it and refuse
        path.symlink_to(os.devnull)
    before = os.lstat(path)
    with pytest.raises(ValueError, match="regular file"):
        _model().save(path)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


_SAVER = """
import sys
import striate as st
from striate import layers as L
from striate.model import Sequential
m = Sequential([L.Flatten(), L.Linear(256, 256)])
print("ready", flush=True)
while True:
    m.save(sys.argv[1])
"""


def test_killed_saves_leave_no_temp_after_next_save(tmp_path):
    path = tmp_path / "m.safetensors"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    for delay in (0.0, 0.01, 0.03, 0.07, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    _model().save(path)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    st.load(path)


def test_stale_temp_of_a_live_process_is_kept(tmp_path):
    path = tmp_path / "m.safetensors"
    live = tmp_path / f".m.safetensors.{os.getppid()}.{'0' * 16}{_files.TEMP_SUFFIX}"
    live.write_bytes(b"x")
    other = tmp_path / ".m.safetensors.abc.tmp"  # not ours: never touched
    other.write_bytes(b"x")
    _model().save(path)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "m.safetensors"])


def _loaders(path):
    m = _model()
    return {
        "st.load": lambda: st.load(path),
        "io.load_weights": lambda: io.load_weights(m, path),
        "io.read_header": lambda: io.read_header(path),
        "load_checkpoint": lambda: load_checkpoint(path, m),
        "onnx_io.import_model": lambda: onnx_io.import_model(path),
        "mnist.read_idx": lambda: mnist.read_idx(path, 2051),
        "cifar._read_capped": lambda: cifar._read_capped(path),
        "folder.decode_image": lambda: folder.decode_image(path),
        "predict npy": lambda: __import__("striate._cli_data", fromlist=["_npy"])._npy(path),
    }


@pytest.mark.parametrize("name", list(_loaders("x")))
def test_loaders_refuse_a_fifo_at_once(fifo, name):
    exc = _no_hang(_loaders(fifo)[name])
    assert exc is not None and "FIFO" in str(exc), repr(exc)


@pytest.mark.parametrize("name", list(_loaders("x")))
def test_loaders_refuse_a_directory_and_the_zero_device(tmp_path, name):
    for path in (tmp_path, Path("/dev/zero")):
        exc = _no_hang(_loaders(path)[name])
        assert exc is not None and ("directory" in str(exc) or "device" in str(exc)), repr(exc)


def test_read_bounded_reads_what_it_checked(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert _files.read_bounded(p) == b"abc"
    with pytest.raises(ValueError, match="max_bytes"):
        _files.read_bounded(p, 2)
