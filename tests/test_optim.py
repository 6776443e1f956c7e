"""striate.optim: update rules (by hand and vs torch), state, validation, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import striate as st
from striate import optim


def _params(rng, dtype=np.float32):
    return [
        st.Parameter(rng.standard_normal((3, 4)).astype(dtype), "w"),
        st.Parameter(rng.standard_normal(4).astype(dtype), "b"),
    ]


def _grad(p, k):
    """A deterministic gradient that depends on the parameter and the step."""
    return (0.5 * p.data + np.sin(np.arange(p.data.size).reshape(p.data.shape) + k)).astype(p.data.dtype)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
]
ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=1e-2, weight_decay=0.05),
]


def _run(opt_cls, kwargs, params, steps=20):
    opt = opt_cls(params, **kwargs)
    for k in range(steps):
        for p in params:
            p.grad = _grad(p, k)
        opt.step()
    return opt


def _run_torch(torch, cls_name, kwargs, arrays, steps=20):
    tp = [torch.tensor(a.copy()) for a in arrays]
    opt = getattr(torch.optim, cls_name)(tp, **kwargs)
    for k in range(steps):
        for t in tp:
            holder = st.Parameter(t.numpy().copy(), "x")
            t.grad = torch.from_numpy(_grad(holder, k))
        opt.step()
    return [t.numpy() for t in tp]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", [("SGD", c) for c in SGD_CASES] + [("Adam", c) for c in ADAM_CASES])
def test_trajectory_matches_torch(name, kwargs, dtype, rng):
    torch = pytest.importorskip("torch")
    params = _params(rng, dtype)
    start = [p.data.copy() for p in params]
    _run(getattr(optim, name), kwargs, params)
    expect = _run_torch(torch, name, kwargs, start)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, e in zip(params, expect):
        np.testing.assert_allclose(p.data, e, **tol)


def test_sgd_by_hand():
    p = st.Parameter(np.array([1.0, -2.0]), "w")
    opt = optim.SGD([p], lr=0.1, momentum=0.5, weight_decay=0.2)
    p.grad = np.array([0.5, 0.5])
    opt.step()  # g = 0.5 + 0.2 * p = [0.7, 0.1]; buf = g; p -= 0.1 * buf
    np.testing.assert_allclose(p.data, [0.93, -2.01])
    p.grad = np.array([0.0, 0.0])
    opt.step()  # g = 0.2 * p = [0.186, -0.402]; buf = 0.5 * [0.7, 0.1] + g = [0.536, -0.352]
    np.testing.assert_allclose(p.data, [0.93 - 0.0536, -2.01 + 0.0352])


def test_sgd_nesterov_by_hand():
    p = st.Parameter(np.array([1.0]), "w")
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    p.grad = np.array([1.0])
    opt.step()  # buf = 1; g = 1 + 0.9 * 1 = 1.9
    np.testing.assert_allclose(p.data, [1.0 - 0.19])
    p.grad = np.array([1.0])
    opt.step()  # buf = 0.9 + 1 = 1.9; g = 1 + 0.9 * 1.9 = 2.71
    np.testing.assert_allclose(p.data, [0.81 - 0.271])


def test_adam_by_hand():
    p = st.Parameter(np.array([1.0, 1.0]), "w")
    opt = optim.Adam([p], lr=0.01, eps=1e-8)
    p.grad = np.array([3.0, -0.5])
    opt.step()  # first step: m_hat = g, v_hat = g^2 -> p -= lr * g / (|g| + eps)
    np.testing.assert_allclose(p.data, [1.0 - 0.01 * 3 / (3 + 1e-8), 1.0 + 0.01 * 0.5 / (0.5 + 1e-8)], rtol=1e-12)
    p.grad = np.array([1.0, 1.0])
    opt.step()
    m = 0.1 * np.array([3.0, -0.5]) * 0.9 + 0.1 * 1.0
    v = 0.001 * np.array([9.0, 0.25]) * 0.999 + 0.001 * 1.0
    step = 0.01 / (1 - 0.9**2) * m / (np.sqrt(v) / math.sqrt(1 - 0.999**2) + 1e-8)
    np.testing.assert_allclose(p.data, np.array([1.0 - 0.01 * 3 / (3 + 1e-8), 1.0 + 0.01 * 0.5 / (0.5 + 1e-8)]) - step, rtol=1e-12)
    assert opt.state[0]["step"] == 2


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
def test_in_place_and_skips(cls, rng):
    params = _params(rng)
    frozen = st.Parameter(np.ones(3, np.float32), "f", trainable=False)
    nograd = st.Parameter(np.ones(2, np.float32), "n")
    opt = cls(params + [frozen, nograd], lr=0.1)
    arrays = [p.data for p in params]
    before = [a.copy() for a in arrays]
    for p in params:
        p.grad = np.ones_like(p.data)
    frozen.grad = np.ones(3, np.float32)
    opt.step()
    for p, a, b in zip(params, arrays, before):
        assert p.data is a and p.data.dtype == np.float32
        assert not np.array_equal(a, b)
    np.testing.assert_array_equal(frozen.data, np.ones(3))
    np.testing.assert_array_equal(nograd.data, np.ones(2))
    opt.zero_grad()
    assert all(p.grad is None for p in params + [frozen, nograd])


@pytest.mark.parametrize(
    "cls, kwargs",
    [(optim.SGD, dict(momentum=0.9, nesterov=True)), (optim.SGD, {}), (optim.Adam, dict(weight_decay=0.1))],
)
def test_step_leaves_grads_untouched(cls, kwargs, rng):
    params = _params(rng)
    opt = cls(params, lr=0.1, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
        grads = [p.grad.copy() for p in params]
        opt.step()
        for g, p in zip(grads, params):
            np.testing.assert_array_equal(p.grad, g)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_lr_rejected(cls, lr, rng):
    with pytest.raises(ValueError, match="`lr`"):
        cls(_params(rng), lr=lr)


def test_argument_validation(rng):
    ps = _params(rng)
    with pytest.raises(ValueError, match="`nesterov`"):
        optim.SGD(ps, nesterov=True)
    with pytest.raises(ValueError, match="`momentum`"):
        optim.SGD(ps, momentum=-0.5)
    with pytest.raises(ValueError, match="`weight_decay`"):
        optim.SGD(ps, weight_decay=-1)
    with pytest.raises(ValueError, match=r"`betas\[0\]`"):
        optim.Adam(ps, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"`betas\[1\]`"):
        optim.Adam(ps, betas=(0.9, -0.1))
    with pytest.raises(ValueError, match="`betas`"):
        optim.Adam(ps, betas=0.9)
    with pytest.raises(ValueError, match="`eps`"):
        optim.Adam(ps, eps=-1e-8)
    with pytest.raises(TypeError, match="`lr`"):
        optim.SGD(ps, lr="0.1")
    with pytest.raises(ValueError, match="`params`"):
        optim.SGD([])
    with pytest.raises(TypeError, match=r"`params\[0\]`"):
        optim.SGD([np.zeros(3)])
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([ps[0], ps[0]])


def test_lr_setter_and_model_params(rng):
    model = st.Sequential([st.layers.Linear(3, 2)])
    opt = optim.SGD(model, lr=0.1)
    assert opt.params == model.parameters()
    opt.lr = 0.0  # schedules may reach zero
    assert opt.lr == 0.0
    with pytest.raises(ValueError, match="`lr`"):
        opt.lr = -1.0


@pytest.mark.parametrize("cls, kwargs", [(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)), (optim.Adam, dict(lr=0.01))])
def test_state_dict_resume_is_exact(cls, kwargs, rng):
    a = _params(rng)
    b = [st.Parameter(p.data.copy(), p.name) for p in a]
    opt_a = _run(cls, kwargs, a, steps=10)
    opt_b = _run(cls, kwargs, b, steps=5)
    sd = opt_b.state_dict()
    for k, v in sd.items():
        assert isinstance(v, (np.ndarray, int, float, bool, str)), k
    fresh = cls(b, **kwargs)
    fresh.load_state_dict(sd)
    for k in range(5, 10):
        for p in b:
            p.grad = _grad(p, k)
        fresh.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
    assert fresh.state_dict().keys() == opt_a.state_dict().keys()


def test_load_state_dict_is_all_or_nothing(rng):
    ps = _params(rng)
    opt = _run(optim.Adam, dict(lr=0.01), ps, steps=2)
    good = opt.state_dict()
    bad = dict(good)
    bad["state.1.exp_avg"] = np.zeros(7, np.float32)
    bad["lr"] = 0.5
    fresh = optim.Adam(ps, lr=0.01)
    with pytest.raises(ValueError, match="exp_avg"):
        fresh.load_state_dict(bad)
    assert fresh.lr == 0.01 and fresh.state == [{}, {}]
    with pytest.raises(ValueError, match="SGD"):
        optim.SGD(ps).load_state_dict(good)
    with pytest.raises(ValueError, match="no parameter"):
        fresh.load_state_dict({**good, "state.9.exp_avg": np.zeros(1)})


# ----------------------------------------------------------------------------- schedules


def _opt(lr=0.1):
    return optim.SGD([st.Parameter(np.zeros(1), "w")], lr=lr, momentum=0.9)


def test_step_lr_by_hand():
    opt = _opt()
    s = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = [opt.lr]
    for _ in range(5):
        s.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert s.get_last_lr() == [opt.lr]
    assert s(4) == pytest.approx(0.025) and opt.lr == pytest.approx(0.025)


def test_cosine_by_hand():
    opt = _opt()
    s = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    assert opt.lr == pytest.approx(0.1)
    assert s(2) == pytest.approx(0.055)
    assert s(4) == pytest.approx(0.01)


def test_one_cycle_by_hand():
    opt = _opt()
    s = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.5)
    assert opt.lr == pytest.approx(1.0 / 25)
    assert s(2) == pytest.approx(1.0 / 25 + (1 - 1.0 / 25) / 2)  # half-way up the cosine
    assert s(4) == pytest.approx(1.0) and opt.lr == pytest.approx(1.0)
    assert s(9) == pytest.approx(1.0 / 25 / 1e4)
    with pytest.raises(ValueError, match="total_steps"):
        s(11)
    lin = optim.OneCycleLR(_opt(), max_lr=1.0, total_steps=10, pct_start=0.5, anneal_strategy="linear", div_factor=2, final_div_factor=5)
    # phase 1 ends at step 4: 0.5 -> 1.0 linearly
    assert lin(2) == pytest.approx(0.75)
    assert lin(4) == pytest.approx(1.0)


def _torch_lrs(torch, make, steps):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = make(torch.optim.lr_scheduler, opt)
    out = [sched.get_last_lr()[0]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


@pytest.mark.parametrize(
    "ours, theirs, steps",
    [
        (lambda o: optim.StepLR(o, 3, 0.5), lambda m, o: m.StepLR(o, 3, 0.5), 12),
        (lambda o: optim.CosineAnnealingLR(o, 10, 0.001), lambda m, o: m.CosineAnnealingLR(o, 10, 0.001), 10),
        (
            lambda o: optim.OneCycleLR(o, 0.5, 20),
            lambda m, o: m.OneCycleLR(o, 0.5, 20, cycle_momentum=False),
            19,
        ),
        (
            lambda o: optim.OneCycleLR(o, 0.3, 17, pct_start=0.25, anneal_strategy="linear", div_factor=10, final_div_factor=100),
            lambda m, o: m.OneCycleLR(
                o, 0.3, 17, pct_start=0.25, anneal_strategy="linear", div_factor=10, final_div_factor=100, cycle_momentum=False
            ),
            16,
        ),
    ],
    ids=["step", "cosine", "onecycle_cos", "onecycle_linear"],
)
def test_schedules_match_torch(ours, theirs, steps):
    torch = pytest.importorskip("torch")
    opt = _opt()
    s = ours(opt)
    mine = [s.get_last_lr()[0]]
    for _ in range(steps):
        s.step()
        mine.append(opt.lr)
    np.testing.assert_allclose(mine, _torch_lrs(torch, theirs, steps), rtol=1e-12, atol=1e-15)


def test_schedule_state_and_validation():
    opt = _opt()
    s = optim.StepLR(opt, 2, 0.5)
    for _ in range(3):
        s.step()
    sd = s.state_dict()
    opt2 = _opt()
    s2 = optim.StepLR(opt2, 2, 0.5)
    s2.load_state_dict(sd)
    assert opt2.lr == opt.lr and s2.last_epoch == 3
    with pytest.raises(ValueError, match="StepLR"):
        optim.CosineAnnealingLR(_opt(), 3).load_state_dict(sd)
    with pytest.raises(ValueError, match="`step_size`"):
        optim.StepLR(_opt(), 0)
    with pytest.raises(ValueError, match="`T_max`"):
        optim.CosineAnnealingLR(_opt(), 0)
    with pytest.raises(ValueError, match="`pct_start`"):
        optim.OneCycleLR(_opt(), 0.1, 10, pct_start=1.0)
    with pytest.raises(ValueError, match="`anneal_strategy`"):
        optim.OneCycleLR(_opt(), 0.1, 10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="`max_lr`"):
        optim.OneCycleLR(_opt(), 0.0, 10)
    with pytest.raises(TypeError, match="`optimizer`"):
        optim.StepLR(object(), 2)
    with pytest.raises(ValueError, match="`t`"):
        s(-1)


def test_docstring_examples():
    import doctest

    from striate import optim as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("kwargs", [dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                    dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dict(lr=0.1)])
def test_sgd_float32_keeps_the_0_1_arithmetic_bit_for_bit(kwargs, rng):
    """SGD without dampening rounds as striate 0.1 did, so trained weights keep their hashes."""
    ps = _params(rng)
    ref = [p.data.copy() for p in ps]
    bufs = [None] * len(ps)
    opt = optim.SGD(ps, **kwargs)
    lr, m, wd = (np.float32(kwargs.get(k, 0.0)) for k in ("lr", "momentum", "weight_decay"))
    for k in range(12):
        for i, p in enumerate(ps):
            p.grad = _grad(p, k)
            g = p.grad + wd * ref[i] if wd else p.grad
            if m:
                bufs[i] = g.copy() if bufs[i] is None else bufs[i] * m + g
                g = g + m * bufs[i] if kwargs.get("nesterov") else bufs[i]
            ref[i] = ref[i] - lr * g
        opt.step()
        for p, r in zip(ps, ref):
            np.testing.assert_array_equal(p.data, r)
