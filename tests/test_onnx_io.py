"""ONNX export checked in onnxruntime, and import back into a Sequential (issue 10)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import striate as st  # noqa: E402
from striate import layers as L  # noqa: E402
from striate import zoo  # noqa: E402
from striate.onnx_io import OnnxExportError, export, import_model  # noqa: E402


def _run_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _assert_close(a, b, rtol=1e-5):
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _every_layer_model():
    st.seed(3)
    model = st.Sequential([
        L.Conv2d(3, 8, 3, padding=1),
        L.BatchNorm2d(8),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Conv2d(8, 8, 3, padding="same", groups=2, dilation=2),
        L.Tanh(),
        L.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        L.Conv2d(8, 8, 1),
        L.ReLU(),
        L.LPPool2d(2, 2),
        L.Sigmoid(),
        L.AdaptiveAvgPool2d(2),
        L.Dropout(0.3),
        L.Flatten(),
        L.Linear(32, 10),
        L.Softmax(),
    ])
    # Give BatchNorm non-trivial running statistics.
    model.train()
    for _ in range(3):
        model(np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    model.eval()
    return model


@pytest.mark.parametrize("name", ["lenet5", "typical_cnn", "every_layer"])
def test_export_matches_onnxruntime(tmp_path, name):
    if name == "lenet5":
        model, shape = zoo.lenet5(), (1, 32, 32)
    elif name == "typical_cnn":
        model, shape = zoo.typical_cnn(), (3, 32, 32)
    else:
        model, shape = _every_layer_model(), (3, 16, 16)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    model.to_onnx(path, input_shape=shape)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 13
    x = np.random.default_rng(1).random((5, *shape), dtype=np.float32)
    _assert_close(_run_ort(path, x), model(x))
    # The batch dimension is dynamic.
    _assert_close(_run_ort(path, x[:2]), model(x[:2]))


def test_export_ceil_mode_pools(tmp_path):
    model = st.Sequential([L.MaxPool2d(2, ceil_mode=True), L.AvgPool2d(2, ceil_mode=True), L.Flatten()])
    path = tmp_path / "ceil.onnx"
    export(model, path, (2, 7, 7))
    x = np.random.default_rng(2).standard_normal((3, 2, 7, 7)).astype(np.float32)
    _assert_close(_run_ort(path, x), model(x))


def test_export_rejects_inexpressible_layers(tmp_path):
    with pytest.raises(OnnxExportError, match="layer 0 .*AdaptiveAvgPool2d"):
        export(st.Sequential([L.AdaptiveAvgPool2d(3)]), tmp_path / "a.onnx", (1, 7, 7))
    with pytest.raises(OnnxExportError, match="layer 1 .*LPPool2d.*norm_type"):
        export(st.Sequential([L.ReLU(), L.LPPool2d(1.5, 2)]), tmp_path / "b.onnx", (1, 4, 4))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [(1, 32), (0, 32, 32), "abc", (1.0, 2, 2)])
def test_export_rejects_bad_input_shape(tmp_path, bad):
    with pytest.raises(ValueError, match="input_shape"):
        export(zoo.lenet5(), tmp_path / "x.onnx", bad)


def test_export_rejects_low_opset(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export(zoo.lenet5(), tmp_path / "x.onnx", (1, 32, 32), opset=11)


def test_import_round_trip(tmp_path):
    model = _every_layer_model()
    path = tmp_path / "m.onnx"
    export(model, path, (3, 16, 16))
    back = import_model(path)
    back.eval()
    # Dropout is exported as Identity, which import drops; an even AdaptiveAvgPool2d
    # is exported as (and comes back as) a plain AveragePool.
    rename = {"AdaptiveAvgPool2d": "AvgPool2d"}
    assert [type(layer).__name__ for layer in back] == [
        rename.get(type(layer).__name__, type(layer).__name__)
        for layer in model if not isinstance(layer, L.Dropout)
    ]
    x = np.random.default_rng(4).random((2, 3, 16, 16), dtype=np.float32)
    _assert_close(back(x), model(x))


def test_import_rejects_garbage(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\x01not a protobuf" * 10)
    with pytest.raises(ValueError, match="junk.onnx"):
        import_model(p)


def test_import_rejects_unknown_op(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Elu", ["input"], ["output"], name="odd")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])],
    )
    p = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(ValueError, match="odd.*Elu"):
        import_model(p)


def test_import_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3),
    ).eval()
    p = tmp_path / "torch.onnx"
    x = torch.rand(2, 1, 8, 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(p), dynamo=False, opset_version=17)
    except Exception as e:  # pragma: no cover - exporter availability varies
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    model = import_model(p)
    with torch.no_grad():
        want = net(x).numpy()
    _assert_close(model(x.numpy()), want)


def test_cli_export(tmp_path, capsys):
    """`striate export MODEL OUT.onnx` writes a model onnxruntime runs like striate."""
    from striate import cli

    st.seed(0)
    model = zoo.lenet5()
    saved = tmp_path / "m.safetensors"
    model.save(saved)
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(saved), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    _assert_close(_run_ort(out, x), st.load(saved)(x))
    assert cli.main(["export", "lenet5", str(tmp_path / "z.onnx"), "--input-shape", "1", "32", "32"]) == 0
    assert cli.main(["export", str(tmp_path / "missing.safetensors"), str(tmp_path / "q.onnx")]) == 1
