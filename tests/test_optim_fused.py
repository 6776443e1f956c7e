"""The fused C++ optimizer updates (``_core.sgd_step`` & co.) against the NumPy code, bit for bit; ``all_finite``.

Each case runs the same steps from the same start twice, once on the fused
path and once with ``optimizers._FUSED`` off (the NumPy code, the oracle),
and compares the parameters and every state array as raw bits. With
infinities and NaNs of several payloads in the gradients, the NaNs must be
at the same places and every other element the same bits, but the payload of
a NaN where two different NaNs met is left open: NumPy itself gives either
operand's, depending on the array's length and the element's place in it
(``test_numpy_nan_payloads_are_not_a_function_of_the_operands``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import striate as st
from striate import _core, optim
from striate.optim import optimizers
from striate.training import step as train_step_module

UINT = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
DTYPES = [np.float32, np.float64]
SIZES = [(1,), (7,), (3, 11), (5, 203)]  # no size a multiple of 16
LARGE = (1031, 1021)  # 1.05 M elements: the threaded path

SGD_CASES = [
    dict(lr=0.05, momentum=m, dampening=d, nesterov=n, weight_decay=wd)
    for m, d, n, wd in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.01])
    if not n or (m > 0 and d == 0)
]
ADAM_CASES = [
    dict(lr=lr, betas=b, eps=eps, weight_decay=wd)
    for lr, b, eps, wd in [
        (1e-2, (0.9, 0.999), 1e-8, 0.0),
        (3e-3, (0.8, 0.99), 1e-6, 0.0),
        (1e-2, (0.9, 0.999), 1e-8, 0.05),
        (0.1, (0.0, 0.5), 0.0, 0.3),
    ]
]
RMSPROP_CASES = [
    dict(lr=1e-2, alpha=a, eps=1e-8, weight_decay=wd, momentum=m, centered=c)
    for a, wd, m, c in itertools.product([0.99, 0.5], [0.0, 0.1], [0.0, 0.5], [False, True])
]
CASES = ([(optim.SGD, kw) for kw in SGD_CASES] + [(optim.Adam, kw) for kw in ADAM_CASES]
         + [(optim.AdamW, kw) for kw in ADAM_CASES] + [(optim.RMSprop, kw) for kw in RMSPROP_CASES])
CASE_IDS = [f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "lr") for cls, kw in CASES]


def _bits(a):
    return np.ascontiguousarray(a).view(UINT[a.dtype])


def _same(a, b, nan_payloads=True):
    """Bit for bit (the sign of zero included; NaN payloads too unless ``nan_payloads`` is False)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if nan_payloads:
        return np.array_equal(_bits(a), _bits(b))
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(_bits(a)[~nan], _bits(b)[~nan])


def _grad(rng, shape, dtype, kind, k):
    g = rng.standard_normal(shape)
    if kind == "subnormal":  # every value, and every other parameter, below the smallest normal
        g = g * (1e-40 if dtype == np.float32 else 1e-310)
    g = g.astype(dtype)
    if kind == "nonfinite":
        flat = g.reshape(-1)
        payload = np.array([0x7FC01234], np.uint32).view(np.float32) if dtype == np.float32 else \
            np.array([0x7FF8000000001234], np.uint64).view(np.float64)
        specials = [np.inf, -np.inf, np.nan, -np.nan, payload[0]]  # -nan: the sign set, as x86's default NaN
        for j in range(min(flat.size, 6)):
            flat[j] = specials[(j + k) % len(specials)]  # the specials move: a NaN meets an inf of the step before
        flat[-1] = np.nan if k % 2 else 1.0
    return g


def _start(rng, shape, dtype, kind):
    x = rng.standard_normal(shape)
    if kind == "subnormal":
        x[::2] *= 1e-40 if dtype == np.float32 else 1e-310
    return x.astype(dtype)


def _run(cls, kwargs, shape, dtype, kind, fused, steps=4, seed=7):
    """(param, state_dict, whether the scratch arrays were used) after ``steps`` steps."""
    rng = np.random.default_rng(seed)
    p = st.Parameter(_start(rng, shape, dtype, kind), "w")
    before = optimizers._FUSED
    optimizers._FUSED = fused
    try:
        opt = cls([p], **kwargs)
        with np.errstate(all="ignore"):
            for k in range(steps):
                p.grad = _grad(rng, shape, dtype, kind, k)
                g0 = p.grad.copy()
                opt.step()
                assert _same(p.grad, g0)  # grad is never modified
    finally:
        optimizers._FUSED = before
    return p.data, opt.state_dict(), bool(opt._scratch._bufs)


def _assert_same_state(a, b, nan_payloads=True):
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert _same(a[k], b[k], nan_payloads), k
        else:
            assert a[k] == b[k], k


def _check(cls, kwargs, shape, dtype, kind):
    pf, sf, scratch_f = _run(cls, kwargs, shape, dtype, kind, fused=True)
    pn, sn, scratch_n = _run(cls, kwargs, shape, dtype, kind, fused=False)
    assert not scratch_f and scratch_n  # the fused path ran, without the NumPy temporaries
    strict = kind != "nonfinite"
    assert _same(pf, pn, strict)
    _assert_same_state(sf, sn, strict)
    return pf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CASES, ids=CASE_IDS)
def test_fused_matches_numpy_bit_for_bit(cls, kwargs, dtype):
    for shape in SIZES:
        _check(cls, kwargs, shape, dtype, "normal")


@pytest.mark.parametrize("kind", ["subnormal", "nonfinite"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CASES, ids=CASE_IDS)
def test_fused_matches_numpy_on_subnormals_and_nonfinite(cls, kwargs, dtype, kind):
    p = _check(cls, kwargs, (5, 203), dtype, kind)
    if kind == "nonfinite":
        assert np.isnan(p.reshape(-1)[:6]).all()  # the specials reached the parameters


def test_numpy_nan_payloads_are_not_a_function_of_the_operands():
    """Why the non-finite cases leave the payload of colliding NaNs open."""
    a = np.full(17, np.nan, np.float32)
    b = np.full(17, -np.nan, np.float32)
    signs = set(np.signbit(a + b)) | set(np.signbit(np.add(a[:1], b[:1])))
    c = a[:1].copy()
    c += b[:1]
    signs |= set(np.signbit(c))
    assert signs == {False, True}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_centered_negative_variance_gives_nan_as_numpy(dtype, momentum):
    """sqrt(square_avg - grad_avg**2) of a negative number: NaN on both paths, the same bits."""
    out = []
    for fused in (True, False):
        p = st.Parameter(np.linspace(-1, 1, 37).astype(dtype), "w")
        opt = optim.RMSprop([p], lr=0.01, momentum=momentum, centered=True)
        state = {"type": "RMSprop", **opt.state_dict(), "state.0.step": 3,
                 "state.0.square_avg": np.full(37, 1e-3, dtype), "state.0.grad_avg": np.linspace(0, 1, 37).astype(dtype)}
        if momentum:
            state["state.0.momentum_buffer"] = np.zeros(37, dtype)
        opt.load_state_dict(state)
        optimizers._FUSED = fused
        try:
            with np.errstate(invalid="ignore"):
                for k in range(3):
                    p.grad = np.cos(np.arange(37) + k).astype(dtype)
                    opt.step()
        finally:
            optimizers._FUSED = True
        assert bool(opt._scratch._bufs) is not fused
        out.append((p.data, opt.state_dict()))
    assert np.isnan(out[0][0]).any() and not np.isnan(out[0][0]).all()
    assert _same(out[0][0], out[1][0])
    _assert_same_state(out[0][1], out[1][1])


LARGE_CASES = [
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    (optim.SGD, dict(lr=0.05)),
    (optim.Adam, dict(lr=1e-2, weight_decay=0.05)),
    (optim.AdamW, dict(lr=1e-2)),
    (optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.1)),
    (optim.RMSprop, dict(lr=1e-2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", LARGE_CASES, ids=[f"{c.__name__}{j}" for j, (c, _) in enumerate(LARGE_CASES)])
def test_fused_large_threaded_and_thread_count_independent(cls, kwargs, dtype):
    st.set_num_threads(2)
    p2 = _check(cls, kwargs, LARGE, dtype, "nonfinite")
    st.set_num_threads(1)
    p1, _, _ = _run(cls, kwargs, LARGE, dtype, "nonfinite", fused=True)
    assert _same(p1, p2)


def test_fused_state_dict_round_trip_continues_identically(rng):
    """A state saved on one path and loaded on the other gives the same next steps."""
    for cls, kwargs in [(optim.SGD, SGD_CASES[-1]), (optim.Adam, ADAM_CASES[2]), (optim.RMSprop, RMSPROP_CASES[-1])]:
        results = []
        for fused in (True, False):
            r = np.random.default_rng(3)
            p = st.Parameter(r.standard_normal((6, 5)).astype(np.float32), "w")
            opt = cls([p], **kwargs)
            optimizers._FUSED = fused
            try:
                for _ in range(2):
                    p.grad = r.standard_normal((6, 5)).astype(np.float32)
                    opt.step()
                d = opt.state_dict()
                opt2 = cls([p], **kwargs)
                opt2.load_state_dict(d)
                optimizers._FUSED = not fused
                for _ in range(2):
                    p.grad = r.standard_normal((6, 5)).astype(np.float32)
                    opt2.step()
            finally:
                optimizers._FUSED = True
            results.append((p.data.copy(), opt2.state_dict()))
        assert _same(results[0][0], results[1][0])
        _assert_same_state(results[0][1], results[1][1])


def _numpy_path_taken(make_param, cls, kwargs, grad_of=None, backend=None):
    """Runs 3 steps with the fused path on; asserts the NumPy path ran (scratch used) and the NumPy result."""
    out = []
    for fused in (True, False):
        p = make_param()
        opt = cls([p], **kwargs)
        optimizers._FUSED = fused
        try:
            if backend:
                st.set_backend(backend)
            for k in range(3):
                p.grad = grad_of(p, k) if grad_of else (np.cos(np.arange(p.data.size) + k).reshape(p.data.shape)
                                                        .astype(p.data.dtype))
                opt.step()
        finally:
            optimizers._FUSED = True
            st.set_backend("cpp")
        assert opt._scratch._bufs  # the NumPy code ran
        out.append((np.array(p.data), opt.state_dict()))
    assert _same(out[0][0], out[1][0])
    _assert_same_state(out[0][1], out[1][1])


@pytest.mark.parametrize("cls,kwargs", [(optim.SGD, SGD_CASES[-1]), (optim.Adam, ADAM_CASES[2]),
                                        (optim.AdamW, ADAM_CASES[3]), (optim.RMSprop, RMSPROP_CASES[-1])])
def test_numpy_path_where_the_kernel_does_not_apply(cls, kwargs):
    base = np.linspace(-1, 1, 60).reshape(6, 10)
    # a Fortran-ordered parameter, a float16 one, the numpy backend
    _numpy_path_taken(lambda: st.Parameter(np.asfortranarray(base.astype(np.float32)), "w"), cls, kwargs)
    _numpy_path_taken(lambda: st.Parameter(base.astype(np.float16), "w"), cls, kwargs)
    _numpy_path_taken(lambda: st.Parameter(base.astype(np.float32), "w"), cls, kwargs, backend="numpy")
    # a non-contiguous gradient
    _numpy_path_taken(lambda: st.Parameter(base.astype(np.float64), "w"), cls, kwargs,
                      grad_of=lambda p, k: np.asfortranarray(np.sin(p.data + k)))
    # the gradient is the parameter itself: one pass would read values the NumPy code has already changed
    _numpy_path_taken(lambda: st.Parameter(base.astype(np.float32), "w"), cls, kwargs, grad_of=lambda p, k: p.data)


def test_read_only_gradient_takes_the_fused_path():
    for fused in (True, False):
        p = st.Parameter(np.linspace(-1, 1, 40).astype(np.float32), "w")
        opt = optim.Adam([p], lr=0.1)
        optimizers._FUSED = fused
        try:
            g = np.full(40, 0.5, np.float32)
            g.flags.writeable = False
            p.grad = g
            opt.step()
        finally:
            optimizers._FUSED = True
        assert bool(opt._scratch._bufs) is not fused
        if fused:
            pf = p.data.copy()
    assert _same(pf, p.data)


def test_fused_multiple_groups_and_parameters():
    def run(fused):
        r = np.random.default_rng(5)
        ps = [st.Parameter(r.standard_normal(s).astype(dt), f"p{j}")
              for j, (s, dt) in enumerate([((4, 3), np.float32), ((17,), np.float64), ((2, 2), np.float32)])]
        opt = optim.SGD([{"params": ps[:2], "momentum": 0.9}, {"params": ps[2:], "lr": 0.3}], lr=0.1)
        optimizers._FUSED = fused
        try:
            for _ in range(3):
                for p in ps:
                    p.grad = r.standard_normal(p.data.shape).astype(p.data.dtype)
                ps[1].grad = ps[1].grad.astype(np.float32)  # cast to the parameter's dtype by the optimizer
                opt.step()
        finally:
            optimizers._FUSED = True
        return [p.data for p in ps], opt.state_dict()

    (pa, sa), (pb, sb) = run(True), run(False)
    assert all(_same(a, b) for a, b in zip(pa, pb))
    _assert_same_state(sa, sb)


# ---------------------------------------------------------------------------- the kernels' arguments


def _sgd_args(**kw):
    a = dict(lr=0.1, weight_decay=None, momentum=0.0, dampening=None, nesterov=False, first=False)
    a.update(kw)
    return a


def test_kernel_argument_errors():
    p = np.zeros((3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="`param` must be a float32 or float64 array, got dtype int64"):
        _core.sgd_step(np.zeros((3, 4), np.int64), g, None, **_sgd_args())
    with pytest.raises(TypeError, match="`param` must be a numpy array"):
        _core.sgd_step([1.0], g, None, **_sgd_args())
    with pytest.raises(TypeError, match="`grad` must be a float32 array, got dtype float64"):
        _core.sgd_step(p, g.astype(np.float64), None, **_sgd_args())
    with pytest.raises(ValueError, match=r"`grad` must have shape \(3, 4\), got \(4, 3\)"):
        _core.sgd_step(p, np.ones((4, 3), np.float32), None, **_sgd_args())
    with pytest.raises(TypeError, match="`grad` must be C-contiguous"):
        _core.sgd_step(p, np.ones((4, 3), np.float32).T, None, **_sgd_args())
    with pytest.raises(ValueError, match=r"`momentum_buffer` must have shape \(3, 4\)"):
        _core.sgd_step(p, g, np.zeros(12, np.float32), **_sgd_args(momentum=0.9))
    ro = np.zeros((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`param` must be writable"):
        _core.sgd_step(ro, g, None, **_sgd_args())
    with pytest.raises(TypeError, match="`exp_avg_sq` must be a float64 array"):
        _core.adam_step(p.astype(np.float64), g.astype(np.float64), np.zeros((3, 4)), np.zeros((3, 4), np.float32),
                        step_size=0.1, weight_decay=None, decoupled=None, one_minus_beta1=0.1, beta2=0.999,
                        one_minus_beta2=0.001, bias_correction2=0.5, eps=1e-8)
    with pytest.raises(ValueError, match="exclude each other"):
        _core.adam_step(p, g, np.zeros_like(p), np.zeros_like(p), step_size=0.1, weight_decay=0.1, decoupled=0.9,
                        one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=0.001, bias_correction2=0.5, eps=1e-8)
    with pytest.raises(TypeError, match="`grad_avg` must be C-contiguous"):
        _core.rmsprop_step(p, g, np.zeros_like(p), np.zeros((4, 3), np.float32).T, None, lr=0.1, alpha=0.9,
                           one_minus_alpha=0.1, eps=1e-8, weight_decay=None, momentum=0.0)
    assert (p == 0).all()  # nothing written by a refused call


def test_kernel_refuses_overlapping_arrays_without_writing():
    p = np.linspace(1, 2, 12).astype(np.float32)
    before = p.copy()
    assert _core.sgd_step(p, p, None, **_sgd_args()) is False
    buf = np.zeros(24, np.float32)
    q = np.ones(12, np.float32)
    assert _core.sgd_step(q, np.ones(12, np.float32), buf[6:18], **_sgd_args(momentum=0.9)) is True
    assert _core.sgd_step(buf[:12], np.ones(12, np.float32), buf[6:18], **_sgd_args(momentum=0.9)) is False
    m = np.zeros(12, np.float32)
    assert _core.adam_step(p, np.ones(12, np.float32), m, m, step_size=0.1, weight_decay=None, decoupled=None,
                           one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=0.001, bias_correction2=0.5,
                           eps=1e-8) is False
    assert _same(p, before) and (m == 0).all()
    empty = np.zeros(0, np.float32)
    assert _core.sgd_step(empty, empty, empty, **_sgd_args(momentum=0.9, first=True)) is True


# ---------------------------------------------------------------------------- all_finite


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 15, 2049, 70001, 1 << 20])
def test_all_finite(dtype, n):
    a = np.linspace(-3, 3, n).astype(dtype)
    assert _core.all_finite(a) is True
    if n == 0:
        return
    tiny = a.copy()
    tiny[:] = np.finfo(dtype).smallest_subnormal
    tiny[-1] = np.finfo(dtype).max
    assert _core.all_finite(tiny) is True
    for pos, v in [(-1, np.nan), (0, np.inf), (n // 2, -np.inf), (0, -np.nan)]:
        b = a.copy()
        b[pos] = v
        assert _core.all_finite(b) is False
        assert _core.all_finite(b.reshape(1, -1)) is False


def test_all_finite_thread_counts():
    a = np.ones(1 << 20, np.float32)
    a[-1] = np.inf
    for t in (1, 2):
        st.set_num_threads(t)
        assert _core.all_finite(a) is False
        assert _core.all_finite(a[:-1]) is True


def test_all_finite_argument_errors():
    with pytest.raises(TypeError, match="`a` must be a float32 or float64 array, got dtype int32"):
        _core.all_finite(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="`a` must be a float32 or float64 array, got dtype float16"):
        _core.all_finite(np.zeros(3, np.float16))
    with pytest.raises(TypeError, match="`a` must be a numpy array, got list"):
        _core.all_finite([1.0])
    with pytest.raises(TypeError, match="`a` must be C-contiguous"):
        _core.all_finite(np.zeros((3, 4), np.float32).T)
    with pytest.raises(TypeError, match="`a` must be aligned"):
        _core.all_finite(np.frombuffer(bytes(17), np.float32, count=4, offset=1))


def test_first_nonfinite_grad_uses_both_paths():
    ps = [st.Parameter(np.zeros(s, dt), f"p{j}") for j, (s, dt) in
          enumerate([((3, 4), np.float32), ((4, 3), np.float64), ((5,), np.float16), ((6,), np.float32)])]
    for p in ps:
        p.grad = np.ones_like(p.data)
    ps[1].grad = np.ones((3, 4)).T  # non-contiguous: the NumPy fallback
    assert train_step_module._first_nonfinite_grad(ps) is None
    ps[1].grad = np.ones((3, 4)).T.copy()
    ps[1].grad[2, 1] = np.nan
    ps[1].grad = np.asfortranarray(ps[1].grad)
    assert train_step_module._first_nonfinite_grad(ps) == "p1"
    ps[1].grad = np.ones((4, 3))
    ps[2].grad = np.array([1, 2, np.inf, 4, 5], np.float16)
    assert train_step_module._first_nonfinite_grad(ps) == "p2"
    ps[2].grad = None
    ps[3].grad[-1] = -np.inf
    assert train_step_module._first_nonfinite_grad(ps) == "p3"
    ps[3].trainable = False
    assert train_step_module._first_nonfinite_grad(ps) is None
