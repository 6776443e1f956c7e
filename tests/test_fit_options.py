"""Tests of fit's training-loop options: per-group schedules, the recorded rate, optimizers by name, clipping.

Not here: the schedules themselves (test_optim.py) or the callbacks' other
behaviour (test_training.py).
"""

import numpy as np
import pytest

import striate as st
from striate import layers as L, losses, optim
from striate.model import Sequential
from striate.training import LearningRateScheduler, NonFiniteError, fit


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


def _model():
    st.seed(0)
    return Sequential([L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(8, 3)])


def test_lr_scheduler_callback_keeps_per_group_rates():
    x, y = _data()
    model = _model()
    params = model.parameters()
    opt = optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.01}], lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, x, y, epochs=2, batch_size=8, optimizer=opt, callbacks=[LearningRateScheduler(sched)],
        verbose=0, seed=0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])


def test_history_lr_is_the_rate_of_the_epochs_last_step():
    x, y = _data()
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    rates = []

    def per_step(t):
        rates.append(0.1 / (1 + t))
        return rates[-1]

    h = fit(model, x, y, epochs=2, batch_size=8, optimizer=opt, verbose=0, seed=0,
            callbacks=[LearningRateScheduler(per_step, per_step=True)])
    assert h.history["lr"] == pytest.approx([0.1 / 4, 0.1 / 8])


@pytest.mark.parametrize("name, cls, lr", [("sgd", optim.SGD, 0.01), ("adam", optim.Adam, 1e-3),
                                           ("adamw", optim.AdamW, 1e-3), ("rmsprop", optim.RMSprop, 1e-2)])
def test_optimizer_by_name(name, cls, lr):
    x, y = _data()
    model, twin = _model(), _model()
    fit(model, x, y, epochs=1, batch_size=8, optimizer=name, verbose=0, seed=0)
    kw = {"momentum": 0.9} if name == "sgd" else {}
    fit(twin, x, y, epochs=1, batch_size=8, optimizer=cls(twin.parameters(), lr=lr, **kw), verbose=0, seed=0)
    for k, v in twin.state_dict().items():
        assert np.array_equal(model.state_dict()[k], v), k


def test_bad_optimizer_raises_before_the_first_step():
    x, y = _data()
    model = _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match="'sgd'"):
        fit(model, x, y, epochs=1, optimizer="lbfgs", verbose=0)
    with pytest.raises(TypeError, match="`optimizer`"):
        fit(model, x, y, epochs=1, optimizer=3, verbose=0)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())


def test_clip_grad_norm_matches_a_manual_loop():
    x, y = _data()
    model, twin = _model(), _model()
    fit(model, x, y, epochs=1, batch_size=8, shuffle=False, optimizer=optim.SGD(model.parameters(), lr=0.5),
        clip_grad_norm=0.1, verbose=0, seed=0)
    opt = optim.SGD(twin.parameters(), lr=0.5)
    loss = losses.CrossEntropy()
    for i in range(0, len(x), 8):
        loss(twin(x[i:i + 8]), y[i:i + 8])
        twin.backward(loss.backward(), input_grad=False)
        assert optim.clip_grad_norm(twin.parameters(), 0.1) > 0.1  # the clip does something
        opt.step()
    for k, v in twin.state_dict().items():
        assert np.array_equal(model.state_dict()[k], v), k


def test_clip_grad_norm_still_stops_on_a_non_finite_norm():
    x, y = _data()
    x[3, 0, 1, 1] = np.inf
    with pytest.raises(NonFiniteError):
        fit(_model(), x, y, epochs=1, batch_size=8, shuffle=False, clip_grad_norm=1.0, verbose=0, seed=0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit(_model(), x, y, epochs=1, clip_grad_norm=-1.0, verbose=0)
