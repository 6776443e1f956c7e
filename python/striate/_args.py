"""Argument parsing and validation: the ops' geometry, and the scalar checks of the layers and tools.

Every public op turns its user-facing arguments (ints or ``(h, w)`` pairs,
``"same"``/``"valid"`` padding, ``None`` strides) into one small, fully
checked record of plain Python ints here, so that the NumPy oracle and the C++
wrappers agree on every output size and reject the same inputs with the same
message. Messages name the argument and what was received.

The last section holds the scalar checks (``int_in``, ``real_in``,
``boolean``, ``int_at_least``, ``positive_real`` ...) of the layers'
constructors, the training loop and the tools above it.

Not here: any numerics, dtype conversion or dispatching. Sizes are checked in
arbitrary-precision Python ints against the int64 range before anything is
allocated; the C++ bindings check again on their side.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from . import _core

INT64_MAX = 2**63 - 1

_NEEDS = ("x", "weight", "bias")


# --------------------------------------------------------------------------- memo


_SCALARS = (int, bool, str, type(None))
_SCALAR_SET = frozenset(_SCALARS)


def _key(v):
    """A hashable key that keeps types apart (``True`` vs ``1``, ``1.0`` vs ``1``), or None.

    Only plain Python ints, bools, strings, None and tuples/lists of them are
    keyed; anything else (numpy scalars, floats, odd objects) is not cached.
    """
    t = type(v)
    if t in _SCALARS:
        return (t, v)
    if t is tuple or t is list:
        types = tuple(map(type, v))
        if _SCALAR_SET.issuperset(types):
            return (t, types, tuple(v))
    return None


def _memo(fn):
    """Cache a validator's result for repeated, identical arguments (a layer calls
    the same geometry every step). Errors are not cached: they are raised again."""
    cache: dict = {}

    def wrapper(*args, **kwargs):
        names = sorted(kwargs)
        keys = [_key(a) for a in args] + [_key(kwargs[n]) for n in names]
        if None in keys:
            return fn(*args, **kwargs)
        key = (tuple(keys), tuple(names))
        try:
            return cache[key]
        except KeyError:
            pass
        out = fn(*args, **kwargs)
        if len(cache) >= 4096:
            cache.clear()
        cache[key] = out
        return out

    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


# --------------------------------------------------------------------------- scalars


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _describe(v) -> str:
    r = repr(v)
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{r} ({type(v).__name__})"


def pair(value, name: str, *, allow_none: bool = False) -> tuple:
    """``value`` as an ``(h, w)`` pair of Python ints (``None`` entries when allowed)."""
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        out: list = []
        for v in value:
            if _is_int(v):
                out.append(int(v))
            elif v is None and allow_none:
                out.append(None)
            else:
                raise TypeError(f"`{name}` must be an int or a pair of ints, got {_describe(value)}")
        return tuple(out)
    if isinstance(value, (tuple, list)):
        raise ValueError(f"`{name}` must be an int or a pair of ints, got {len(value)} values: {value!r}")
    raise TypeError(f"`{name}` must be an int or a pair of ints, got {_describe(value)}")


def positive_pair(value, name: str) -> tuple[int, int]:
    p = pair(value, name)
    for v in p:
        if v <= 0:
            shown = value if not _is_int(value) else int(value)
            raise ValueError(f"`{name}` must be positive, got {shown!r}")
        if v > INT64_MAX:
            raise ValueError(f"`{name}` overflows int64, got {value!r}")
    return p


def nonneg_pair(value, name: str) -> tuple[int, int]:
    p = pair(value, name)
    for v in p:
        if v < 0:
            shown = value if not _is_int(value) else int(value)
            raise ValueError(f"`{name}` must be non-negative, got {shown!r}")
        if v > INT64_MAX:
            raise ValueError(f"`{name}` overflows int64, got {value!r}")
    return p


def positive_int(value, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int, got {_describe(value)}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {int(value)}")
    if value > INT64_MAX:
        raise ValueError(f"`{name}` overflows int64, got {int(value)}")
    return int(value)


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {_describe(value)}")
    return bool(value)


def norm_type(value, name: str = "norm_type") -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {_describe(value)}")
    p = float(value)
    if not math.isfinite(p) or p <= 0:
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}")
    return p


def needs_set(needs, allowed: tuple = _NEEDS) -> frozenset:
    """``needs`` (names of wanted gradients) as a frozenset, checked against ``allowed``."""
    if isinstance(needs, str):
        needs = (needs,)
    if not isinstance(needs, Iterable):
        raise TypeError(f"`needs` must be a collection of names from {allowed}, got {_describe(needs)}")
    out = set()
    for n in needs:
        if not isinstance(n, str) or n not in allowed:
            raise ValueError(f"`needs` entries must be among {allowed}, got {n!r}")
        out.add(n)
    return frozenset(out)


def checked_numel(shape, what: str) -> int:
    """Product of ``shape``; ValueError when it does not fit in int64."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > INT64_MAX:
        raise ValueError(f"{what} of shape {tuple(int(d) for d in shape)} has {n} elements, which overflows int64")
    return n


def shape4(value, name: str) -> tuple[int, int, int, int]:
    """A 4-D shape ``(N, C, H, W)`` of non-negative ints."""
    if isinstance(value, np.ndarray) or not isinstance(value, (tuple, list)):
        raise TypeError(f"`{name}` must be a tuple of 4 ints, got {_describe(value)}")
    if len(value) != 4:
        raise ValueError(f"`{name}` must have 4 entries (N, C, H, W), got {tuple(value)!r}")
    for v in value:
        if not _is_int(v):
            raise TypeError(f"`{name}` must be a tuple of 4 ints, got {tuple(value)!r}")
        if v < 0:
            raise ValueError(f"`{name}` entries must be non-negative, got {tuple(value)!r}")
    a, b, c, d = (int(v) for v in value)
    shape = (a, b, c, d)
    checked_numel(shape, f"`{name}`")
    return shape


# --------------------------------------------------------------------------- arrays


def not_masked(a, name: str):
    """TypeError for a ``numpy.ma.MaskedArray``: striate would ignore its mask."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"`{name}` is a numpy.ma.MaskedArray, whose mask striate would ignore; "
                        "pass a plain array (e.g. a.filled(value))")


def array(a, name: str, *, float32: bool, ndim: int | None = None) -> np.ndarray:
    """Check that ``a`` is a floating ndarray (float32 only when ``float32``) of ``ndim`` dims.

    The strict path (``float32=True``, used by ``striate.functional``) accepts
    only ``np.ndarray`` of dtype float32 in native byte order. The lenient path
    (the reference) also accepts float64 and array-likes, never ints.
    """
    not_masked(a, name)
    if float32:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"`{name}` must be a numpy.ndarray of float32, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"`{name}` must have dtype float32, got {a.dtype}")
    else:
        if not isinstance(a, np.ndarray):
            a = np.asarray(a)
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"`{name}` must have dtype float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {a.shape}")
    return a


def index_array(a, name: str, expected_shape: tuple, plane: int, *, check_range: bool = True) -> np.ndarray:
    """int64 indices of ``expected_shape`` whose values lie in ``[0, plane)``.

    ``check_range=False`` leaves the value check to a caller that does it in
    the same pass as its own work (the C++ kernel does).
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray of int64, got {type(a).__name__}")
    if a.dtype != np.int64:
        raise TypeError(f"`{name}` must have dtype int64, got {a.dtype}")
    if a.shape != tuple(expected_shape):
        raise ValueError(f"`{name}` must have shape {tuple(expected_shape)} (the shape of `dy`), got {a.shape}")
    if check_range and a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= plane:
            bad = lo if lo < 0 else hi
            raise ValueError(f"`{name}` values must lie in [0, {plane}) (H*W of `x_shape`), got {bad}")
    return a


def same_shape(a: np.ndarray, expected: tuple, name: str, what: str) -> None:
    if a.shape != tuple(expected):
        raise ValueError(f"`{name}` must have shape {tuple(expected)} ({what}), got {a.shape}")


# --------------------------------------------------------------------------- convolution


class ConvSpec(NamedTuple):
    """Fully resolved convolution geometry (plain ints; pads per side)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    groups: int
    OH: int
    OW: int

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.OH, self.OW)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    def core_args(self) -> tuple[int, ...]:
        """The trailing int arguments of ``_core.conv2d_forward`` / ``conv2d_backward``."""
        return (self.sh, self.sw, self.pt, self.pb, self.pl, self.pr, self.dh, self.dw, self.groups)


def _conv_out(n: int, k: int, s: int, lo: int, hi: int, d: int, axis: str) -> int:
    """Convolution output size along ``axis``: the C++ formula (shape.hpp
    ``conv_out_size``), after checks that give Python's messages."""
    eff = d * (k - 1) + 1
    padded = n + lo + hi
    if padded > INT64_MAX or eff > INT64_MAX:
        raise ValueError(f"padded input ({padded}) or kernel extent ({eff}) overflows int64 along {axis}")
    if eff > padded:
        raise ValueError(
            f"kernel (effective size {eff} = dilation*(k-1)+1) is larger than the padded input "
            f"({n} + padding {lo}+{hi} = {padded}) along {axis}"
        )
    return int(_core.conv_out_size(n, k, s, lo, hi, d))


def conv_padding(padding, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]):
    """Per-side pads ``(top, bottom, left, right)`` for ``padding`` (int, pair, "same", "valid")."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"`padding`='same' requires stride 1, got `stride`={stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"`padding` must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = nonneg_pair(padding, "padding")
    return (ph, ph, pw, pw)


@_memo
def conv_spec(x_shape, w_shape, b_shape, stride, padding, dilation, groups) -> ConvSpec:
    """Check conv arguments given the shapes of ``x``, ``weight`` and ``bias`` (``None`` when absent)."""
    if len(x_shape) != 4:
        raise ValueError(f"`x` must have 4 dimensions (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"`weight` must have 4 dimensions (K, C/groups, kh, kw), got shape {tuple(w_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    K, Cg, kh, kw = (int(v) for v in w_shape)
    sh, sw = positive_pair(stride, "stride")
    dh, dw = positive_pair(dilation, "dilation")
    g = positive_int(groups, "groups")
    if kh == 0 or kw == 0:
        raise ValueError(f"`weight` kernel size must be positive, got shape {tuple(w_shape)}")
    if C % g:
        raise ValueError(f"`groups` ({g}) must divide the input channels of `x` (shape {tuple(x_shape)})")
    if K % g:
        raise ValueError(f"`groups` ({g}) must divide the output channels of `weight` (shape {tuple(w_shape)})")
    if Cg * g != C:
        raise ValueError(
            f"channel mismatch: `x` has shape {tuple(x_shape)} ({C} channels) but `weight` has shape "
            f"{tuple(w_shape)}, expecting {C // g} input channels per group with groups={g}"
        )
    if b_shape is not None and tuple(b_shape) != (K,):
        raise ValueError(f"`bias` must have shape ({K},) to match `weight` {tuple(w_shape)}, got {tuple(b_shape)}")
    pt, pb, pl, pr = conv_padding(padding, (kh, kw), (dh, dw), (sh, sw))
    OH = _conv_out(H, kh, sh, pt, pb, dh, "height")
    OW = _conv_out(W, kw, sw, pl, pr, dw, "width")
    checked_numel((N, K, OH, OW), "output")
    checked_numel((C, kh, kw, OH, OW), "im2col workspace")
    return ConvSpec(N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, g, OH, OW)


# --------------------------------------------------------------------------- pooling


class PoolSpec(NamedTuple):
    """Fully resolved pooling geometry (symmetric pads per axis)."""

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    ceil_mode: bool
    OH: int
    OW: int

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.OH, self.OW)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)


def pool_out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool, axis: str) -> int:
    """PyTorch's pooling output size, including the ceil_mode rule.

    The formula is the C++ one (shape.hpp ``pool_out_size``); the checks before
    it give Python's messages and keep arbitrary-precision ints out of int64.
    """
    eff = d * (k - 1) + 1
    padded = n + 2 * p
    if padded > INT64_MAX or eff > INT64_MAX:
        raise ValueError(f"padded input ({padded}) or window extent ({eff}) overflows int64 along {axis}")
    if eff > padded:
        raise ValueError(
            f"pooling window (effective size {eff}) is larger than the padded input "
            f"({n} + 2*padding {p} = {padded}) along {axis}"
        )
    return int(_core.pool_out_size(n, k, s, p, d, bool(ceil_mode)))


def _require_real_element(n: int, s: int, p: int, d: int, n_out: int, axis: str) -> None:
    """Reject dilated windows that see only padding (PyTorch returns -inf and an
    out-of-range index there).

    A window starting at ``start >= 0`` holds ``start < n`` (the ceil_mode rule).
    One starting at ``start < 0`` first meets the input at ``start mod d``, so
    only inputs smaller than the dilation can fail, and then ``k <= 3``, ``p <= 1``.
    """
    if n >= d:
        return
    for o in range(min(n_out, -(-p // s))):
        if (o * s - p) % d >= n:
            raise ValueError(
                f"pooling window {o} along {axis} covers only padding (input {n}, padding {p}, "
                f"dilation {d}); increase the input or reduce `dilation`/`padding`"
            )


@_memo
def pool_spec(x_shape, kernel_size, stride, padding, dilation, ceil_mode, *, pad_rule: bool = True) -> PoolSpec:
    """Check pooling arguments for an input of shape ``x_shape``.

    ``pad_rule`` enforces PyTorch's ``padding <= kernel_size // 2``.
    """
    if len(x_shape) != 4:
        raise ValueError(f"`x` must have 4 dimensions (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    kh, kw = positive_pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else positive_pair(stride, "stride")
    ph, pw = nonneg_pair(padding, "padding")
    dh, dw = positive_pair(dilation, "dilation")
    ceil_mode = flag(ceil_mode, "ceil_mode")
    if pad_rule and (ph > kh // 2 or pw > kw // 2):
        raise ValueError(
            f"`padding` must be at most half of `kernel_size` per axis, got padding {(ph, pw)} "
            f"with kernel_size {(kh, kw)}"
        )
    OH = pool_out_size(H, kh, sh, ph, dh, ceil_mode, "height")
    OW = pool_out_size(W, kw, sw, pw, dw, ceil_mode, "width")
    _require_real_element(H, sh, ph, dh, OH, "height")
    _require_real_element(W, sw, pw, dw, OW, "width")
    checked_numel((N, C, OH, OW), "output")
    return PoolSpec(N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, OH, OW)


def adaptive_size(x_shape, output_size) -> tuple[int, int]:
    """``output_size`` (int, pair, ``None`` entries keep the input size) as a positive pair."""
    if len(x_shape) != 4:
        raise ValueError(f"`x` must have 4 dimensions (N, C, H, W), got shape {tuple(x_shape)}")
    if x_shape[1] == 0 or x_shape[2] == 0 or x_shape[3] == 0:
        raise ValueError(f"`x` must have non-zero C, H and W for adaptive pooling, got shape {tuple(x_shape)}")
    oh, ow = pair(output_size, "output_size", allow_none=True)
    oh = int(x_shape[2]) if oh is None else oh
    ow = int(x_shape[3]) if ow is None else ow
    if oh <= 0 or ow <= 0:
        raise ValueError(f"`output_size` must be positive, got {output_size!r}")
    checked_numel((x_shape[0], x_shape[1], oh, ow), "output")
    return (oh, ow)


# --------------------------------------------------------------------------- fully connected


def linear_check(x_shape, w_shape, b_shape) -> None:
    """``x`` (N, in), ``weight`` (out, in), ``bias`` (out,) or None."""
    if len(x_shape) != 2:
        raise ValueError(f"`x` must have 2 dimensions (N, in_features), got shape {tuple(x_shape)}")
    if len(w_shape) != 2:
        raise ValueError(f"`weight` must have 2 dimensions (out_features, in_features), got shape {tuple(w_shape)}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(
            f"feature mismatch: `x` has shape {tuple(x_shape)} but `weight` has shape {tuple(w_shape)}"
        )
    if b_shape is not None and tuple(b_shape) != (w_shape[0],):
        raise ValueError(f"`bias` must have shape ({w_shape[0]},) to match `weight` {tuple(w_shape)}, got {tuple(b_shape)}")


# --------------------------------------------------------------------------- constructor and training arguments
#
# The checks of the layers' constructors, the optimizers, the training loop and
# the tools above it (a bool that must be a bool, an int in a range, a finite
# number in an interval). They raise TypeError for a value of the wrong type
# and ValueError for one out of range, naming the argument.

INT32_MAX = 2**31 - 1


def int_in(value, name: str, lo: int = 1, hi: int | None = None) -> int:
    """An int in ``[lo, hi]`` (no upper bound when ``hi`` is None); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        if hi is None or hi == INT32_MAX:
            if value < lo:
                raise ValueError(f"`{name}` must be >= {lo}, got {value}")
            raise ValueError(f"`{name}` must be at most 2**31-1 ({hi}), got {value}")
        raise ValueError(f"`{name}` must be in [{lo}, {hi}], got {value}")
    return value


def int_or_pair(value, name: str, lo: int = 1, hi: int | None = INT32_MAX) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of ints in ``[lo, hi]``, returned as a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"`{name}` must be an int or an (h, w) pair, got {value!r}")
        return (int_in(value[0], name, lo, hi), int_in(value[1], name, lo, hi))
    v = int_in(value, name, lo, hi)
    return (v, v)


def int_at_least(value, name: str, lo: int) -> int:
    """An int >= ``lo``; anything else is a ValueError (the tools' convention)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"`{name}` must be an int >= {lo}, got {value!r}")
    return int(value)


def real_in(value, name: str, lo=-math.inf, hi=math.inf, lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite number in the interval from ``lo`` to ``hi`` (each end open or closed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = (
        not math.isfinite(value)
        or value < lo
        or value > hi
        or (lo_open and value == lo)
        or (hi_open and value == hi)
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"`{name}` must be finite and in {left}{lo}, {hi}{right}, got {value!r}")
    return value


def positive_real(value, name: str) -> float:
    """A positive finite number; anything else is a ValueError (the tools' convention)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and float(value) > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def boolean(value, name: str) -> bool:
    """A bool (or numpy bool); ints are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def choice(value, name: str, allowed: tuple):
    """One of ``allowed`` (compared with ==, bools never stand for ints)."""
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        raise ValueError(f"`{name}` must be {_one_of(allowed)}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"`{name}` must be {_one_of(allowed)}, got {value!r}")
    return value


def _one_of(allowed) -> str:
    shown = [repr(a) for a in allowed]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
