"""Direct ``striate._core`` calls with hostile arguments (Guarantee 20, and 5-6 at the core level).

Every entry point of the extension is called the way a careless or hostile
caller would: misaligned buffers (a float32 array starting one byte into its
memory), negative-stride and other non-contiguous views, the wrong dtype,
objects that are not arrays, read-only outputs, sizes whose byte count
overflows int64 or cannot be allocated, and integers at and beyond the int64
range. Each call must raise a clean ``TypeError``/``ValueError``/
``MemoryError`` that names the argument or the op, or compute the right
result; never crash. ``tools/sanitize.sh`` runs this module under ASan+UBSan,
where any undefined behaviour aborts the run.

Not here: the argument rules of the public API (test_functional.py), the
kernels' numerics (test_core_conv.py, test_core_pool.py, test_gemm.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import striate as st
import striate.functional as F
from striate import _core

f32 = np.float32
I64_MAX = 2**63 - 1
PYTHON_DIR = str(Path(st.__file__).resolve().parent.parent)
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def misaligned(a):
    """A copy of ``a`` whose data starts one byte past an aligned address."""
    a = np.ascontiguousarray(a)
    out = np.frombuffer(b"\0" + a.tobytes(), a.dtype, count=a.size, offset=1).reshape(a.shape)
    assert not out.flags.aligned
    return out


def reversed_view(a):
    """The same values as ``a`` (reversed along the last axis) in a negative-stride view."""
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1]


X = np.arange(2 * 3 * 6 * 6, dtype=f32).reshape(2, 3, 6, 6) / 50
W = np.ones((4, 3, 3, 3), f32) / 9
B = np.arange(4, dtype=f32)
Y_CONV = _core.conv2d_forward(X, W, B, 1, 1, 0, 0, 0, 0, 1, 1, 1)
Y_MAX, IND = _core.max_pool2d_forward(X, 2, 2, 2, 2, 0, 0, 1, 1, False)
Y_AVG = _core.avg_pool2d_forward(X, 2, 2, 2, 2, 0, 0, False, True)
Y_LP = _core.lp_pool2d_forward(X, 2.0, 2, 2, 2, 2, False)
A2 = np.arange(12, dtype=f32).reshape(3, 4)
B2 = np.arange(20, dtype=f32).reshape(4, 5)
D4 = np.full(2, 0.5)
TOP = np.zeros(2, np.int64)

# Each entry point with its array arguments by name; call(**arrays) runs it.
ENTRY_POINTS = {
    "conv2d_forward": (lambda x, w, b: _core.conv2d_forward(x, w, b, 1, 1, 0, 0, 0, 0, 1, 1, 1),
                       dict(x=X, w=W, b=B)),
    "conv2d_backward": (lambda dy, x, w: _core.conv2d_backward(dy, x, w, 1, 1, 0, 0, 0, 0, 1, 1, 1, True, True, True),
                        dict(dy=Y_CONV, x=X, w=W)),
    "max_pool2d_forward": (lambda x: _core.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False), dict(x=X)),
    "max_pool2d_backward": (lambda dy, indices: _core.max_pool2d_backward(dy, indices, 6, 6),
                            dict(dy=Y_MAX, indices=IND)),
    "avg_pool2d_forward": (lambda x: _core.avg_pool2d_forward(x, 2, 2, 2, 2, 0, 0, False, True), dict(x=X)),
    "avg_pool2d_backward": (lambda dy: _core.avg_pool2d_backward(dy, 6, 6, 2, 2, 2, 2, 0, 0, False, True),
                            dict(dy=Y_AVG)),
    "lp_pool2d_forward": (lambda x: _core.lp_pool2d_forward(x, 2.0, 2, 2, 2, 2, False), dict(x=X)),
    "lp_pool2d_backward": (lambda dy, x, y: _core.lp_pool2d_backward(dy, x, y, 2.0, 2, 2, 2, 2, False),
                           dict(dy=Y_LP, x=X, y=Y_LP)),
    "adaptive_avg_pool2d_forward": (lambda x: _core.adaptive_avg_pool2d_forward(x, 2, 3), dict(x=X)),
    "adaptive_avg_pool2d_backward": (lambda dy: _core.adaptive_avg_pool2d_backward(dy, 6, 6),
                                     dict(dy=np.ones((2, 3, 2, 3), f32))),
    "matmul": (lambda a, b: _core.matmul(a, b), dict(a=A2, b=B2)),
    "_sgemm": (lambda a, b, c: _core._sgemm(a, b, c, False, False, 3, 5, 4, 4, 5, 5),
               dict(a=A2.ravel(), b=B2.ravel(), c=np.zeros(15, f32))),
    "_sgemm_naive": (lambda a, b, c: _core._sgemm_naive(a, b, c, False, False, 3, 5, 4, 4, 5, 5),
                     dict(a=A2.ravel(), b=B2.ravel(), c=np.zeros(15, f32))),
    "augment_affine": (lambda x, angle, tx, ty, scale: _core.augment_affine(x, angle, tx, ty, scale, 0.0),
                       dict(x=X, angle=D4, tx=D4, ty=D4, scale=D4)),
    "augment_hflip": (lambda x, flags: _core.augment_hflip(x, flags), dict(x=X, flags=np.ones(2, np.uint8))),
    "augment_crop": (lambda x, top, left: _core.augment_crop(x, top, left, 4, 4, 1, 0.0),
                     dict(x=X, top=TOP, left=TOP)),
    "augment_grayscale": (lambda x: _core.augment_grayscale(x, 1), dict(x=X)),
}
CASES = [(ep, name) for ep, (_, arrays) in sorted(ENTRY_POINTS.items()) for name in arrays]


def _call(ep, **override):
    fn, arrays = ENTRY_POINTS[ep]
    args = {k: (v.copy() if k == "c" else v) for k, v in arrays.items()}
    args.update(override)
    return fn(**args)


def _same(a, b):
    if isinstance(a, tuple):
        return all(_same(p, q) for p, q in zip(a, b))
    if a is None or isinstance(a, (int, float)):
        return a == b
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("ep, name", CASES)
def test_misaligned_buffers_are_refused(ep, name):
    """Guarantee 20: a buffer that starts one byte off is refused with a TypeError naming it, never read."""
    arr = ENTRY_POINTS[ep][1][name]
    if arr.itemsize == 1:
        pytest.skip("a one-byte dtype is aligned at every address")
    with pytest.raises(TypeError, match=rf"`{name}` must be aligned to {arr.itemsize} bytes"):
        _call(ep, **{name: misaligned(arr)})


@pytest.mark.parametrize("ep, name", CASES)
def test_non_contiguous_and_negative_stride_buffers_are_refused(ep, name):
    """Guarantee 20: negative-stride and strided views are refused (naming the argument); the copy computes."""
    arr = ENTRY_POINTS[ep][1][name]
    views = [reversed_view(arr)]
    if arr.ndim == 1 and arr.size > 1:
        views.append(np.repeat(arr, 2)[::2])
    elif arr.ndim > 1:
        views.append(np.asfortranarray(arr) if arr.shape[-1] > 1 and arr.shape[-2] > 1 else arr[..., ::-1])
    for v in views:
        if v.flags.c_contiguous:
            continue
        np.testing.assert_array_equal(v, arr)
        with pytest.raises(TypeError, match=rf"`{name}` must be C-contiguous"):
            _call(ep, **{name: v})
        assert _same(_call(ep, **{name: np.ascontiguousarray(v)}), _call(ep))


@pytest.mark.parametrize("ep, name", CASES)
def test_wrong_dtypes_and_non_arrays_are_type_errors(ep, name):
    """Guarantee 5/20: another dtype (byte-swapped included) or a non-array is a TypeError naming the argument."""
    arr = ENTRY_POINTS[ep][1][name]
    others = [np.float64, np.float16, np.int32, np.int64, np.uint8, arr.dtype.newbyteorder(">")]
    for dt in others:
        if np.dtype(dt) == arr.dtype:
            continue
        # hflip's flags of another dtype were always a ValueError; both name the argument
        exc = ValueError if (ep, name) == ("augment_hflip", "flags") else TypeError
        with pytest.raises(exc, match=rf"`{name}`"):
            _call(ep, **{name: arr.astype(dt)})
    if (ep, name) in {("conv2d_forward", "b"), ("augment_hflip", "flags")}:
        assert _same(_call(ep, **{name: None}), _call(ep, **{name: None}))  # optional: None is valid
    else:
        with pytest.raises(TypeError, match=rf"`{name}` must be a numpy array, got NoneType"):
            _call(ep, **{name: None})
    with pytest.raises(TypeError, match=rf"`{name}`"):
        _call(ep, **{name: arr.tolist()})


def test_aligned_copies_and_masked_arrays_compute_the_same():
    """Guarantee 20: what is accepted computes the same as the plain array (an ndarray subclass included)."""
    for ep in ENTRY_POINTS:
        fn, arrays = ENTRY_POINTS[ep]
        base = _call(ep)
        again = _call(ep, **{k: np.array(v, copy=True) for k, v in arrays.items()})
        assert _same(base, again), ep
    m = np.ma.masked_array(X, mask=np.zeros_like(X, bool))
    assert _same(_core.max_pool2d_forward(m, 2, 2, 2, 2, 0, 0, 1, 1, False), (Y_MAX, IND))


def test_read_only_outputs_and_empty_misaligned_inputs():
    """Guarantee 20: an in-place output must be writable; a size-0 array is not checked for alignment."""
    c = np.zeros(15, f32)
    c.flags.writeable = False
    with pytest.raises(ValueError, match="`c` must be writable"):
        _core._sgemm(A2.ravel(), B2.ravel(), c, False, False, 3, 5, 4, 4, 5, 5)
    empty = np.frombuffer(b"\0", f32, count=0, offset=1).reshape(0, 3, 6, 6)
    y, ind = _core.max_pool2d_forward(empty, 2, 2, 2, 2, 0, 0, 1, 1, False)
    assert y.shape == ind.shape == (0, 3, 3, 3)


# ----------------------------------------------------------------------------- byte counts

X1 = np.ones((1, 1, 1, 1), f32)
DY1 = np.ones((1, 1, 1, 1), f32)
IX1 = np.zeros((1, 1, 1, 1), np.int64)
BIG = 2**31

BYTE_OVERFLOW = {
    # element counts that fit in int64, byte counts that do not (the reproducers)
    "conv2d_forward": lambda: F.conv2d(X1, np.ones((1, 1, 1, 1), f32), padding=2**30),
    "adaptive_avg_pool2d_forward": lambda: F.adaptive_avg_pool2d(np.ones((1, 1, 2, 2), f32), (BIG, BIG)),
    "max_pool2d_backward": lambda: F.max_pool2d_backward(DY1, IX1, (1, 1, BIG, BIG)),
    "avg_pool2d_backward": lambda: F.avg_pool2d_backward(DY1, (1, 1, BIG, BIG), 1, BIG),
    "adaptive_avg_pool2d_backward": lambda: _core.adaptive_avg_pool2d_backward(DY1, BIG, BIG),
    "augment_uniform": lambda: _core.augment_uniform(1, 0, 2**31, 2**31),
}


@pytest.mark.parametrize("op", sorted(BYTE_OVERFLOW))
def test_byte_count_overflow_is_a_value_error_naming_the_op(op):
    """Guarantee 20: an output whose element count fits int64 but whose byte count does not is a ValueError.

    Unchecked, pybind11's stride arithmetic overflowed (UBSan abort) and the
    release build showed numpy's "array is too big" instead.
    """
    st.set_backend("cpp")
    with pytest.raises(ValueError, match=rf"`{op}`: output `\w+` of shape .*byte count overflows int64"):
        BYTE_OVERFLOW[op]()


def test_unallocatable_output_is_a_memory_error_naming_the_op_and_bytes():
    """Guarantee 20/24: 512 TiB (beyond any address space) is a MemoryError naming the op, the array and the bytes."""
    with pytest.raises(MemoryError, match=r"`adaptive_avg_pool2d_forward`: out of memory: output `y` of shape "
                                          r"\(1, 1, 16777216, 8388608\) needs 562949953421312 bytes"):
        _core.adaptive_avg_pool2d_forward(np.ones((1, 1, 2, 2), f32), 2**24, 2**23)
    with pytest.raises(MemoryError, match=r"`matmul`: out of memory: output `c`"):
        _core.matmul(np.ones((2**24, 1), f32), np.ones((1, 2**23), f32))


_WORKSPACE_SCRIPT = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import numpy as np
import striate as st
import striate.functional as F
st.set_isa("generic")  # im2col + GEMM for every shape (the vector paths split strides into phases instead)
x, w = np.ones((1, 16, 512, 512), np.float32), np.ones((1, 16, 64, 64), np.float32)
try:
    F.conv2d(x, w, stride=2)  # a 13 GB im2col workspace for a 200 KB output
except MemoryError as e:
    print("MemoryError:", e)
"""


@pytest.mark.skipif(UNDER_ASAN, reason="an address-space limit does not combine with ASan's shadow memory")
def test_workspace_out_of_memory_names_the_op():
    """Guarantee 24: a workspace that cannot be allocated is a MemoryError naming the op (not "std::bad_alloc")."""
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    r = subprocess.run([sys.executable, "-c", _WORKSPACE_SCRIPT], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"MemoryError: `conv2d_forward`: out of memory", r.stdout), r.stdout + r.stderr


# ----------------------------------------------------------------------------- integers at the edges

HUGE = [2**63, -(2**63) - 1, 2**64, 10**30]


@pytest.mark.parametrize("value", HUGE + [I64_MAX, -I64_MAX - 1, -1, 0])
def test_int_arguments_beyond_int64_are_clean_errors(value):
    """Guarantee 20: integers at and beyond the int64 range raise TypeError/ValueError in every geometry slot."""
    calls = [
        lambda v: _core.conv2d_forward(X, W, None, v, 1, 0, 0, 0, 0, 1, 1, 1),
        lambda v: _core.conv2d_forward(X, W, None, 1, 1, v, 0, 0, 0, 1, 1, 1),
        lambda v: _core.conv2d_forward(X, W, None, 1, 1, 0, 0, 0, 0, v, 1, 1),
        lambda v: _core.conv2d_forward(X, W, None, 1, 1, 0, 0, 0, 0, 1, 1, v),
        lambda v: _core.max_pool2d_forward(X, v, 2, 2, 2, 0, 0, 1, 1, False),
        lambda v: _core.max_pool2d_forward(X, 2, 2, v, 2, 0, 0, 1, 1, False),
        lambda v: _core.max_pool2d_backward(Y_MAX, IND, v, 6),
        lambda v: _core.avg_pool2d_backward(Y_AVG, v, v, 2, 2, 2, 2, 0, 0, False, True),
        lambda v: _core.adaptive_avg_pool2d_forward(X, v, v),
        lambda v: _core.adaptive_avg_pool2d_backward(np.ones((2, 3, 2, 3), f32), v, v),
        lambda v: _core._sgemm(A2.ravel(), B2.ravel(), np.zeros(15, f32), False, False, 3, 5, 4, v, 5, 5),
        lambda v: _core._sgemm(A2.ravel(), B2.ravel(), np.zeros(15, f32), False, False, v, 5, 4, 4, 5, 5),
        lambda v: _core.augment_crop(X, TOP, TOP, v, 4, 1, 0.0),
        lambda v: _core.augment_uniform(1, v, 2, 2),
        lambda v: _core.set_num_threads(v),
        lambda v: _core.conv_out_size(v, 3, 1, 0, 0, 1),
        lambda v: _core.pool_out_size(6, 2, v, 0, 1, False),
    ]
    for i, call in enumerate(calls):
        try:
            call(value)
        except (TypeError, ValueError):
            pass
        except Exception as e:  # pragma: no cover - reported with the call's index
            raise AssertionError(f"call {i} with {value}: {type(e).__name__}: {e}") from e


def test_uniform_start_near_int64_max_is_refused():
    """Guarantee 6/20: ``start + n`` past int64 would be signed overflow in the stream's counter."""
    with pytest.raises(ValueError, match=r"`start` \+ `n` overflows int64"):
        _core.augment_uniform(1, I64_MAX - 1, 4, 1)
    u = _core.augment_uniform(1, I64_MAX - 4, 4, 1)
    assert u.shape == (4, 1) and np.all((u >= 0) & (u < 1))


def test_sgemm_extents_and_thread_counts_are_checked():
    """Guarantee 6/19: a leading dimension whose extent overflows int64, or an absurd ``threads``, is a ValueError."""
    a, b, c = A2.ravel(), B2.ravel(), np.zeros(15, f32)
    with pytest.raises(ValueError, match="overflows int64"):
        _core._sgemm(a, b, c, False, False, 3, 5, 4, I64_MAX // 2, 5, 5)
    with pytest.raises(ValueError, match="`threads` must be at most 1024, got 5000"):
        _core._sgemm(a, b, c, False, False, 3, 5, 4, 4, 5, 5, threads=5000)
    with pytest.raises(ValueError, match="`threads` must be at most 1024"):
        _core._sgemm_task_count(False, False, 3, 5, 4, threads=5000)
    _core._sgemm(a, b, c, False, False, 3, 5, 4, 4, 5, 5, threads=3)
    np.testing.assert_array_equal(c.reshape(3, 5), _core.matmul(A2, B2))


@pytest.mark.parametrize("n", [0, -1, 1025, 2**31, 2**63, 2**70])
def test_core_set_num_threads_names_the_limit(n):
    """Guarantee 19: any int outside [1, 1024] reaches the range check (no "incompatible function arguments")."""
    before = _core.get_num_threads()
    with pytest.raises(ValueError, match=rf"`n` \(number of threads\) must be between 1 and 1024, got {n}"):
        _core.set_num_threads(n)
    assert _core.get_num_threads() == before
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match="`n` must be an int"):
            _core.set_num_threads(bad)
