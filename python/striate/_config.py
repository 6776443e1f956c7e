"""Process-wide settings: thread count, ISA path, backend and the global RNG.

The thread count lives in the C++ core (every kernel reads it). It defaults to
the number of usable cores; ``STRIATE_NUM_THREADS`` overrides that and
``OMP_NUM_THREADS`` is honoured when it is the only one set. The ISA path
(``"avx512"``, ``"avx2"`` or ``"generic"``: the SIMD code every kernel runs)
lives in the C++ core too (csrc/cpu.hpp); it defaults to the widest the CPU
supports and ``STRIATE_ISA`` sets it at import, which fails with ValueError
when the variable names an unknown path or one the CPU lacks. The backend
(``"cpp"`` or ``"numpy"``) defaults to ``"cpp"``; ``STRIATE_BACKEND`` overrides it.

Not here: the kernels, and the CPU detection itself (the C++ core does it once).
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


_ISAS = ("avx512", "avx2", "generic")  # widest first


def _check_isa(name: str, what: str) -> str:
    """``name`` if it is a path this CPU runs; ValueError naming ``what`` otherwise."""
    widest = _core.detected_isa()
    if name not in _ISAS:
        allowed = ", ".join(repr(i) for i in _ISAS)
        raise ValueError(f"{what} must be one of {allowed}, got {name!r}")
    if _ISAS.index(name) < _ISAS.index(widest):
        raise ValueError(f"{what} {name!r} is not supported by this CPU (widest supported: {widest!r})")
    return name


def set_isa(name: str) -> None:
    """Choose the SIMD path every C++ kernel takes from now on.

    Parameters
    ----------
    name : {"avx512", "avx2", "generic"}
        The instruction-set path. It may not be wider than the CPU supports;
        ``"generic"`` (portable C++) always works.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` is not one of the three paths, or is wider than this CPU
        supports (the message names the widest supported one).

    Notes
    -----
    Each path is bit-identical for every thread count. Calls already running
    on other threads finish on the path they started with.
    """
    if not isinstance(name, str):
        raise TypeError(f"`isa` must be a str, got {type(name).__name__}")
    _core.set_isa(_check_isa(name, "`isa`"))


def get_isa() -> str:
    """The SIMD path the C++ kernels take now: ``"avx512"``, ``"avx2"`` or ``"generic"``.

    By default this is the widest path the CPU supports, or ``STRIATE_ISA``
    when that variable is set.
    """
    return str(_core.get_isa())


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
    env_isa = os.environ.get("STRIATE_ISA", "").strip()
    if env_isa:
        _core.set_isa(_check_isa(env_isa, "environment variable STRIATE_ISA"))
    env_backend = os.environ.get("STRIATE_BACKEND", "").strip()
    if env_backend:
        set_backend(env_backend)


_init_from_env()
