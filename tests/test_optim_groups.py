"""striate.optim: parameter groups, the new optimizers' state round trips, clipping, and bad input.

Not here: the trajectories against torch (test_optim_torch.py) and the
original SGD/Adam/schedule tests (test_optim.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import striate as st
from striate import optim


def _params(rng, n=4, dtype=np.float32):
    shapes = [(3, 4), (4,), (2, 3), (3,)]
    return [st.Parameter(rng.standard_normal(shapes[i % 4]).astype(dtype), f"p{i}") for i in range(n)]


def _grad(p, k):
    return (0.5 * p.data + np.cos(np.arange(p.data.size).reshape(p.data.shape) + k)).astype(p.data.dtype)


def _two_groups(ps, **second):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003, **second}]


def _train(opt, ps, steps, start=0):
    for k in range(start, start + steps):
        for p in ps:
            p.grad = _grad(p, k)
        opt.step()


ROUND_TRIP = [
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3), {"momentum": 0.5, "nesterov": False}),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), {"weight_decay": 0.1}),
    (optim.Adam, dict(lr=0.01), {"betas": (0.8, 0.99)}),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1), {"weight_decay": 0.0}),
    (optim.RMSprop, dict(lr=1e-3, momentum=0.9, centered=True), {"centered": False, "alpha": 0.9}),
    (optim.RMSprop, dict(lr=1e-3), {"momentum": 0.5}),
]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("cls, kwargs, second", ROUND_TRIP)
def test_state_dict_resume_is_exact(cls, kwargs, second, grouped, rng):
    a = _params(rng)
    b = [st.Parameter(p.data.copy(), p.name) for p in a]
    make = (lambda ps: _two_groups(ps, **second)) if grouped else list
    straight = cls(make(a), **kwargs)
    _train(straight, a, 10)
    first = cls(make(b), **kwargs)
    _train(first, b, 5)
    sd = first.state_dict()
    for k, v in sd.items():
        assert isinstance(k, str) and isinstance(v, (np.ndarray, int, float, bool, str)), k
    fresh_params = [st.Parameter(p.data, p.name) for p in b]  # same arrays, new Parameter objects
    fresh = cls(make(fresh_params), lr=0.5)  # other options: load_state_dict restores them
    fresh.load_state_dict(sd)
    assert [{k: v for k, v in g.items() if k != "params"} for g in fresh.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in first.param_groups]
    _train(fresh, fresh_params, 5, start=5)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
    assert fresh.state_dict().keys() == straight.state_dict().keys()


def test_state_dict_layout_single_and_grouped(rng):
    ps = _params(rng)
    single = optim.SGD(ps, lr=0.1, momentum=0.9)
    assert list(single.state_dict()) == ["type", "lr", "momentum", "dampening", "nesterov", "weight_decay"]
    grouped = optim.Adam(_two_groups(ps, betas=(0.5, 0.6)), lr=0.01)
    _train(grouped, ps, 1)
    sd = grouped.state_dict()
    assert sd["groups"] == 2 and sd["group.0.size"] == 2 and sd["group.1.size"] == 2
    assert (sd["lr"], sd["beta1"], sd["group.1.lr"], sd["group.1.beta1"], sd["group.1.beta2"]) == (0.01, 0.9, 0.003, 0.5, 0.6)
    assert sd["state.3.step"] == 1 and sd["state.3.exp_avg"].shape == ps[3].data.shape


def test_state_dict_of_an_older_sgd_loads(rng):
    """striate 0.1 wrote no 'dampening': such a state (a 0.1 checkpoint) still resumes."""
    ps = _params(rng)
    opt = optim.SGD(ps, lr=0.1, momentum=0.9)
    _train(opt, ps, 2)
    old = opt.state_dict()
    del old["dampening"]
    fresh = optim.SGD(ps, lr=0.3, momentum=0.9, dampening=0.5)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["dampening"] == 0.0 and fresh.lr == 0.1


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.__setitem__("groups", 3), "3 parameter groups"),
        (lambda d: d.__setitem__("group.1.size", 1), "1 parameters in group 1"),
        (lambda d: d.pop("group.1.size"), "group.1.size"),
        (lambda d: d.__setitem__("group.1.lr", -1.0), r"group\.1\.lr"),
        (lambda d: d.pop("group.1.momentum"), r"group\.1\.momentum"),
        (lambda d: d.__setitem__("group.1.nesterov", True), "nesterov"),
        (lambda d: d.__setitem__("group.2.lr", 0.1), "unknown entry"),
        (lambda d: d.__setitem__("state.3.momentum_buffer", np.zeros(7, np.float32)), "momentum_buffer"),
        (lambda d: d.__setitem__("state.3.exp_avg", np.zeros(3, np.float32)), "unknown state slot"),
    ],
)
def test_load_state_dict_with_groups_is_all_or_nothing(edit, match, rng):
    ps = _params(rng)
    opt = optim.SGD(_two_groups(ps, momentum=0.5, dampening=0.2), lr=0.1, momentum=0.9)
    _train(opt, ps, 2)
    d = opt.state_dict()
    d["lr"] = 0.7  # a valid edit that must not land when another part fails
    edit(d)
    fresh = optim.SGD(_two_groups(ps, momentum=0.5, dampening=0.2), lr=0.1, momentum=0.9)
    with pytest.raises((ValueError, TypeError), match=match):
        fresh.load_state_dict(d)
    assert fresh.lr == 0.1 and fresh.state == [{}] * 4


def test_rmsprop_state_must_hold_what_its_options_need(rng):
    ps = _params(rng, 2)
    opt = optim.RMSprop(ps, momentum=0.9, centered=True)
    _train(opt, ps, 1)
    d = opt.state_dict()
    del d["state.1.grad_avg"]
    with pytest.raises(ValueError, match="parameter 1 without grad_avg"):
        optim.RMSprop(ps, momentum=0.9, centered=True).load_state_dict(d)
    d = opt.state_dict()
    d["centered"] = False  # then grad_avg is not needed (torch keeps it too)
    optim.RMSprop(ps).load_state_dict(d)


# ----------------------------------------------------------------------------- groups


def test_groups_take_defaults_and_their_own_options(rng):
    ps = _params(rng)
    opt = optim.RMSprop([{"params": ps[:1]}, {"params": ps[1:], "momentum": 0.9, "centered": True}], lr=0.02, alpha=0.9)
    g0, g1 = opt.param_groups
    assert g0["params"] == ps[:1] and g1["params"] == ps[1:] and opt.params == ps
    assert (g0["lr"], g0["alpha"], g0["momentum"], g0["centered"]) == (0.02, 0.9, 0.0, False)
    assert (g1["lr"], g1["alpha"], g1["momentum"], g1["centered"]) == (0.02, 0.9, 0.9, True)
    assert opt.defaults == dict(lr=0.02, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False)
    assert "2 parameter groups" in repr(opt)


def test_group_of_a_model_and_a_single_parameter(rng):
    model = st.Sequential([st.layers.Linear(3, 2), st.layers.ReLU(), st.layers.Linear(2, 2)])
    extra = st.Parameter(np.zeros(2, np.float32), "extra")
    opt = optim.SGD([{"params": model}, {"params": extra, "lr": 0.5}])
    assert opt.params == model.parameters() + [extra]


def test_lr_property_reads_group_0_and_sets_every_group(rng):
    ps = _params(rng)
    opt = optim.Adam(_two_groups(ps), lr=0.01)
    assert opt.lr == 0.01
    opt.lr = 0.2
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    with pytest.raises(ValueError, match="`lr`"):
        opt.lr = float("nan")


def test_editing_param_groups_takes_effect_and_is_checked(rng):
    ps = _params(rng, 2)
    ref = [st.Parameter(p.data.copy(), p.name) for p in ps]
    opt = optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.1)
    opt.param_groups[1]["lr"] = 0.0  # as in torch: a frozen group
    _train(opt, ps, 1)
    assert not np.array_equal(ps[0].data, ref[0].data)
    np.testing.assert_array_equal(ps[1].data, ref[1].data)
    opt.param_groups[1]["lr"] = -0.1
    with pytest.raises(ValueError, match=r"`param_groups\[1\]\['lr'\]`"):
        opt.step()
    del opt.param_groups[1]["lr"]
    with pytest.raises(ValueError, match=r"`param_groups\[1\]` lacks 'lr'"):
        opt.step()


def test_add_param_group(rng):
    ps = _params(rng)
    opt = optim.AdamW(ps[:2], lr=0.01)
    opt.add_param_group({"params": ps[2:], "weight_decay": 0.0})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.param_groups[1]["lr"] == 0.01 and len(opt.state) == 4
    _train(opt, ps, 2)
    assert opt.state[3]["step"] == 2
    with pytest.raises(ValueError, match="already in another parameter group"):
        opt.add_param_group({"params": [ps[0]]})
    with pytest.raises(TypeError, match="`param_group`"):
        opt.add_param_group(ps[0])
    assert len(opt.param_groups) == 2 and len(opt.params) == 4


@pytest.mark.parametrize(
    "params, exc, match",
    [
        (lambda ps: [{"params": ps[:2]}, {"params": ps[1:]}], ValueError, r"`params\[1\]\['params'\]\[0\]` .*only one group"),
        (lambda ps: [{"params": ps, "momentum": 0.9, "betas": (0.9, 0.9)}], ValueError, r"unknown keys \['betas'\]"),
        (lambda ps: [{"params": ps}, {"lr": 0.1}], ValueError, r"`params\[1\]` lacks the key 'params'"),
        (lambda ps: [ps[0], {"params": ps[1:]}], TypeError, "mixes Parameters and dicts"),
        (lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "lr": -1}], ValueError, r"`params\[1\]\['lr'\]`"),
        (lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "momentum": "0.9"}], TypeError, r"`params\[1\]\['momentum'\]`"),
        (lambda ps: [{"params": ps[:1]}, {"params": [ps[1], np.zeros(2)]}], TypeError, r"`params\[1\]\['params'\]\[1\]`"),
        (lambda ps: [{"params": [ps[1], ps[1]]}], ValueError, "more than once"),
        (lambda ps: [{"params": []}], ValueError, "only empty parameter groups"),
        (lambda ps: ps[0], TypeError, "single Parameter"),
        (lambda ps: {"params": ps}, TypeError, "got a dict"),
        (lambda ps: 3, TypeError, "`params`"),
    ],
)
def test_bad_groups_rejected(params, exc, match, rng):
    with pytest.raises(exc, match=match):
        optim.SGD(params(_params(rng)), lr=0.1)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda ps: optim.SGD(ps, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening = 0"),
        (lambda ps: optim.SGD(ps, momentum=0.9, dampening=1.5), ValueError, "`dampening`"),
        (lambda ps: optim.SGD(ps, 0.1, 0.9, True), TypeError, "`dampening` must be a number"),  # the 0.1 order
        (lambda ps: optim.AdamW(ps, betas=(0.9, 1.0)), ValueError, r"`betas\[1\]`"),
        (lambda ps: optim.AdamW(ps, weight_decay=-0.1), ValueError, "`weight_decay`"),
        (lambda ps: optim.AdamW(ps, lr=0.0), ValueError, "`lr`"),
        (lambda ps: optim.RMSprop(ps, alpha=1.5), ValueError, "`alpha`"),
        (lambda ps: optim.RMSprop(ps, eps=-1e-8), ValueError, "`eps`"),
        (lambda ps: optim.RMSprop(ps, momentum=-0.1), ValueError, "`momentum`"),
        (lambda ps: optim.RMSprop(ps, centered=1), TypeError, "`centered` must be a bool"),
        (lambda ps: optim.RMSprop(ps, weight_decay=float("inf")), ValueError, "`weight_decay`"),
    ],
)
def test_bad_options_rejected(make, exc, match, rng):
    with pytest.raises(exc, match=match):
        make(_params(rng))


def test_step_rejects_bad_gradients(rng):
    ps = _params(rng, 2)
    opt = optim.RMSprop(ps)
    ps[0].grad = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    ps[0].grad = [0.0] * 12
    with pytest.raises(TypeError, match="numpy.ndarray"):
        opt.step()


def test_new_optimizers_skip_frozen_and_gradless(rng):
    for cls in (optim.AdamW, optim.RMSprop):
        ps = _params(rng, 3)
        ps[1].trainable = False
        before = [p.data.copy() for p in ps]
        opt = cls(ps, lr=0.1)
        for p in ps[:2]:
            p.grad = np.ones_like(p.data)
        opt.step()
        assert not np.array_equal(ps[0].data, before[0])
        np.testing.assert_array_equal(ps[1].data, before[1])
        np.testing.assert_array_equal(ps[2].data, before[2])
        assert opt.state[1] == {} and opt.state[2] == {}


# ----------------------------------------------------------------------------- schedules with groups


def test_schedules_keep_each_groups_base_rate(rng):
    ps = _params(rng)
    opt = optim.SGD(_two_groups(ps), lr=0.1, momentum=0.9)
    s = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert s.base_lrs == [0.1, 0.003] and s.base_lr == 0.1
    s(4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.00075])
    assert s.lr_at(4) == pytest.approx(0.025) and s.lrs_at(4) == pytest.approx([0.025, 0.00075])
    sd = s.state_dict()
    other = optim.SGD(_two_groups(ps), lr=0.1, momentum=0.9)
    s2 = optim.StepLR(other, step_size=2, gamma=0.5)
    s2.load_state_dict(sd)
    assert other.param_groups[1]["lr"] == opt.param_groups[1]["lr"] and s2.last_epoch == 4
    with pytest.raises(ValueError, match="must hold 2 rates"):
        s2.load_state_dict({**sd, "base_lrs": [0.1]})
    assert s2.base_lrs == [0.1, 0.003]
    opt.add_param_group({"params": [st.Parameter(np.zeros(1), "z")]})
    with pytest.raises(ValueError, match="3 parameter groups, the schedule was made for 2"):
        s.step()


def test_schedule_state_of_an_older_striate_loads():
    opt = optim.SGD([st.Parameter(np.zeros(1), "w")], lr=0.1)
    s = optim.CosineAnnealingLR(opt, T_max=4)
    s.load_state_dict({"type": "CosineAnnealingLR", "last_epoch": 2, "base_lr": 0.2})
    assert s.base_lrs == [0.2] and opt.lr == pytest.approx(0.1)


def test_one_cycle_per_group_max_lr_validation(rng):
    ps = _params(rng)
    opt = optim.SGD(_two_groups(ps), lr=0.1)
    with pytest.raises(ValueError, match="one per parameter group"):
        optim.OneCycleLR(opt, [0.1, 0.2, 0.3], 10)
    with pytest.raises(ValueError, match=r"`max_lr\[1\]`"):
        optim.OneCycleLR(opt, [0.1, -0.2], 10)
    s = optim.OneCycleLR(opt, [0.5, 0.05], 10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.002]) and s.max_lr == 0.5


# ----------------------------------------------------------------------------- clipping


def test_clip_grad_norm_by_hand():
    a, b = st.Parameter(np.zeros(2), "a"), st.Parameter(np.zeros(1), "b")
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([-4.0])
    assert optim.clip_grad_norm([a, b], 10.0) == 5.0
    np.testing.assert_array_equal(a.grad, [3.0, 0.0])  # under max_norm: unchanged
    grad_array = a.grad
    assert optim.clip_grad_norm([a, b], 1.0) == 5.0
    assert a.grad is grad_array  # in place, as torch's clip_grad_norm_
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), np.array([3.0, 0.0, -4.0]) / (5 + 1e-6))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([-4.0])
    assert optim.clip_grad_norm([a, b], 2.0, norm_type="inf") == 4.0
    assert optim.clip_grad_norm([a, b], 100.0, norm_type=1) == pytest.approx(7 * 2 / (4 + 1e-6))  # after the inf clip


def test_clip_grad_norm_skips_and_accepts_models(rng):
    model = st.Sequential([st.layers.Linear(3, 2)])
    assert optim.clip_grad_norm(model, 1.0) == 0.0  # no gradients yet
    w, b = model.parameters()
    w.grad = np.full(w.data.shape, 10.0, np.float32)
    b.trainable = False
    b.grad = np.full(2, 1e6, np.float32)
    total = optim.clip_grad_norm(model, 1.0)
    assert total == pytest.approx(math.sqrt(6) * 10, rel=1e-6)
    np.testing.assert_array_equal(b.grad, np.full(2, 1e6, np.float32))
    assert w.grad.dtype == np.float32
    np.testing.assert_allclose(np.sqrt((w.grad.astype(np.float64) ** 2).sum()), 1.0, rtol=1e-5)
    ro = np.ones(3)
    ro.flags.writeable = False
    p = st.Parameter(np.zeros(3), "p")
    p.grad = ro
    optim.clip_grad_norm(p, 0.5)
    assert p.grad is not ro and ro[0] == 1.0 and np.sqrt((p.grad**2).sum()) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(max_norm=-1.0), ValueError, "`max_norm`"),
        (dict(max_norm=float("nan")), ValueError, "`max_norm`"),
        (dict(max_norm="1"), TypeError, "`max_norm`"),
        (dict(max_norm=1.0, norm_type=0), ValueError, "`norm_type`"),
        (dict(max_norm=1.0, norm_type=-2.0), ValueError, "`norm_type`"),
        (dict(max_norm=1.0, norm_type="fro"), TypeError, "`norm_type`"),
    ],
)
def test_clip_grad_norm_bad_arguments(kwargs, exc, match):
    p = st.Parameter(np.zeros(2), "p")
    p.grad = np.ones(2)
    with pytest.raises(exc, match=match):
        optim.clip_grad_norm([p], **kwargs)
    np.testing.assert_array_equal(p.grad, np.ones(2))


def test_clip_grad_norm_bad_params_and_grads():
    with pytest.raises(TypeError, match=r"`params\[0\]`"):
        optim.clip_grad_norm([np.ones(2)], 1.0)
    with pytest.raises(TypeError, match="`params`"):
        optim.clip_grad_norm(3, 1.0)
    p = st.Parameter(np.zeros(2), "p")
    p.grad = np.ones(2, np.int64)
    with pytest.raises(TypeError, match="float numpy.ndarray"):
        optim.clip_grad_norm([p], 1.0)
