"""LeakyReLU, GELU (exact and tanh) and SiLU: torch parity forward and backward, config, ONNX both ways.

Not here: the older activations (test_layers.py) and ONNX for whole models (test_onnx_io.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import striate as st
from striate import layers as L

CASES = [
    ("LeakyReLU", {}, lambda nn: nn.LeakyReLU()),
    ("LeakyReLU", {"negative_slope": 0.2}, lambda nn: nn.LeakyReLU(0.2)),
    ("LeakyReLU", {"negative_slope": -0.5}, lambda nn: nn.LeakyReLU(-0.5)),
    ("GELU", {}, lambda nn: nn.GELU()),
    ("GELU", {"approximate": "tanh"}, lambda nn: nn.GELU(approximate="tanh")),
    ("SiLU", {}, lambda nn: nn.SiLU()),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


def _inputs(dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 3, 5, 6)) * 3).astype(dtype)
    x.flat[:6] = [0.0, -0.0, 12.0, -12.0, 40.0, -40.0]  # zero, saturation, tails
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs, make", CASES, ids=IDS)
def test_forward_and_backward_match_torch(name, kwargs, make, dtype):
    torch = pytest.importorskip("torch")
    x = _inputs(dtype)
    dy = np.random.default_rng(8).standard_normal(x.shape).astype(dtype)
    layer = getattr(L, name)(**kwargs)
    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == dtype and dx.dtype == dtype
    for ref_dtype in {dtype, np.float64}:
        tx = torch.tensor(x.astype(ref_dtype), requires_grad=True)
        ty = make(torch.nn)(tx)
        ty.backward(torch.from_numpy(dy.astype(ref_dtype)))
        if dtype == np.float64:
            tol = dict(rtol=1e-6, atol=1e-12)
        elif ref_dtype == np.float64:  # the rule, to float32 rounding
            tol = dict(rtol=1e-6, atol=1e-7)
        else:  # torch's float32 GELU cancels (1 + erf) or saturates (1 + tanh) in the negative tail
            tol = dict(rtol=1e-6, atol=5e-6)
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)


@pytest.mark.parametrize("name, kwargs, make", CASES, ids=IDS)
def test_gradcheck_in_a_model(name, kwargs, make):
    st.seed(0)
    m = st.Sequential([L.Linear(5, 6), getattr(L, name)(**kwargs), L.Linear(6, 3)])
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    errors = st.gradcheck(m, x, np.array([0, 1, 2, 0]))
    assert max(errors.values()) < 1e-4


@pytest.mark.parametrize("name, kwargs, make", CASES, ids=IDS)
def test_config_save_and_load(tmp_path, name, kwargs, make):
    layer = getattr(L, name)(**kwargs)
    again = L.layer_from_config(name, layer.config())
    assert again.config() == layer.config() and repr(again) == repr(layer)
    st.seed(0)
    m = st.Sequential([L.Flatten(), L.Linear(12, 4), layer, L.Linear(4, 2)])
    m.save(tmp_path / "m.safetensors")
    back = st.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(2).standard_normal((3, 1, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    assert type(back.layers[2]) is type(layer) and back.layers[2].config() == layer.config()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="approximate"):
        L.GELU("erf")
    with pytest.raises(TypeError, match="negative_slope"):
        L.LeakyReLU("0.1")
    with pytest.raises(ValueError, match="negative_slope"):
        L.LeakyReLU(float("nan"))
    with pytest.raises(RuntimeError, match="before forward"):
        L.SiLU().backward(np.zeros(3, np.float32))


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name, kwargs, make", CASES, ids=IDS)
def test_onnx_export_runs_in_onnxruntime_and_imports_back(tmp_path, name, kwargs, make, opset):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from striate.onnx_io import export, import_model

    st.seed(0)
    m = st.Sequential([L.Conv2d(1, 3, 3), getattr(L, name)(**kwargs), L.Flatten(), L.Linear(3 * 4 * 4, 5),
                       getattr(L, name)(**kwargs)])
    x = (np.random.default_rng(3).standard_normal((2, 1, 6, 6)) * 2).astype(np.float32)
    path = export(m, tmp_path / "m.onnx", (1, 6, 6), opset=opset)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = m(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    back = import_model(path)
    assert [type(layer).__name__ for layer in back.layers] == [type(layer).__name__ for layer in m.layers]
    assert back.layers[1].config() == m.layers[1].config()
    np.testing.assert_allclose(back(x), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, kwargs, make", [c for c in CASES if c[0] != "LeakyReLU"], ids=IDS[3:])
def test_onnx_import_of_torch_exported_activations(tmp_path, name, kwargs, make):
    """torch.onnx.export (opset 17) writes GELU and SiLU as compositions; they come back as one layer."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from striate.onnx_io import import_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), make(torch.nn)).eval()
    x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    p = tmp_path / "t.onnx"
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), str(p), dynamo=False, opset_version=17)
    m = import_model(p)
    assert type(m.layers[-1]).__name__ == name and m.layers[-1].config() == getattr(L, name)(**kwargs).config()
    np.testing.assert_allclose(m(x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
