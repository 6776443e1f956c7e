"""Process-wide settings: thread count, backend and the global RNG.

The thread count lives in the C++ core (every kernel reads it). It defaults to
the number of usable cores; ``STRIATE_NUM_THREADS`` overrides that and
``OMP_NUM_THREADS`` is honoured when it is the only one set. The backend
(``"cpp"`` or ``"numpy"``) defaults to ``"cpp"``; ``STRIATE_BACKEND`` overrides it.
"""

from __future__ import annotations

import os

import numpy as np

from . import _core

_BACKENDS = ("cpp", "numpy")
_backend = "cpp"
_rng = np.random.default_rng()


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _threads_from_env() -> int:
    for var in ("STRIATE_NUM_THREADS", "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            n = int(raw.split(",")[0])
        except ValueError:
            raise ValueError(f"environment variable {var} must be a positive integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"environment variable {var} must be a positive integer, got {raw!r}")
        return n
    return _usable_cores()


def set_num_threads(n: int) -> None:
    """Set the number of threads every C++ kernel uses (``n >= 1``).

    Results are bit-identical for every thread count.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"`n` must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads the C++ kernels use."""
    return int(_core.get_num_threads())


def set_backend(name: str) -> None:
    """Choose where ops run: ``"cpp"`` (the C++ kernels) or ``"numpy"`` (``striate.reference``)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"`name` must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The current backend: ``"cpp"`` or ``"numpy"``."""
    return _backend


def seed(s: int) -> None:
    """Seed striate's global RNG (initialisation, dropout, shuffling, augmentation)."""
    global _rng
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
        raise TypeError(f"`s` must be an int, got {type(s).__name__}")
    if s < 0:
        raise ValueError(f"`s` must be non-negative, got {s}")
    _rng = np.random.default_rng(int(s))


def rng() -> np.random.Generator:
    """The global generator used where no explicit seed is given."""
    return _rng


def _init_from_env() -> None:
    global _backend
    _core.set_num_threads(_threads_from_env())
    env_backend = os.environ.get("STRIATE_BACKEND", "").strip()
    if env_backend:
        set_backend(env_backend)


_init_from_env()
