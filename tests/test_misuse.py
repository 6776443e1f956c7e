"""Tests that misuse raises instead of giving a silent wrong result, and that errors say the truth.

RELIABILITY items 23 (an optimizer over other parameters, a negative
running_var, masked arrays, bools given as strings) and 24 (the real limit of
an int argument, the label received, a checkpoint path that is a directory).
Not here: bad kernel arguments (test_core_hostile.py, test_functional.py).
"""

import os

import numpy as np
import pytest

import striate as st
import striate.functional as F
from striate import io, layers as L, onnx_io, optim
from striate.model import Sequential
from striate.training import evaluate, fit, predict


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


def _model():
    st.seed(0)
    return Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.Flatten(), L.Linear(8, 3)])


def test_optimizer_over_other_parameters_raises():
    x, y = _data()
    model, other = _model(), _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match="not the model's"):
        fit(model, x, y, epochs=1, optimizer=optim.SGD(other.parameters(), lr=0.1), verbose=0)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("arg", ["shuffle", "distributed", "cache_features"])
def test_bool_given_as_string_raises_type_error(arg):
    x, y = _data()
    with pytest.raises(TypeError, match=f"`{arg}` must be a bool"):
        fit(_model(), x, y, epochs=1, verbose=0, **{arg: "no"})


def test_negative_running_var_refused_safetensors(tmp_path):
    m = _model()
    m.layers[1].running_var[0] = -1.0
    path = tmp_path / "m.safetensors"
    m.save(path)
    with pytest.raises(io.FormatError, match="running_var.*non-negative"):
        st.load(path)
    with pytest.raises(io.FormatError, match="non-negative"):
        io.load_weights(_model(), path)


def test_negative_running_var_refused_onnx(tmp_path):
    pytest.importorskip("onnx")
    m = _model()
    m.eval()
    m.layers[1].running_var[1] = -0.5
    path = tmp_path / "m.onnx"
    onnx_io.export(m, path, input_shape=(1, 4, 4))
    with pytest.raises(io.FormatError, match="non-negative"):
        onnx_io.import_model(path)


def test_masked_arrays_refused():
    x, y = _data()
    mx = np.ma.masked_array(x, mask=np.zeros_like(x, bool))
    model = _model()
    with pytest.raises(TypeError, match="MaskedArray"):
        fit(model, mx, y, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="MaskedArray"):
        fit(model, x, np.ma.masked_array(y), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="MaskedArray"):
        predict(model, mx)
    with pytest.raises(TypeError, match="MaskedArray"):
        evaluate(model, mx, y)
    with pytest.raises(TypeError, match="MaskedArray"):
        L.ReLU()(mx)
    with pytest.raises(TypeError, match="MaskedArray"):
        F.max_pool2d(mx, 2)


def test_int_limit_is_named():
    with pytest.raises(ValueError, match=r"at most 2\*\*31-1.*1099511627776"):
        L.Linear(2**40, 2)


@pytest.mark.parametrize("label, shown", [(np.uint64(2**64 - 1), "18446744073709551615"), (1e30, "1e+30")])
def test_huge_label_is_shown_as_received(label, shown):
    x, _ = _data(4)
    y = np.array([0, 1, 2, label], dtype=type(label) if isinstance(label, np.generic) else np.float64)
    with pytest.raises(ValueError) as info:
        fit(_model(), x, y, epochs=1, verbose=0)
    assert shown in str(info.value) and "-1" not in str(info.value).replace(shown, ""), str(info.value)


def test_checkpoint_directory_fails_before_first_epoch(tmp_path):
    x, y = _data()
    d = tmp_path / "ck"
    d.mkdir()
    seen = []

    class Spy(st.training.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    with pytest.raises(ValueError, match="`checkpoint`"):
        fit(_model(), x, y, epochs=2, checkpoint=d, callbacks=[Spy()], verbose=0)
    assert seen == [] and os.listdir(tmp_path) == ["ck"] and os.listdir(d) == []


def _exported(tmp_path, model, shape):
    pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    model.eval()
    onnx_io.export(model, path, input_shape=shape)
    return path


def test_onnx_constructor_error_names_file_and_node(tmp_path):
    import onnx

    path = _exported(tmp_path, Sequential([L.MaxPool2d(2), L.Flatten()]), (1, 4, 4))
    proto = onnx.load(path)
    node = next(n for n in proto.graph.node if n.op_type == "MaxPool")
    for a in node.attribute:
        if a.name == "kernel_shape":
            del a.ints[:]
            a.ints.extend([0, 0])
    onnx.save(proto, path)
    with pytest.raises(ValueError) as info:
        onnx_io.import_model(path)
    msg = str(info.value)
    assert str(path) in msg and f"node {node.name}" in msg and "MaxPool" in msg, msg


def test_summary_of_an_onnx_file_summarises_it(tmp_path, capsys):
    from striate import cli

    st.seed(0)
    path = _exported(tmp_path, Sequential([L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(8, 3)]), (1, 4, 4))
    rc = cli.main(["summary", str(path), "--input-shape", "1", "4", "4"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Conv2d" in out and "Linear" in out and "header" not in out + err


def test_sequential_from_eight_threads_is_right_or_raises():
    import threading

    st.seed(0)
    model = Sequential([L.Conv2d(1, 8, 3), L.ReLU(), L.Conv2d(8, 8, 3), L.Flatten(), L.Linear(8 * 12 * 12, 5)])
    model.eval()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((16, 1, 16, 16)).astype(np.float32) for _ in range(8)]
    expected = [model(x) for x in xs]
    outcomes = [[] for _ in xs]
    barrier = threading.Barrier(len(xs))

    def work(i):
        barrier.wait()
        for _ in range(20):
            try:
                outcomes[i].append(("ok", model(xs[i])))
            except RuntimeError as exc:
                outcomes[i].append(("raised", str(exc)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    raised = 0
    for i, outs in enumerate(outcomes):
        assert len(outs) == 20
        for kind, v in outs:
            if kind == "ok":
                assert np.array_equal(v, expected[i]), f"thread {i} got a wrong answer"
            else:
                raised += 1
                assert "another thread" in v
    assert raised > 0, "no concurrent entry happened: the test did not exercise anything"
