"""striate.model.Sequential: container, backward, torch state names, loading, freezing, heads, config."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

import striate as st
from striate import layers as L
from striate import losses


BACKENDS = ["numpy"] + (["cpp"] if hasattr(st._core, "conv2d_forward") else [])


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request):
    """Every test runs on the NumPy reference and, once built, on the C++ kernels."""
    st.set_backend(request.param)
    return request.param


def make(seed=0):
    st.seed(seed)
    return st.Sequential(
        [
            L.Conv2d(1, 3, 3, padding=1),
            L.BatchNorm2d(3),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(3, 4, 3, stride=2, bias=False),
            L.Tanh(),
            L.Flatten(),
            L.Linear(4, 5),
            L.Sigmoid(),
            L.Linear(5, 3),
        ]
    )


X_SHAPE = (3, 1, 6, 6)


# ----------------------------------------------------------------------------- container


def test_container_protocol():
    m = make()
    assert len(m) == 10
    assert isinstance(m[0], L.Conv2d) and m[-1] is m[9]
    assert [type(l).__name__ for l in m][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    head = m[7:]
    assert isinstance(head, st.Sequential) and len(head) == 3 and head[0] is m[7]
    with pytest.raises(IndexError, match="`index`"):
        m[10]
    with pytest.raises(TypeError, match="`index`"):
        m["0"]
    with pytest.raises(TypeError, match=r"`layers\[1\]`"):
        st.Sequential([L.ReLU(), "relu"])
    assert len(st.Sequential(L.ReLU(), L.Tanh())) == 2
    relu = L.ReLU()
    with pytest.raises(ValueError, match="already in the model"):
        st.Sequential([relu, L.Tanh(), relu])
    with pytest.raises(ValueError, match="already in the model"):
        m[1] = m[0]
    with pytest.raises(ValueError, match="already in the model"):
        m.append(m[0])
    m[0] = m[0]  # putting a layer back in its own place is fine
    assert "Conv2d(1, 3, 3, padding=1)" in repr(m)


def test_setitem_renames_and_keeps_mode():
    m = make().eval()
    new = L.Linear(4, 5)
    m[7] = new
    assert m[7] is new and not new.training
    assert [p.name for p in new.parameters()] == ["7.weight", "7.bias"]
    with pytest.raises(TypeError):
        m[7] = "linear"


def test_parameters_in_torch_order():
    m = make()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "7.weight", "7.bias", "9.weight", "9.bias"]
    assert [p.name for p in m.parameters()] == names
    assert list(m.state_dict()) == [
        "0.weight", "0.bias",
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "4.weight", "7.weight", "7.bias", "9.weight", "9.bias",
    ]  # fmt: skip


def test_state_dict_names_match_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    tm = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.Tanh(), nn.Flatten(),
        nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3),
    )  # fmt: skip
    ours = make().state_dict()
    theirs = tm.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].shape == tuple(v.shape)
        assert ours[k].dtype == v.numpy().dtype
    assert [n for n, _ in make().named_parameters()] == [n for n, _ in tm.named_parameters()]
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()}, strict=True)


# ----------------------------------------------------------------------------- forward / backward


def _model_loss(m, x, y):
    return losses.CrossEntropy()(m(x), y)


def test_whole_model_gradcheck_float64(rng):
    m = make().astype(np.float64)
    x = rng.standard_normal(X_SHAPE)
    y = np.array([0, 2, 1])
    ce = losses.CrossEntropy()
    ce(m(x), y)
    dx = m.backward(ce.backward())
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    eps = 1e-6
    for arr, g in [(x, dx)] + [(p.data, grads[n]) for n, p in m.named_parameters()]:
        for idx in rng.choice(arr.size, size=min(arr.size, 8), replace=False):
            i = np.unravel_index(idx, arr.shape)
            old = arr[i]
            arr[i] = old + eps
            fp = _model_loss(m, x, y)
            arr[i] = old - eps
            fm = _model_loss(m, x, y)
            arr[i] = old
            num = (fp - fm) / (2 * eps)
            assert abs(g[i] - num) <= 1e-5 + 1e-3 * abs(num)


def test_backward_is_the_chain_of_layers(rng):
    m = make()
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    out = m(x)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = m.backward(dy)
    d = dy
    for layer in reversed(list(m)):
        d = layer.backward(d)
    np.testing.assert_array_equal(dx, d)


def test_backward_without_input_grad(rng):
    m = make()
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    dy = rng.standard_normal((3, 3)).astype(np.float32)
    m(x)
    m.backward(dy)
    want = {n: p.grad.copy() for n, p in m.named_parameters()}
    m(x)
    assert m.backward(dy, input_grad=False) is None
    assert m[0].needs_input_grad  # restored
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, want[n])


def test_backward_stops_at_first_trainable_layer(rng):
    m = make()
    m.freeze(upto=4)
    calls = []
    for i in range(4):
        orig = m[i].backward

        def spy(dy, i=i, orig=orig):
            calls.append(i)
            return orig(dy)

        m[i].backward = spy
    m(rng.standard_normal(X_SHAPE).astype(np.float32))
    assert m.backward(np.ones((3, 3), np.float32), input_grad=False) is None
    assert calls == []
    assert all(p.grad is None for p in m[:4].parameters())
    assert m[4].weight.grad is not None
    m(rng.standard_normal(X_SHAPE).astype(np.float32))
    assert m.backward(np.ones((3, 3), np.float32)).shape == X_SHAPE
    assert calls == [3, 2, 1, 0]


# ----------------------------------------------------------------------------- load_state_dict


def test_load_state_dict_round_trip_in_place():
    a, b = make(0), make(1)
    arrays = [p.data for p in b.parameters()]
    b.load_state_dict(a.state_dict())
    assert [p.data for p in b.parameters()] == arrays  # same objects: optimizers stay valid
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_state_dict_is_a_copy():
    m = make()
    sd = m.state_dict()
    sd["0.weight"][...] = 0
    assert np.any(m[0].weight.data)


@pytest.mark.parametrize(
    "edit, exc, match",
    [
        (lambda d: d.pop("9.bias"), ValueError, "missing"),
        (lambda d: d.__setitem__("10.weight", np.zeros(1, np.float32)), ValueError, "unexpected"),
        (lambda d: d.__setitem__("9.bias", np.zeros(4, np.float32)), ValueError, "9.bias"),
        (lambda d: d.__setitem__("9.bias", np.zeros(3, np.float64)), ValueError, "9.bias"),
        (lambda d: d.__setitem__("1.num_batches_tracked", np.array(1.0)), ValueError, "num_batches_tracked"),
        (lambda d: d.__setitem__("9.bias", [0.0, 0.0, 0.0]), TypeError, "9.bias"),
    ],
)
def test_load_state_dict_all_or_nothing(edit, exc, match):
    src, dst = make(0), make(1)
    d = src.state_dict()
    edit(d)
    before = dst.state_dict()
    with pytest.raises(exc, match=match):
        dst.load_state_dict(d)
    for k, v in before.items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)


# ----------------------------------------------------------------------------- modes, freezing, heads


def test_train_eval():
    m = make()
    assert m.training
    assert m.eval() is m and not m.training and not any(l.training for l in m)
    m.train()
    assert all(l.training for l in m)


def test_freeze_unfreeze():
    m = make()
    m.freeze(upto=2)
    assert [p.trainable for p in m.parameters()] == [False] * 4 + [True] * 5
    m.freeze()
    assert not any(p.trainable for p in m.parameters())
    m.unfreeze()
    assert all(p.trainable for p in m.parameters())
    m.freeze(upto=0)
    assert all(p.trainable for p in m.parameters())
    with pytest.raises(ValueError, match="`upto`"):
        m.freeze(upto=11)
    with pytest.raises(ValueError, match="`upto`"):
        m.freeze(upto=-1)
    with pytest.raises(TypeError, match="`upto`"):
        m.freeze(upto=1.5)


def test_frozen_batchnorm_in_model_keeps_running_stats(rng):
    m = make()
    m.freeze(upto=2)
    m(rng.standard_normal(X_SHAPE).astype(np.float32))
    np.testing.assert_array_equal(m[1].running_mean, np.zeros(3, np.float32))
    m.unfreeze()
    m(rng.standard_normal(X_SHAPE).astype(np.float32))
    assert np.any(m[1].running_mean)


def test_optimizer_skips_frozen_layers(rng):
    m = make()
    m.freeze(upto=4)
    frozen = [p.data.copy() for p in m[:4].parameters()]
    opt = st.optim.SGD(m.parameters(), lr=0.1)
    ce = losses.CrossEntropy()
    ce(m(rng.standard_normal(X_SHAPE).astype(np.float32)), np.array([0, 1, 2]))
    m.backward(ce.backward(), input_grad=False)
    opt.step()
    for a, p in zip(frozen, m[:4].parameters()):
        np.testing.assert_array_equal(a, p.data)


def test_replace_head():
    m = make()
    old = m[9]
    head = m.replace_head(7)
    assert m[9] is head and head is not old
    assert (head.in_features, head.out_features) == (5, 7)
    assert head.weight.name == "9.weight" and head.weight.trainable
    assert m[7].out_features == 5  # only the last Linear is replaced
    x = np.zeros(X_SHAPE, np.float32)
    assert m(x).shape == (3, 7)
    nb = st.Sequential([L.Flatten(), L.Linear(4, 2, bias=False)])
    assert nb.replace_head(3).bias is None
    assert make().astype(np.float64).replace_head(2).weight.data.dtype == np.float64


def test_replace_head_errors():
    with pytest.raises(ValueError, match="no Linear"):
        st.Sequential([L.Conv2d(1, 1, 1), L.ReLU()]).replace_head(3)
    with pytest.raises(ValueError, match="`num_classes`"):
        make().replace_head(0)
    with pytest.raises(TypeError, match="`num_classes`"):
        make().replace_head(2.0)


# ----------------------------------------------------------------------------- description


def test_summary_delegates_to_introspect():
    m = make()
    s = m.summary((1, 6, 6))
    lines = s.splitlines()
    assert "output shape" in lines[0] and "params" in lines[0]
    assert any("Conv2d(1, 3, 3, padding=1)" in l and "(3, 6, 6)" in l and l.rstrip().endswith("30") for l in lines)
    assert any("Linear(5, 3)" in l and "(3,)" in l for l in lines)
    total = sum(p.size for p in m.parameters())
    assert f"total params: {total:,}" in s
    assert "FLOPs" in lines[0] and "input shape (1, 6, 6) (inferred)" in m.summary()
    m.freeze(upto=1)
    assert "frozen 30" in m.summary((1, 6, 6))


def test_output_shapes_match_forward(rng):
    m = make()
    shapes = m.output_shapes(X_SHAPE[1:])
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    for layer, shape in zip(m, shapes):
        x = layer(x)
        assert x.shape[1:] == shape


def test_config_round_trip():
    m = make()
    cfg = m.to_config()
    assert json.loads(json.dumps(cfg)) == cfg
    m2 = st.Sequential.from_config(cfg)
    assert m2.to_config() == cfg
    assert list(m2.state_dict()) == list(m.state_dict())
    with pytest.raises(ValueError, match="`config`"):
        st.Sequential.from_config({"layers": []})
    with pytest.raises(ValueError, match="version"):
        st.Sequential.from_config({**cfg, "version": 9})
    with pytest.raises(ValueError, match="`type_name`"):
        st.Sequential.from_config({**cfg, "layers": [{"type": "Nope", "config": {}}]})


def test_astype_float64_runs(rng):
    m = make().astype(np.float64)
    y = m(rng.standard_normal(X_SHAPE))
    assert y.dtype == np.float64


def test_save_and_load(tmp_path, rng):
    m = make().eval()
    m.save(tmp_path / "m.safetensors")
    m2 = st.load(tmp_path / "m.safetensors").eval()
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    np.testing.assert_array_equal(m(x), m2(x))


def test_fit_evaluate_predict_delegate(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        fit=lambda model, x, y, **kw: calls.append(("fit", model, x, y, kw)) or "history",
        evaluate=lambda model, x, y, **kw: calls.append(("evaluate", model, x, y, kw)) or {"loss": 0.0},
        predict=lambda model, x, **kw: calls.append(("predict", model, x, kw)) or "probs",
    )
    monkeypatch.setattr(st, "training", fake, raising=False)
    m = make()
    assert m.fit("x", "y", epochs=2, batch_size=8) == "history"
    assert m.evaluate("x", "y", batch_size=4) == {"loss": 0.0}
    assert m.predict("x", batch_size=4) == "probs"
    assert calls == [
        ("fit", m, "x", "y", {"epochs": 2, "batch_size": 8}),
        ("evaluate", m, "x", "y", {"batch_size": 4}),
        ("predict", m, "x", {"batch_size": 4}),
    ]


def test_bitwise_equal_across_thread_counts(backend, rng):
    """Outputs and every gradient of a whole model do not depend on the thread count."""
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    dy = rng.standard_normal((3, 3)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        st.set_num_threads(threads)
        m = make()
        out = m(x)
        dx = m.backward(dy)
        results.append([out, dx] + [p.grad for p in m.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_docstring_examples():
    import doctest

    from striate import model as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", ["lenet5", "typical_cnn"])
def test_outputs_do_not_depend_on_the_batch(name):
    """A sample's output is bitwise the same whatever batch it is computed in (cached features rely on it)."""
    if st.get_backend() != "cpp":
        pytest.skip("a promise of the C++ kernels; the reference runs on numpy's BLAS")
    st.seed(0)
    model = st.zoo.lenet5() if name == "lenet5" else st.zoo.typical_cnn()
    model.eval()
    c = 1 if name == "lenet5" else 3
    x = np.random.default_rng(3).random((70, c, 32, 32), dtype=np.float32)
    full = model(x)
    for rows in (1, 5, 64, 69):
        assert np.array_equal(full[:rows], model(x[:rows])), rows
    assert np.array_equal(full[40:41], model(x[40:41]))


def _torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_training_parity_with_torch(loss):
    """50 SGD steps (momentum, Nesterov, weight decay) of LeNet-5 match torch.nn.Sequential: loss within 1e-4."""
    torch = pytest.importorskip("torch")
    from striate import losses as Lo
    from striate import optim

    st.seed(0)
    model = st.zoo.lenet5()
    net = _torch_lenet(torch)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    kw = dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = optim.SGD(model.parameters(), **kw)
    topt = torch.optim.SGD(net.parameters(), **kw)
    loss_fn = Lo.get_loss(loss)
    rng = np.random.default_rng(1)
    for step in range(50):
        x = rng.random((16, 1, 32, 32), dtype=np.float32)
        y = rng.integers(0, 10, 16)
        out = model(x)
        value = loss_fn(out, y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        topt.zero_grad()
        tout = net(torch.from_numpy(x))
        if loss == "cross_entropy":
            tloss = torch.nn.functional.cross_entropy(tout, torch.from_numpy(y))
        else:
            t = torch.nn.functional.one_hot(torch.from_numpy(y), 10).float()
            tloss = 0.5 * ((t - tout) ** 2).sum(dim=1).mean()
        tloss.backward()
        topt.step()
        assert abs(value - tloss.item()) <= 1e-4 * abs(tloss.item()), (step, value, tloss.item())
