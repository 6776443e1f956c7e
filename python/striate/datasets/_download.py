"""Fetching dataset files: checksummed downloads and safe tar extraction.

Shared by the MNIST, Fashion-MNIST and CIFAR-10 loaders, with striate's cache
folder (``cache_dir``). A download goes to ``<name>.part``
in the destination folder, is checked against its published MD5 or SHA256,
and only then renamed into place, so a half-finished or tampered file is never
used. Archives are extracted with ``tarfile``'s ``"data"`` filter (no absolute
paths, no links or files outside the destination, no device files).

Not here: parsing the files (``mnist.py``, ``cifar.py``), retries, mirrors
lists, or any caching beyond "the file is already there".
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from .. import _files

# Downloads larger than this are refused (CIFAR-10 archives are about 170 MB).
MAX_DOWNLOAD_BYTES = 1 << 30
_CHUNK = 1 << 16


CACHE_ENV = "STRIATE_CACHE_DIR"


def cache_dir() -> Path:
    """striate's cache folder: ``$STRIATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/striate``, else ``~/.cache/striate``.

    Only the path; nothing is created here.
    """
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(os.path.expanduser(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(os.path.expanduser(xdg)) if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "striate"


class DownloadError(OSError):
    """A dataset file could not be fetched (offline, refused, or HTTP error)."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"``, ``"sha256:<hex>"`` or a bare hex digest into (algorithm, hex).

    A bare digest of 32 hex digits is MD5 and one of 64 is SHA256.
    """
    if not isinstance(checksum, str):
        raise TypeError(f"`checksum` must be a str, got {type(checksum).__name__}")
    algo, sep, digest = checksum.partition(":")
    if not sep:
        digest = algo
        algo = {32: "md5", 64: "sha256"}.get(len(checksum), "")
    algo = algo.lower()
    digest = digest.lower()
    lengths = {"md5": 32, "sha256": 64}
    if algo not in lengths or len(digest) != lengths[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"`checksum` must be 'md5:<32 hex>', 'sha256:<64 hex>' or a bare digest, got {checksum!r}")
    return algo, digest


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algo)
    f, _ = _files.open_regular(path)
    with f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """Raise ValueError unless the file at ``path`` has the given checksum."""
    algo, expected = parse_checksum(checksum)
    got = file_digest(path, algo)
    if got != expected:
        raise ValueError(f"{path}: {algo} checksum mismatch, expected {expected}, got {got}")


def resolve_base_url(base_url: str | None, env_var: str, default: str) -> str:
    """The base URL: the argument, else the environment variable, else the canonical address."""
    url = base_url if base_url is not None else os.environ.get(env_var, "").strip() or default
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"`base_url` must be an http(s):// or file:// URL, got {url!r}")
    return url if url.endswith("/") else url + "/"


def fetch(url: str, dest: Path, checksum: str, *, where_hint: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    The data is written to ``dest`` + ``.part`` and renamed only after the
    checksum matched. A network failure raises :class:`DownloadError` whose
    message says which files to place where (``where_hint``); a checksum
    mismatch raises ValueError and leaves nothing behind.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    algo, expected = parse_checksum(checksum)
    h = hashlib.new(algo)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"{url}: refusing a {total}-byte download (limit {MAX_DOWNLOAD_BYTES})")
            received = 0
            with open(part, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False
            ) as bar:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise ValueError(f"{url}: download exceeds {MAX_DOWNLOAD_BYTES} bytes, refused")
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url} ({exc}). If this machine is offline, fetch the files elsewhere "
            f"and place them as follows: {where_hint}"
        ) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    if got != expected:
        part.unlink(missing_ok=True)
        raise ValueError(f"{url}: {algo} checksum mismatch, expected {expected}, got {got}; the file was discarded")
    os.replace(part, dest)
    return dest


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract a (possibly gzipped) tar archive into ``dest`` with the ``"data"`` filter.

    Members that would land outside ``dest``, links pointing outside it,
    device files and absolute paths are refused: ValueError naming the archive.
    """
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError(
            "this Python's tarfile has no extraction filters (needs 3.9.17+, 3.10.12+ or 3.11.4+); "
            f"extract {archive} by hand"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"{archive}: refused or unreadable tar archive: {exc}") from exc
