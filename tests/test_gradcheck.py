"""Tests of striate.gradcheck: whole stacks pass, a wrong backward is caught, nothing leaks out."""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import layers as L
from striate.gradcheck import gradcheck

TOL = 1e-5


def conv_net(seed=0):
    """Every pooling kind, an asymmetric strided conv, a dilated grouped conv, BatchNorm, Dropout."""
    st.seed(seed)
    return st.Sequential(
        [
            L.Conv2d(2, 4, (3, 2), stride=(1, 2), padding=1),
            L.BatchNorm2d(4),
            L.Tanh(),
            L.MaxPool2d(2, stride=1),
            L.Conv2d(4, 4, 3, dilation=2, groups=2, padding=2),
            L.ReLU(),
            L.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
            L.LPPool2d(2, 2),
            L.Sigmoid(),
            L.AdaptiveAvgPool2d((2, 1)),
            L.Dropout(0.3),
            L.Flatten(),
            L.Linear(8, 3),
        ]
    )


def data(rng, n=3, classes=3):
    x = rng.standard_normal((n, 2, 7, 6)).astype(np.float32)
    return x, rng.integers(0, classes, size=n)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_net_passes(rng, loss, mode):
    m = conv_net()
    getattr(m, mode)()
    x, y = data(rng)
    errors = gradcheck(m, x, y, loss=loss, input_grad=True)
    names = [n for n, _ in m.named_parameters()]
    assert list(errors) == names + ["input"]
    assert max(errors.values()) < TOL, errors


def test_one_hot_targets_and_loss_object(rng):
    m = conv_net(1)
    x, y = data(rng)
    onehot = np.eye(3)[y]
    errors = gradcheck(m, x, onehot, loss=st.losses.SquaredError())
    assert max(errors.values()) < TOL, errors


class _WrongLinear(L.Linear):
    """A Linear whose weight gradient is 1% too large."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad = self.weight.grad * 1.01
        return dx


def test_wrong_backward_is_caught(rng):
    st.seed(0)
    m = st.Sequential([L.Conv2d(2, 2, 3), L.ReLU(), L.Flatten(), _WrongLinear(2 * 5 * 4, 3)])
    x, y = data(rng)
    errors = gradcheck(m, x, y)
    assert errors["0.weight"] < TOL and errors["3.bias"] < TOL
    assert errors["3.weight"] == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_model_backend_and_rng_are_left_alone(rng):
    m = conv_net()
    m.train()
    x, y = data(rng)
    before = m.state_dict()
    st.set_backend("cpp")
    st.seed(7)
    expected_draw = st._config.rng().random()
    st.seed(7)
    gradcheck(m, x, y, max_elements=3)
    assert st.get_backend() == "cpp"
    assert st._config.rng().random() == expected_draw
    after = m.state_dict()
    assert all(after[k].dtype == before[k].dtype and np.array_equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())
    assert m.training


def test_backend_restored_after_an_error(rng):
    m = st.Sequential([L.Flatten(), L.Linear(84, 3)])
    x, _ = data(rng)
    st.set_backend("cpp")
    with pytest.raises(ValueError, match="label 7"):
        gradcheck(m, x, np.array([0, 1, 7]))
    assert st.get_backend() == "cpp"


def test_frozen_parameters_are_skipped(rng):
    m = conv_net()
    m.freeze(upto=2)
    x, y = data(rng)
    errors = gradcheck(m, x, y, max_elements=4)
    assert "0.weight" not in errors and "1.bias" not in errors
    assert "4.weight" in errors and max(errors.values()) < TOL


def test_max_elements_checks_a_subset(rng, monkeypatch):
    m = st.Sequential([L.Flatten(), L.Linear(84, 3)])
    x, y = data(rng)
    calls = []
    orig = st.Sequential.forward

    def counting(self, inp):
        calls.append(1)
        return orig(self, inp)

    monkeypatch.setattr(st.Sequential, "forward", counting)
    gradcheck(m, x, y, max_elements=5)
    # one analytic pass, then two per element: 5 of the weight, 3 of the bias
    assert len(calls) == 1 + 2 * (5 + 3)


def test_relative_error_definition():
    from striate.gradcheck import _relative_error

    assert _relative_error(np.array([2.0, 0.0]), np.array([1.0, 1e-3]), 1e-4) == pytest.approx(0.5)
    assert _relative_error(np.zeros(3), np.zeros(3), 1e-4) == 0.0
    assert _relative_error(np.zeros(2), np.array([0.0, 1e-12]), 1e-4) == pytest.approx(1e-8)
    assert _relative_error(np.zeros(2), np.array([0.0, 1e-3]), 1e-4) == 1.0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"eps": 0.0}, ValueError, "`eps`"),
        ({"eps": float("nan")}, ValueError, "`eps`"),
        ({"atol": 0}, ValueError, "`atol`"),
        ({"max_elements": 0}, ValueError, "`max_elements`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"loss": "hinge"}, ValueError, "`loss`"),
    ],
)
def test_bad_arguments(rng, kwargs, exc, match):
    m = st.Sequential([L.Flatten(), L.Linear(84, 3)])
    x, y = data(rng)
    with pytest.raises(exc, match=match):
        gradcheck(m, x, y, **kwargs)


def test_bad_model_and_input(rng):
    x, y = data(rng)
    with pytest.raises(TypeError, match="`model`"):
        gradcheck(object(), x, y)
    with pytest.raises(TypeError, match="`x`"):
        gradcheck(st.Sequential([L.Flatten(), L.Linear(84, 3)]), x.astype(np.int32), y)
