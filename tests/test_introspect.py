"""Tests of striate.introspect: summary rows and table, profile, bench, layer health."""

from __future__ import annotations

import numpy as np
import pytest
from toy_data import blobs

import striate as st
from striate import introspect as I
from striate import layers as L


@pytest.fixture(autouse=True)
def _one_thread():
    """One kernel thread: the tiny models here are dominated by thread wake-ups on a busy machine
    (conftest restores the thread count)."""
    st.set_num_threads(1)

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
    from striate import _summary as S

    assert S._si(999) == "999" and S._si(1234) == "1.23K" and S._si(2.5e9) == "2.5G" and S._si(None) == "?"
    assert S._bytes(100) == "100 B" and S._bytes(2048) == "2 KiB" and S._bytes(3 * 2**20) == "3 MiB"


# ----------------------------------------------------------------------------- profile


def small_net(seed=0):
    st.seed(seed)
    return st.Sequential(
        [
            L.Conv2d(1, 4, 3),
            L.BatchNorm2d(4),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dropout(0.5),
            L.Flatten(),
            L.Linear(4 * 4 * 4, 3),
        ]
    )


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 10, 10)).astype(np.float32), rng.integers(0, 3, size=n)


def test_profile_rows_and_flops():
    m = small_net()
    x, y = batch()
    r = I.profile(m, x, y, repeat=2)
    assert len(r.rows) == len(m) + 1 and r.total["layer"] == "total"
    assert all(row["forward_ms"] > 0 and row["backward_ms"] >= 0 for row in r.rows)
    assert sum(row["share"] for row in r.rows[:-1]) == pytest.approx(1.0)
    summary = I.summary_rows(m, (1, 10, 10))
    assert [row["flops"] for row in r.rows[:-1]] == [s_["flops"] * 8 for s_ in summary[:-1]]
    conv = r.rows[0]
    # the first layer computes no input gradient: only dweight (one forward's MACs) and dbias
    n_out = 8 * 4 * 8 * 8
    assert conv["backward_flops"] == (conv["flops"] - n_out) + n_out
    lin = r.rows[6]
    assert lin["backward_flops"] == 2 * (lin["flops"] - 8 * 3) + 8 * 3
    assert conv["gflops"] == pytest.approx(
        (conv["flops"] + conv["backward_flops"]) / ((conv["forward_ms"] + conv["backward_ms"]) * 1e6)
    )
    assert r.batch_size == 8 and r.repeat == 2 and r.threads == 1 and r.loss_ms > 0
    text = str(r)
    assert "fwd ms" in text and "GFLOP/s" in text and "share" in text and "100.0%" in text
    assert text.splitlines()[-2].split()[0] == "total" and "batch 8, 1 threads" in text
    assert "step_ms" in repr(r)


def test_profile_skips_backward_before_the_first_trainable_layer():
    m = small_net()
    m.freeze(upto=2)
    x, y = batch()
    r = I.profile(m, x, y, repeat=1)
    assert [row["backward_ms"] for row in r.rows[:2]] == [0.0, 0.0]
    assert r.rows[0]["backward_flops"] == 0 and r.rows[6]["backward_ms"] > 0


def test_profile_leaves_the_model_alone():
    m = small_net()
    m.eval()
    x, _ = batch()
    before = m.state_dict()
    st.seed(5)
    draw = st._config.rng().random()
    st.seed(5)
    r = I.profile(m, x, repeat=1, warmup=0)  # y defaults to seeded labels
    assert st._config.rng().random() == draw
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert not m.training and all(p.grad is None for p in m.parameters())
    assert m[4].rng is None and r.rows[4]["forward_ms"] > 0


def test_profile_bad_arguments():
    m = small_net()
    x, y = batch()
    with pytest.raises(ValueError, match="`repeat`"):
        I.profile(m, x, y, repeat=0)
    with pytest.raises(ValueError, match="`warmup`"):
        I.profile(m, x, y, warmup=-1)
    with pytest.raises(TypeError, match="`x`"):
        I.profile(m, x.astype(np.float64), y)
    with pytest.raises(ValueError, match="`x` of shape"):
        I.profile(m, np.zeros((2, 1, 12, 12), np.float32), y[:2])
    with pytest.raises(ValueError, match="`x` must hold"):
        I.profile(m, np.zeros((0, 1, 10, 10), np.float32))


# ----------------------------------------------------------------------------- bench


def test_bench_zoo_without_torch():
    rep = I.bench_zoo(models=("lenet5",), batch_size=4, repeat=1, torch=False)
    prof, torch_ms = rep.results["lenet5"]
    assert torch_ms is None and len(prof.rows) == 13 and prof.batch_size == 4
    text = str(rep)
    assert "== lenet5: input (1, 32, 32)" in text and "PyTorch comparison off" in text
    with pytest.raises(ValueError, match="`models`"):
        I.bench_zoo(models=("resnet50",))
    with pytest.raises(ValueError, match="`torch`"):
        I.bench_zoo(torch="yes")
    with pytest.raises(ValueError, match="`batch_size`"):
        I.bench_zoo(batch_size=0)


def test_bench_zoo_next_to_torch():
    pytest.importorskip("torch")
    rep = I.bench_zoo(models="typical_cnn", batch_size=2, repeat=1)
    prof, torch_ms = rep.results["typical_cnn"]
    assert len(torch_ms) == 13 and all(t is not None and t >= 0 for t in torch_ms)
    assert torch_ms[0] > 0  # the first layer trains: it is timed (only its input gradient is skipped)
    assert "torch ms" in str(rep) and rep.torch_version in str(rep)


def test_torch_layer_times_validates_the_modules():
    torch = pytest.importorskip("torch")
    m = small_net()
    x, _ = batch(4)
    times = I.torch_layer_times(m, x, repeat=1)
    assert len(times) == len(m) and all(t > 0 for t in times[1:])
    m2 = st.Sequential([L.Conv2d(1, 2, 3), _Custom()])
    assert I.torch_layer_times(m2, x, repeat=1)[1] is None
    mod = I._torch_module(L.MaxPool2d(3, 2, 1, ceil_mode=True), torch)
    assert isinstance(mod, torch.nn.MaxPool2d) and mod.ceil_mode


def test_torch_layer_times_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    x, _ = batch(2)
    assert I.torch_layer_times(small_net(), x) is None
    assert "not installed" in str(I.bench_zoo(models="lenet5", batch_size=2, repeat=1))


# ----------------------------------------------------------------------------- layer health


def test_layer_health_in_fit_history():
    m = small_net()
    x, y = blobs(64)
    cb = I.LayerHealth()
    h = m.fit(x, y, epochs=2, batch_size=16, callbacks=[cb], verbose=0)
    names = [n for n, _ in m.named_parameters()]
    for n in names:
        assert len(h.history[f"grad_norm/{n}"]) == 2 and all(v > 0 for v in h.history[f"grad_norm/{n}"])
    assert len(h.history["dead_relu/2"]) == 2 and all(0 <= v <= 1 for v in h.history["dead_relu/2"])
    assert len(h.history["loss"]) == 2


def test_grad_norm_is_the_batch_mean_and_dead_means_zero_for_every_sample():
    m = st.Sequential([L.Linear(2, 3), L.ReLU()])
    cb = I.LayerHealth(model=m)
    cb.on_train_begin({})
    cb.on_epoch_begin(0, {})
    norms = []
    # unit 0 is alive in the first batch only, unit 1 never, unit 2 in both
    for xb in (np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 1.0], [0.0, 2.0]], np.float32)):
        m[0].weight.data[...] = [[1, -1], [-1, -1], [1, 1]]
        m[0].bias.data[...] = 0
        out = m(xb)
        m.backward(np.ones_like(out))
        norms.append(np.linalg.norm(m[0].weight.grad))
        cb.on_batch_end(0, {})
    logs = {"loss": 1.0}
    cb.on_epoch_end(0, logs)
    assert logs["grad_norm/0.weight"] == pytest.approx(np.mean(norms))
    assert logs["dead_relu/1"] == pytest.approx(1 / 3)
    assert logs["loss"] == 1.0


def test_dead_relu_warning():
    x, y = blobs(32)
    dead = st.Sequential([L.Flatten(), L.Linear(100, 8), L.ReLU(), L.Linear(8, 3)])
    dead[1].bias.data[...] = -1e3  # every unit of ReLU 2 is negative for every sample
    with pytest.warns(I.LayerHealthWarning, match=r"ReLU 2: 100.0% of its units are dead"):
        h = dead.fit(x, y, epochs=1, batch_size=16, callbacks=[I.LayerHealth()], verbose=0)
    assert h.history["dead_relu/2"] == [1.0]


def test_exploding_gradient_warnings():
    m = st.Sequential([L.Linear(2, 2)])
    x = np.ones((4, 2), np.float32)
    cb = I.LayerHealth(model=m, max_grad_norm=50.0, growth=10.0)
    cb.on_train_begin({})

    def epoch(e, scale):
        cb.on_epoch_begin(e, {})
        m(x)
        m.backward(np.full((4, 2), scale, np.float32))
        cb.on_batch_end(0, {})
        logs = {}
        cb.on_epoch_end(e, logs)
        return logs

    epoch(0, 0.1)
    with pytest.warns(I.LayerHealthWarning, match=r"epoch 2: gradient of 0.weight exploded: .*x the previous"):
        epoch(1, 2.0)
    with pytest.warns(I.LayerHealthWarning, match="> max_grad_norm 50"):
        epoch(2, 20.0)
    state = cb.state_dict()
    fresh = I.LayerHealth(model=m, max_grad_norm=1e9)
    fresh.load_state_dict(state)
    assert fresh._previous == cb._previous and set(state["previous"]) == {"grad_norm/0.weight", "grad_norm/0.bias"}


def test_history_is_not_written_twice():
    from striate.training import History, TrainState

    m = st.Sequential([L.Linear(2, 2), L.ReLU()])
    cb = I.LayerHealth(model=m)
    hist = History()
    cb.state = TrainState(1, 1, hist)
    cb.on_train_begin({})
    cb.on_epoch_begin(0, {})
    m(np.ones((2, 2), np.float32))
    m.backward(np.ones((2, 2), np.float32))
    cb.on_batch_end(0, {})
    logs = {"loss": 0.5}
    cb.on_epoch_end(0, logs)  # History has no epoch yet: fit will store the logs itself
    assert "grad_norm/0.weight" not in hist.history and "grad_norm/0.weight" in logs
    hist._append(0, {"loss": 0.5})
    cb.on_epoch_end(0, {})  # the epoch is in History: the callback stores its values
    assert len(hist.history["grad_norm/0.weight"]) == 1


def test_layer_health_arguments():
    for kwargs, match in (
        ({"max_grad_norm": 0}, "`max_grad_norm`"),
        ({"growth": float("inf")}, "`growth`"),
        ({"dead_fraction": 1.5}, "`dead_fraction`"),
    ):
        with pytest.raises(ValueError, match=match):
            I.LayerHealth(**kwargs)
    with pytest.raises(RuntimeError, match="no model"):
        I.LayerHealth().on_train_begin({})
    assert isinstance(I.LayerHealth(), st.training.Callback)
