"""File helpers every striate reader and writer goes through: regular files only, bounded reads, atomic writes.

``open_regular`` opens a path without blocking (a FIFO does not wait for a
writer) and refuses anything that is not a regular file: a FIFO, a device, a
socket or a directory. ``read_bounded`` reads at most the size it checked on the
opened descriptor (plus one byte, to notice a file that grows). ``atomic_write``
writes through symlinks to their target, refuses to replace what is not a
regular file, and removes the temp files that a killed save of the same
target left behind (named ``.<name>.<pid>.<random>.striate-tmp``, a pattern
only striate uses; a temp file is removed only when its process is gone).

Not here: any file format (``io``, ``onnx_io``, the dataset readers).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat

__all__ = ["NotRegularFileError", "open_regular", "read_bounded", "atomic_write", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".striate-tmp"


class NotRegularFileError(ValueError):
    """A path that names a FIFO, a device, a socket or a directory where a regular file is needed."""


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse(path, mode, doing):
    raise NotRegularFileError(f"{os.fspath(path)}: cannot {doing} {_kind(mode)}; a regular file is needed")


def open_regular(path):
    """Open ``path`` for binary reading; ``(file, size)``, or NotRegularFileError at once.

    The open does not block on a FIFO (O_NONBLOCK), and the kind and the size
    are those of the opened descriptor, so a path swapped after a check is
    still refused.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, st.st_mode, "read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, st.st_size


def read_bounded(path, max_bytes=None):
    """The bytes of the regular file ``path``, read up to the size checked on its descriptor.

    Raises ValueError when the file is larger than ``max_bytes``, or grows or
    shrinks while being read; NotRegularFileError for a non-regular file.
    """
    f, size = open_regular(path)
    with f:
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{os.fspath(path)}: file is {size} bytes, more than `max_bytes`={max_bytes}")
        data = f.read(size + 1)
    if len(data) != size:
        raise ValueError(f"{os.fspath(path)}: file changed while being read ({size} bytes expected)")
    return data


def _stale_temps(folder, base):
    """Temp files of earlier saves of ``base`` in ``folder`` whose writing process is gone."""
    pat = re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"\Z")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in names:
        m = pat.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            out.append(name)  # this process is not writing it now: the writer below is the only one
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(name)
        except (PermissionError, OverflowError):
            pass  # alive (another user's) or not a pid: leave it
    return out


def _fsync_dir(folder):
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(dfd)


def atomic_write(path, data):
    """Write ``data`` to ``path`` so that it is either the old or the new file.

    A symlink is followed: its target is replaced and the link stays. A path
    that exists and is not a regular file (a FIFO, a device, a directory)
    raises NotRegularFileError before anything is written. Stale temp files
    of this target, left by a killed save, are removed first.
    """
    target = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        mode = 0o644
    else:
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, st.st_mode, "save onto")
        mode = st.st_mode & 0o777
    folder, base = os.path.split(target)
    for name in _stale_temps(folder, base):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
