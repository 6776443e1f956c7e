"""striate.zoo: LeNet-5 and the typical CNN (layers, parameter counts, shapes, torch names)."""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import io
from striate import layers as L
from striate import zoo


@pytest.fixture(autouse=True)
def _numpy_backend():
    st.set_backend("numpy")


def test_lenet5_structure_and_count():
    m = zoo.lenet5()
    kinds = [type(l).__name__ for l in m]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert sum(p.size for p in m.parameters()) == 61706
    assert m[0].padding == (0, 0)
    assert m.output_shapes((1, 32, 32))[-1] == (10,)
    assert m(np.zeros((2, 1, 32, 32), np.float32)).shape == (2, 10)


def test_lenet5_28_and_classes():
    m = zoo.lenet5(num_classes=3, input_size=28)
    assert m[0].padding == (2, 2)
    assert m(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 3)
    assert sum(p.size for p in m.parameters()) == 61706 - 7 * 85


def test_lenet5_errors():
    with pytest.raises(io.FormatError):
        zoo.lenet5(num_classes=5, pretrained=True)
    with pytest.raises(ValueError, match="`input_size`"):
        zoo.lenet5(input_size=64)
    with pytest.raises(ValueError, match="`num_classes`"):
        zoo.lenet5(num_classes=0)


def test_typical_cnn():
    m = zoo.typical_cnn()
    assert sum(isinstance(l, L.Conv2d) for l in m) == 3
    assert [l.p for l in m if isinstance(l, L.Dropout)] == [0.25]
    assert m.output_shapes((3, 32, 32))[9] == (4096,)
    assert m.eval()(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    g = zoo.typical_cnn(in_channels=1, num_classes=4)
    assert g[0].in_channels == 1 and g[-1].out_features == 4
    with pytest.raises(ValueError, match="`in_channels`"):
        zoo.typical_cnn(in_channels=0)


@pytest.mark.parametrize("builder", [zoo.lenet5, zoo.resnet20], ids=["lenet5", "resnet20"])
def test_builders_are_seeded(builder):
    st.seed(11)
    a = builder().state_dict()
    st.seed(11)
    b = builder().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_lenet5_matches_torch_layout():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    tm = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    m = zoo.lenet5()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()}, strict=True)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(m(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_docstring_examples():
    import doctest

    from striate import zoo as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_lenet5_pretrained_scores_on_the_digits():
    """The shipped weights load into lenet5(pretrained=True) and classify the digits test split."""
    from striate.datasets import load_digits

    st.set_num_threads(1)
    _, (xt, yt) = load_digits()
    model = zoo.lenet5(pretrained=True)
    assert model.evaluate(xt, yt)["accuracy"] >= 0.985


# ----------------------------------------------------------------------------- ResNets (issue 15)


def _resnet_params(n, in_channels=3, classes=10):
    """He et al.'s count, written out: stem, 3 stages of n basic blocks, 2 projections, the head."""
    def block(c_in, c):
        return 9 * c_in * c + 2 * c + 9 * c * c + 2 * c + ((c_in * c + 2 * c) if c_in != c else 0)

    total = 9 * in_channels * 16 + 2 * 16 + 64 * classes + classes
    for c_in, c in ((16, 16), (16, 32), (32, 64)):
        total += block(c_in, c) + (n - 1) * block(c, c)
    return total


def test_resnet20_structure_as_documented():
    m = zoo.resnet20()
    assert sum(p.size for p in m.parameters()) == 272_474 == _resnet_params(3)
    kinds = [type(l).__name__ for l in m]
    assert kinds[:3] == ["Conv2d", "BatchNorm2d", "ReLU"] and kinds[-3:] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert kinds[3:21] == ["Residual", "ReLU"] * 9
    assert m[0].config() == L.Conv2d(3, 16, 3, padding=1, bias=False).config()
    blocks = [l for l in m if isinstance(l, L.Residual)]
    assert [b.body[0].stride for b in blocks] == [(1, 1)] * 3 + [(2, 2)] + [(1, 1)] * 2 + [(2, 2)] + [(1, 1)] * 2
    assert [b.shortcut is None for b in blocks] == [True] * 3 + [False, True, True] * 2
    for b in blocks:
        c_in, c = b.body[0].in_channels, b.body[0].out_channels
        assert [type(l).__name__ for l in b.body] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"]
        assert b.body[0].config() == L.Conv2d(c_in, c, 3, b.body[0].stride, 1, bias=False).config()
        assert b.body[3].config() == L.Conv2d(c, c, 3, 1, 1, bias=False).config()
        if b.shortcut is not None:
            assert b.shortcut[0].config() == L.Conv2d(c_in, c, 1, 2, bias=False).config()
            assert isinstance(b.shortcut[1], L.BatchNorm2d) and b.shortcut[1].num_features == c
    assert m[-1].in_features == 64 and m[-1].out_features == 10
    assert m.output_shapes((3, 32, 32))[8:10] == [(16, 32, 32), (32, 16, 16)]
    assert m.eval()(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    assert zoo.MODELS["resnet20"] is zoo.resnet20 and set(zoo.MODELS) >= {"lenet5", "typical_cnn"}


@pytest.mark.parametrize("depth", [8, 20, 32, 44, 56])
def test_resnet_depths(depth):
    n = (depth - 2) // 6
    m = zoo.resnet(depth, num_classes=7, in_channels=1)
    assert len(m) == 3 + 2 * 3 * n + 3
    assert sum(p.size for p in m.parameters()) == _resnet_params(n, in_channels=1, classes=7)
    assert m.eval()(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 7)


def test_resnet_errors():
    for depth in (0, 2, 19, 21, 6 * 4):
        with pytest.raises(ValueError, match="`depth`"):
            zoo.resnet(depth)
    for bad in ("20", 20.0, True):
        with pytest.raises((TypeError, ValueError), match="`depth`"):
            zoo.resnet(bad)
    with pytest.raises(ValueError, match="`num_classes`"):
        zoo.resnet20(num_classes=0)
    with pytest.raises(ValueError, match="`in_channels`"):
        zoo.resnet20(in_channels=0)
