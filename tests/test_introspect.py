"""Tests of striate.introspect: summary rows and table, profile, bench, layer health."""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import introspect as I
from striate import layers as L

# ----------------------------------------------------------------------------- summary


def lenet_rows():
    st.seed(0)
    return I.summary_rows(st.zoo.lenet5(), (1, 32, 32))


def test_lenet5_totals_and_rows():
    rows = lenet_rows()
    assert len(rows) == 13 and rows[-1]["layer"] == "total" and rows[-1]["index"] is None
    total = rows[-1]
    assert total["params"] == 61_706 and total["trainable"] == 61_706 and total["frozen"] == 0
    assert [r["params"] for r in rows[:-1]] == [156, 0, 0, 2416, 0, 0, 0, 48120, 0, 10164, 0, 850]
    assert [r["output_shape"] for r in rows[:3]] == [(6, 28, 28), (6, 28, 28), (6, 14, 14)]
    assert rows[6]["output_shape"] == (400,) and total["output_shape"] == (10,)


def test_lenet5_flops_by_hand():
    rows = lenet_rows()
    conv1 = 2 * 6 * 28 * 28 * 1 * 25 + 6 * 28 * 28
    conv2 = 2 * 16 * 10 * 10 * 6 * 25 + 16 * 10 * 10
    pools = 6 * 14 * 14 * 3 + 16 * 5 * 5 * 3
    relus = 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84
    linears = (2 * 400 * 120 + 120) + (2 * 120 * 84 + 84) + (2 * 84 * 10 + 10)
    assert rows[0]["flops"] == conv1 and rows[3]["flops"] == conv2
    assert rows[2]["flops"] == 6 * 14 * 14 * 3 and rows[6]["flops"] == 0
    assert rows[-1]["flops"] == conv1 + conv2 + pools + relus + linears
    assert rows[-1]["flops_complete"]


def test_lenet5_receptive_field_and_memory():
    rows = lenet_rows()
    assert [r["rf"][0] for r in rows[:7]] == [5, 5, 6, 14, 14, 16, 32]
    assert [r["jump"][0] for r in rows[:7]] == [1, 1, 2, 2, 2, 4, 20]
    assert all(r["rf"] == (32, 32) for r in rows[6:])
    assert rows[0]["activation_bytes"] == 6 * 28 * 28 * 4
    assert rows[-1]["activation_bytes"] == 4 * sum(int(np.prod(r["output_shape"])) for r in rows[:-1])


def test_flops_of_other_layers():
    m = st.Sequential(
        [
            L.Conv2d(4, 8, 3, groups=2, bias=False),  # (8, 3, 3)
            L.BatchNorm2d(8),
            L.AvgPool2d(2, stride=1),  # (8, 2, 2)
            L.LPPool2d(2, 2, stride=1),  # (8, 1, 1)
            L.Sigmoid(),
            L.Tanh(),
            L.Dropout(0.5),
            L.Flatten(),
            L.Softmax(),
        ]
    )
    rows = I.summary_rows(m, (4, 5, 5))
    assert [r["flops"] for r in rows[:-1]] == [2 * 72 * 2 * 9, 2 * 72, 32 * 4, 8 * 8, 8, 8, 0, 0, 24]
    # Adaptive pooling 5 -> 2 uses windows [0, 3) and [2, 5): 3 + 3 rows and columns per channel.
    ad = I.summary_rows(st.Sequential([L.AdaptiveAvgPool2d(2)]), (3, 5, 5))[0]
    assert ad["flops"] == 3 * 6 * 6 and ad["rf"] == (3, 3) and ad["jump"] == (2, 2)


class _Custom(L.Layer):
    def forward(self, x):
        return x


def test_unknown_layer_has_no_flop_count():
    m = st.Sequential([L.Conv2d(1, 2, 3), _Custom()])
    rows = I.summary_rows(m, (1, 5, 5))
    assert rows[1]["flops"] is None and not rows[-1]["flops_complete"]
    assert rows[-1]["flops"] == rows[0]["flops"]
    text = I.summary(m, (1, 5, 5))
    assert "?" in text and "not counted" in text


def _empirical_rf(model, shape):
    """Support of d(centre output)/d(input) with positive weights (no cancellation)."""
    for p in model.parameters():
        p.data[...] = 1.0
    x = np.ones((1,) + shape, np.float32)
    y = model(x)
    dy = np.zeros_like(y)
    dy[0, 0, y.shape[2] // 2, y.shape[3] // 2] = 1.0
    dx = model.backward(dy)[0, 0]
    rows = np.nonzero(dx.any(axis=1))[0]
    cols = np.nonzero(dx.any(axis=0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_receptive_field_matches_the_gradient_support():
    m = st.Sequential(
        [
            L.Conv2d(1, 1, (3, 5), stride=(2, 1)),
            L.AvgPool2d(2, stride=(1, 2)),
            L.Conv2d(1, 1, 3, dilation=(2, 1)),
        ]
    )
    rows = I.summary_rows(m, (1, 41, 41))
    assert _empirical_rf(m, (1, 41, 41)) == rows[-1]["rf"]
    assert rows[-1]["jump"] == (2, 2)


def test_inferred_input_shapes():
    assert I.infer_input_shape(st.zoo.lenet5()) == (1, 32, 32)
    assert I.infer_input_shape(st.zoo.lenet5(input_size=28)) == (1, 28, 28)
    assert I.infer_input_shape(st.zoo.typical_cnn(in_channels=1)) == (1, 32, 32)
    rows = I.summary_rows(st.zoo.lenet5(input_size=28), None)
    assert rows[-1]["input_shape"] == (1, 28, 28) and rows[-1]["inferred"]
    assert "(1, 28, 28) (inferred)" in I.summary(st.zoo.lenet5(input_size=28))


def test_input_shape_needed_without_a_leading_conv():
    m = st.Sequential([L.Flatten(), L.Linear(12, 3)])
    with pytest.raises(ValueError, match="`input_shape`.*Flatten"):
        I.summary(m)
    with pytest.raises(ValueError, match="`input_shape`"):
        I.summary(st.Sequential([]))
    # A model of Linear layers takes a (features,) shape and has no receptive field.
    rows = I.summary_rows(st.Sequential([L.Linear(12, 3), L.ReLU()]), (12,))
    assert rows[-1]["rf"] is None and rows[-1]["params"] == 39
    assert "receptive field" not in I.summary(st.Sequential([L.Linear(12, 3)]), (12,))


@pytest.mark.parametrize(
    "shape, exc, match",
    [
        ((2, 32, 32), ValueError, "in_channels=1"),
        ((1, 8, 8), ValueError, "too small"),
        ((1, 36, 36), ValueError, r"expects \(400,\)"),
        ((1, 32), ValueError, r"\(C, H, W\)"),
        ((8, 1, 32, 32), ValueError, "batch dimension"),
        ((1, 0, 32), ValueError, "positive ints"),
        ((1, 32.0, 32), ValueError, "positive ints"),
        ("1x32x32", TypeError, "`input_shape`"),
    ],
)
def test_bad_input_shapes(shape, exc, match):
    with pytest.raises(exc, match=match) as info:
        I.summary(st.zoo.lenet5(), shape)
    assert "input_shape" in str(info.value)


def test_frozen_counts_and_table():
    st.seed(0)
    m = st.zoo.lenet5()
    m.freeze(upto=4)
    rows = I.summary_rows(m, (1, 32, 32))
    assert rows[0]["frozen"] == 156 and rows[3]["frozen"] == 2416 and rows[7]["frozen"] == 0
    assert rows[-1]["frozen"] == 2572 and rows[-1]["trainable"] == 61_706 - 2572
    text = I.summary(m)
    lines = text.splitlines()
    assert "output shape" in lines[0] and "FLOPs" in lines[0] and "RF" in lines[0] and "jump" in lines[0]
    assert lines[0].split()[-1] == "params"
    conv = next(l for l in lines if "Conv2d(1, 6, 5)" in l)
    assert conv.rstrip().endswith("156") and "(6, 28, 28)" in conv and "18.4 KiB" in conv
    assert "total params: 61,706 (trainable 59,134, frozen 2,572)" in text
    assert "receptive field 32, jump 20; input shape (1, 32, 32) (inferred)" in text
    assert "851K" in text  # forward FLOPs per sample


def test_si_and_bytes_formatting():
    assert I._si(999) == "999" and I._si(1234) == "1.23K" and I._si(2.5e9) == "2.5G" and I._si(None) == "?"
    assert I._bytes(100) == "100 B" and I._bytes(2048) == "2 KiB" and I._bytes(3 * 2**20) == "3 MiB"
