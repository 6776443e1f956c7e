"""striate.losses: values and gradients (numerical, hand-computed, torch), validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from striate import losses

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3


def _numgrad(loss, o, t):
    g = np.zeros_like(o)
    for i in np.ndindex(o.shape):
        old = o[i]
        o[i] = old + EPS
        fp = loss(o, t)
        o[i] = old - EPS
        fm = loss(o, t)
        o[i] = old
        g[i] = (fp - fm) / (2 * EPS)
    return g


def _targets(kind, rng, n=5, c=4):
    labels = rng.integers(0, c, n)
    if kind == "labels":
        return labels
    if kind == "onehot":
        return np.eye(c)[labels]
    p = rng.uniform(size=(n, c))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("cls", [losses.CrossEntropy, losses.SquaredError])
@pytest.mark.parametrize("kind", ["labels", "onehot", "probs"])
def test_gradcheck_float64(cls, kind, rng):
    o = rng.standard_normal((5, 4)) * 3
    t = _targets(kind, rng)
    loss = cls()
    loss(o, t)
    g = loss.backward()
    assert g.dtype == np.float64 and g.shape == o.shape
    np.testing.assert_allclose(g, _numgrad(cls(), o, t), atol=ATOL, rtol=RTOL)


def test_cross_entropy_by_hand():
    o = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    t = np.array([2, 0])
    ce = losses.CrossEntropy()
    lse0 = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expect = ((lse0 - 3) + math.log(3)) / 2
    assert ce(o, t) == pytest.approx(expect, rel=1e-6)
    g = ce.backward()
    assert g.dtype == np.float32
    sm0 = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(g[0], (sm0 - [0, 0, 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(g[1], (np.full(3, 1 / 3) - [1, 0, 0]) / 2, rtol=1e-6)
    # one-hot targets give the same loss and gradient as labels
    ce2 = losses.CrossEntropy()
    assert ce2(o, np.eye(3)[t]) == pytest.approx(expect, rel=1e-6)
    np.testing.assert_allclose(ce2.backward(), g, rtol=1e-6)


def test_cross_entropy_stable_for_huge_logits():
    o = np.array([[1e4, 0.0], [-1e4, 1e4]], np.float32)
    ce = losses.CrossEntropy()
    val = ce(o, np.array([0, 0]))
    assert math.isfinite(val) and val == pytest.approx(1e4, rel=1e-6)
    assert np.isfinite(ce.backward()).all()


def test_cross_entropy_nan_logits_give_nan_not_warning():
    ce = losses.CrossEntropy()
    assert math.isnan(ce(np.array([[np.nan, 0.0], [np.inf, 0.0]], np.float32), np.array([0, 1])))


def test_squared_error_by_hand():
    o = np.array([[0.5, 0.2], [0.1, 0.9]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    se = losses.SquaredError()
    expect = 0.5 * (0.25 + 0.04 + 0.01 + 0.01) / 2
    assert se(o, t) == pytest.approx(expect, rel=1e-6)
    np.testing.assert_allclose(se.backward(), (o - t) / 2, rtol=1e-6)
    # int labels are one-hot encoded
    assert losses.SquaredError()(o, np.array([0, 1])) == pytest.approx(expect, rel=1e-6)


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    o = rng.standard_normal((6, 5))
    for t in (rng.integers(0, 5, 6), np.eye(5)[rng.integers(0, 5, 6)], _targets("probs", rng, 6, 5)):
        ce = losses.CrossEntropy()
        val = ce(o, t)
        to = torch.tensor(o, requires_grad=True)
        tt = torch.from_numpy(t)
        tl = torch.nn.functional.cross_entropy(to, tt)
        tl.backward()
        assert val == pytest.approx(tl.item(), rel=1e-12)
        np.testing.assert_allclose(ce.backward(), to.grad.numpy(), rtol=1e-10, atol=1e-14)
    t = _targets("onehot", rng, 6, 5)
    se = losses.SquaredError()
    val = se(o, t)
    to = torch.tensor(o, requires_grad=True)
    tl = 0.5 * torch.nn.functional.mse_loss(to, torch.from_numpy(t), reduction="sum") / 6
    tl.backward()
    assert val == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(se.backward(), to.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("cls", [losses.CrossEntropy, losses.SquaredError])
def test_label_validation(cls):
    o = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="label 4"):
        cls()(o, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="label -1"):
        cls()(o, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="3 rows"):
        cls()(o, np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cls()(o, np.zeros((3, 5)))
    with pytest.raises(TypeError, match="integer class labels"):
        cls()(o, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="2-D"):
        cls()(np.zeros(3, np.float32), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="float32 or float64"):
        cls()(np.zeros((3, 4), np.int32), np.array([0, 1, 2]))


@pytest.mark.parametrize("cls", [losses.CrossEntropy, losses.SquaredError])
def test_empty_batch_and_backward_before_call(cls):
    with pytest.raises(RuntimeError, match="before"):
        cls().backward()
    loss = cls()
    assert loss(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == 0.0
    assert loss.backward().shape == (0, 3)


def test_get_loss():
    assert isinstance(losses.get_loss("cross_entropy"), losses.CrossEntropy)
    assert isinstance(losses.get_loss("squared_error"), losses.SquaredError)
    se = losses.SquaredError()
    assert losses.get_loss(se) is se
    assert isinstance(losses.get_loss(losses.CrossEntropy), losses.CrossEntropy)
    with pytest.raises(ValueError, match="`loss`.*'mse'"):
        losses.get_loss("mse")
    with pytest.raises(TypeError, match="`loss`"):
        losses.get_loss(3)


@pytest.mark.parametrize("cls", [losses.CrossEntropy, losses.SquaredError])
def test_layout_independent(cls, rng):
    o = rng.standard_normal((7, 33)).astype(np.float32)
    t = rng.integers(0, 33, 7)
    a = cls()
    va = a(o, t)
    for variant in (np.asfortranarray(o), np.repeat(o, 2, axis=1)[:, ::2]):
        b = cls()
        assert b(variant, t) == va
        np.testing.assert_array_equal(b.backward(), a.backward())


def test_docstring_examples():
    import doctest

    from striate import losses as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("kind", ["labels", "onehot", "probs"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_smoothing_matches_torch_over_steps(smoothing, kind, dtype, rng):
    """Forward and backward as torch.nn.functional.cross_entropy, along 12 gradient steps on the logits."""
    torch = pytest.importorskip("torch")
    o = (rng.standard_normal((6, 5)) * 2).astype(dtype)
    t = _targets(kind, rng, 6, 5)
    to = torch.tensor(o.copy(), requires_grad=True)
    tt = torch.from_numpy(t if kind == "labels" else t.astype(dtype))
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    ce = losses.CrossEntropy(label_smoothing=smoothing)
    for _ in range(12):
        val = ce(o, t)
        tl = torch.nn.functional.cross_entropy(to, tt, label_smoothing=smoothing)
        to.grad = None
        tl.backward()
        assert val == pytest.approx(tl.item(), rel=tol["rtol"])
        g = ce.backward()
        assert g.dtype == dtype
        np.testing.assert_allclose(g, to.grad.numpy(), **tol)
        o = o - dtype(0.5) * g
        with torch.no_grad():
            to -= 0.5 * to.grad
        np.testing.assert_allclose(o, to.detach().numpy(), **tol)


@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_label_smoothing_gradcheck(kind, rng):
    o = rng.standard_normal((5, 4)) * 3
    t = _targets(kind, rng)
    loss = losses.CrossEntropy(label_smoothing=0.2)
    loss(o, t)
    np.testing.assert_allclose(loss.backward(), _numgrad(losses.CrossEntropy(label_smoothing=0.2), o, t),
                               atol=ATOL, rtol=RTOL)


def test_label_smoothing_by_hand():
    o = np.array([[2.0, 0.0]])
    logp = o[0] - math.log(math.exp(2.0) + 1.0)
    expect = -(0.95 * logp[0] + 0.05 * logp[1])  # q = 0.9 * one-hot + 0.1 / 2
    assert losses.CrossEntropy(label_smoothing=0.1)(o, np.array([0])) == pytest.approx(expect, rel=1e-12)
    # labels and their one-hot rows agree under smoothing too
    a, b = losses.CrossEntropy(0.3), losses.CrossEntropy(0.3)
    assert a(o, np.array([1])) == pytest.approx(b(o, np.array([[0.0, 1.0]])), rel=1e-12)
    np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-12)


@pytest.mark.parametrize(
    "value, exc",
    [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (True, TypeError), ("0.1", TypeError), (None, TypeError)],
)
def test_label_smoothing_validation(value, exc):
    with pytest.raises(exc, match="`label_smoothing`"):
        losses.CrossEntropy(label_smoothing=value)


def test_label_smoothing_repr():
    assert repr(losses.CrossEntropy()) == "CrossEntropy()"
    assert repr(losses.CrossEntropy(label_smoothing=0.1)) == "CrossEntropy(label_smoothing=0.1)"
    assert losses.CrossEntropy(np.float32(0.25)).label_smoothing == 0.25
