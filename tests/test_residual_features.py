"""Every model feature through nested containers (issue 15, item 3).

summary and profile, save/load with a nested architecture validated as
strictly as a flat one, ONNX export with Add nodes and import back (also
from torch.onnx), gradcheck, the frozen-backbone feature cache, LayerHealth
names, MPI data-parallel fit, checkpoints with a bit-exact resume in a fresh
process. The torch parity, bad-input and fuse tests are in test_residual.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import striate as st
from striate import io, optim, zoo
from striate import introspect as I
from striate import layers as L
from striate.datasets import load_digits
from striate.training import LayerHealth, feature_cache, fit
from test_fuzz import edited_onnx

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(st.__file__)))
S = st.Sequential


@pytest.fixture(scope="module")
def digits8():
    (x, y), (xt, yt) = load_digits(size=8)
    return x[:192], y[:192], xt[:64], yt[:64]


def small_resnet(seed=0, p=None, bn=True, classes=10):
    """Two residual blocks (identity and projection) on 1x8x8 digits, with Dropout(p) inside (Identity for None)."""
    st.seed(seed)
    norm = (lambda c: L.BatchNorm2d(c)) if bn else (lambda c: L.Identity())
    drop = L.Identity() if p is None else L.Dropout(p)
    body1 = S([L.Conv2d(4, 4, 3, padding=1, bias=not bn), norm(4), L.ReLU(), drop, L.Conv2d(4, 4, 3, padding=1)])
    body2 = S([L.Conv2d(4, 8, 3, stride=2, padding=1), L.ReLU(), L.Conv2d(8, 8, 3, padding=1)])
    return S([
        L.Conv2d(1, 4, 3, padding=1), norm(4), L.ReLU(),
        L.Residual(body1), L.ReLU(),
        L.Residual(body2, S([L.Conv2d(4, 8, 1, stride=2), norm(8)])), L.ReLU(),
        L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(8, classes),
    ])


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- summary and profile


def test_summary_of_resnet20():
    rows = I.summary_rows(zoo.resnet20(), (3, 32, 32))
    top = [r for r in rows[:-1] if r["depth"] == 0]
    total = rows[-1]
    assert len(top) == 24 and total["params"] == 272_474 and total["output_shape"] == (10,)
    block = next(r for r in rows if r["index"] == 9)
    inner = {r["index"]: r for r in rows if isinstance(r["index"], str) and r["index"].startswith("9.")}
    assert block["type"] == "Residual" and block["output_shape"] == (32, 16, 16) and block["params"] == 14_528
    assert block["flops"] == inner["9.body"]["flops"] + inner["9.shortcut"]["flops"] + 32 * 16 * 16
    assert inner["9.body"]["flops"] == sum(inner[f"9.body.{j}"]["flops"] for j in range(5))
    assert inner["9.shortcut.0"]["depth"] == 2 and inner["9.shortcut.0"]["rf"] == (15, 15)
    assert block["rf"] == inner["9.body"]["rf"] == (21, 21) and block["jump"] == (2, 2)
    assert block["activation_bytes"] == 4 * 32 * 16 * 16 * (1 + 5 + 2)
    assert total["activation_bytes"] == sum(r["activation_bytes"] for r in top)
    assert total["flops"] == sum(r["flops"] for r in top) and total["flops_complete"]
    text = zoo.resnet20().summary()
    assert "total params: 272,474" in text and "  9.body.0" not in text and "9.body.0   " in text
    assert "\n9.shortcut" in text and "    Conv2d(16, 32, 1, stride=2, bias=False)" in text


def _empirical_rf(model, shape):
    """Support of d(centre output)/d(input) with positive weights (no cancellation)."""
    for p in model.parameters():
        p.data[...] = 1.0
    y = model(np.ones((1,) + shape, np.float32))
    dy = np.zeros_like(y)
    dy[0, 0, y.shape[2] // 2, y.shape[3] // 2] = 1.0
    dx = model.backward(dy)[0, 0]
    rows, cols = np.nonzero(dx.any(axis=1))[0], np.nonzero(dx.any(axis=0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_receptive_field_through_both_branches_matches_the_gradient_support():
    m = S([
        L.Conv2d(1, 1, 3),
        L.Residual(S([L.Conv2d(1, 1, 3, padding=1), L.Conv2d(1, 1, 3, stride=2, padding=1)]), L.Conv2d(1, 1, 1, stride=2)),
        L.Residual(S([L.Conv2d(1, 1, 5, padding=2)])),
        L.Residual(L.Conv2d(1, 1, 1), S([L.Conv2d(1, 1, 7, padding=3)])),  # the shortcut is the wider branch
    ])
    rows = I.summary_rows(m, (1, 41, 41))
    assert rows[-1]["rf"] == (27, 27) and rows[-1]["jump"] == (2, 2)
    assert _empirical_rf(m, (1, 41, 41)) == rows[-1]["rf"]


def test_summary_misfits_name_the_nested_layer():
    m = S([L.Conv2d(3, 4, 3, padding=1), L.Residual(S([L.Conv2d(3, 4, 3, padding=1)]))])
    with pytest.raises(ValueError, match=r"layer 1\.body\.0 \(Conv2d.*in_channels=3"):
        I.summary_rows(m, (3, 8, 8))
    m = S([L.Conv2d(3, 4, 3, padding=1), L.Residual(L.Conv2d(4, 4, 3, stride=2, padding=1))])
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\): its body gives \(4, 4, 4\) but the identity"):
        I.summary_rows(m, (3, 8, 8))
    assert I.infer_input_shape(S([S([L.Conv2d(2, 3, 3)]), L.Flatten()])) == (2, 32, 32)


def test_profile_times_each_block_as_one_row():
    m = small_resnet()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    before = m.state_dict()
    r = m.profile(x, repeat=1, warmup=0)
    assert len(r.rows) == len(m) + 1 and r.rows[3]["layer"] == "Residual (identity shortcut)"
    summary = I.summary_rows(m, (1, 8, 8))
    top = [row for row in summary[:-1] if row["depth"] == 0]
    assert [row["flops"] for row in r.rows[:-1]] == [row["flops"] * 4 for row in top]
    assert r.rows[5]["backward_flops"] > r.rows[5]["flops"] > 0
    assert weights_equal_dict(before, m.state_dict())


def weights_equal_dict(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- files


@pytest.fixture
def saved(tmp_path):
    m = small_resnet(seed=2)
    m.train()
    m(np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    path = tmp_path / "res.safetensors"
    m.save(path)
    return m, path


def test_save_load_round_trip(saved):
    m, path = saved
    back = st.load(path)
    assert back.to_config() == m.to_config() and weights_equal(back, m)
    assert isinstance(back[3], L.Residual) and isinstance(back[5].shortcut, st.Sequential)
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(back.eval()(x), m.eval()(x))
    other = small_resnet(seed=5)
    io.load_weights(other, path)
    assert weights_equal(other, m)


def _rewrite(path, out, mutate):
    tensors, meta = io.read_file(path)
    arch = json.loads(meta[io.ARCH_KEY])
    mutate(arch)
    io.write_file(out, tensors, {io.ARCH_KEY: json.dumps(arch)})


def _body(arch, i=3):
    return arch["layers"][i]["config"]["body"]["config"]["layers"]


def _deep(arch):
    spec = {"type": "ReLU", "config": {}}
    for _ in range(40):
        spec = {"type": "Sequential", "config": {"layers": [spec]}}
    arch["layers"].append(spec)


def _wide(arch):
    arch["layers"].append({"type": "Sequential", "config": {"layers": [{"type": "ReLU", "config": {}}] * 10_001}})


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: _body(a)[0].__setitem__("type", "Evil"), r"layer 3\.body\.0: unknown layer type 'Evil'"),
        (lambda a: _body(a)[0]["config"].__setitem__("in_channels", 0), r"layer 3\.body\.0 \(Conv2d\).*in_channels"),
        (lambda a: _body(a)[1]["config"].__setitem__("momentum", 1.5), r"layer 3\.body\.1 \(BatchNorm2d\).*`momentum`"),
        (lambda a: _body(a)[0]["config"].__setitem__("stride", {"h": 1}), r"layer 3\.body\.0 \(Conv2d\): config must"),
        (lambda a: _body(a).pop(1), r"tensor '3\.body\.\d\."),
        (lambda a: a["layers"][3]["config"].pop("shortcut"), r"layer 3 \(Residual\): config must"),
        (lambda a: a["layers"][3]["config"].__setitem__("body", None), r"layer 3\.body must be an object"),
        (lambda a: a["layers"][5]["config"]["shortcut"]["config"].__setitem__("extra", 1), r"layer 5\.shortcut \(Sequential\)"),
        (lambda a: a["layers"][5]["config"]["shortcut"]["config"].__setitem__("layers", {}), r"layer 5\.shortcut \(Sequential\)"),
        (lambda a: a["layers"][5]["config"].__setitem__("shortcut", None), r"tensor '5\.shortcut\..*unexpected tensor"),
        (_deep, "nested more than"),
        (_wide, "too many layers"),
    ],
)
def test_bad_nested_architecture_is_a_format_error(saved, tmp_path, mutate, match):
    _, path = saved
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, mutate)
    with pytest.raises(io.FormatError, match=match) as info:
        st.load(bad)
    assert str(bad) in str(info.value)


def test_nested_shape_change_names_the_tensor(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, lambda a: _body(a, 5)[2]["config"].__setitem__("out_channels", 9))
    with pytest.raises(io.FormatError, match="shape") as info:
        st.load(bad)
    assert info.value.tensor == "5.body.2.weight"


def _tree_paths(tree, path=()):
    yield path
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield from _tree_paths(v, path + (k,))


_NESTED = small_resnet(seed=6)
_NESTED_ARCH = _NESTED.to_config()
_NESTED_PATHS = list(_tree_paths(_NESTED_ARCH["layers"]))[1:]
_SCALARS = hs.one_of(hs.none(), hs.booleans(), hs.integers(-3, 2**40), hs.floats(allow_nan=False), hs.text(max_size=6),
                     hs.sampled_from(["Sequential", "Residual", "Conv2d", "ReLU", "Identity", "layers", "body"]))
_VALUES = hs.recursive(_SCALARS, lambda inner: hs.one_of(hs.lists(inner, max_size=3),
                                                         hs.dictionaries(hs.text(max_size=6), inner, max_size=3)),
                       max_leaves=6)


@hs.composite
def nested_edits(draw):
    """The nested architecture with one to three values replaced, deleted or duplicated anywhere in the tree."""
    arch = json.loads(json.dumps(_NESTED_ARCH))
    for _ in range(draw(hs.integers(1, 3))):
        path = draw(hs.sampled_from(_NESTED_PATHS))
        parent = arch["layers"]
        try:
            for k in path[:-1]:
                parent = parent[k]
            key = path[-1]
            what = draw(hs.sampled_from(["replace", "replace", "delete", "copy"]))
            if what == "replace":
                parent[key] = draw(_VALUES)
            elif what == "delete":
                del parent[key]
            elif isinstance(parent, list):
                parent.insert(key, json.loads(json.dumps(parent[key])))
            else:
                parent[key] = json.loads(json.dumps(arch["layers"][3]))  # a whole block in its place
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed the path
    return arch


@settings(max_examples=int(os.environ.get("STRIATE_FUZZ_EXAMPLES", "80")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(arch=nested_edits())
def test_fuzz_nested_architecture(arch, tmp_path):
    """A nested architecture edited anywhere either loads (with the architecture it says) or is one FormatError."""
    path = tmp_path / "f.safetensors"
    io.write_file(path, _NESTED.state_dict(), {io.ARCH_KEY: json.dumps(arch)})
    try:
        model = st.load(path)
    except io.FormatError as e:
        assert e.path == str(path)
        return
    assert model.to_config()["layers"] == st.Sequential.from_config(model.to_config()).to_config()["layers"]
    assert list(model.state_dict()) == list(_NESTED.state_dict())


# ----------------------------------------------------------------------------- ONNX


def test_onnx_export_with_add_nodes_and_import_back(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    st.seed(3)
    m = zoo.resnet(8, num_classes=4)
    m.train()
    m(np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    m.eval()
    path = tmp_path / "r.onnx"
    m.to_onnx(path, (3, 16, 16))
    proto = onnx.load(str(path))
    assert sum(n.op_type == "Add" for n in proto.graph.node) == 3
    assert {"3.body.0.weight", "7.shortcut.0.weight", "7.shortcut.1.running_var"} <= {t.name for t in proto.graph.initializer}
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    want = m(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-5)
    back = st.onnx_io.import_model(path).eval()
    kinds = [type(l).__name__ for l in L.nodes(back)]
    assert kinds == [type(l).__name__.replace("AdaptiveAvgPool2d", "GlobalAvgPool2d") for l in L.nodes(m)]
    assert list(back.state_dict()) == list(m.state_dict())
    np.testing.assert_allclose(back(x), want, rtol=1e-5, atol=1e-6)
    fused = tmp_path / "fused.onnx"
    m.fuse().to_onnx(fused, (3, 16, 16))
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(fused)).graph.node)
    sess = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-5)


def test_import_of_a_torch_onnx_resnet(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from test_residual import load_into_torch, torch_resnet20

    st.seed(0)
    model = zoo.resnet(14)
    model.train()
    model(np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    net = load_into_torch(torch, torch_resnet20(torch, n=2), model).eval()
    path = tmp_path / "torch.onnx"
    x = torch.rand(2, 3, 16, 16)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)
    except Exception as e:  # pragma: no cover - exporter availability varies
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    back = st.onnx_io.import_model(path).eval()
    assert sum(isinstance(l, L.Residual) for l in back) == 6
    assert sum(isinstance(l.shortcut, (L.Conv2d, st.Sequential)) for l in back if isinstance(l, L.Residual)) == 2
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(back(x.numpy()), want, rtol=1e-4, atol=1e-5)


def _graph(tmp_path, nodes, inits=()):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=list(inits),
    )
    p = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


def test_import_refuses_branches_that_are_not_residual(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    make = helper.make_node
    three = [make("Relu", ["input"], ["a"]), make("Tanh", ["input"], ["b"]), make("Sigmoid", ["input"], ["c"]),
             make("Add", ["a", "b"], ["output"])]
    with pytest.raises(ValueError, match="read by 3 nodes"):
        st.onnx_io.import_model(_graph(tmp_path, three))
    const = numpy_helper.from_array(np.ones((1, 2, 4, 4), np.float32), "k")
    with pytest.raises(ValueError, match="Add"):
        st.onnx_io.import_model(_graph(tmp_path, [make("Relu", ["input"], ["a"]), make("Add", ["a", "k"], ["output"])], [const]))
    apart = [make("Relu", ["input"], ["a"]), make("Tanh", ["input"], ["b"]), make("Relu", ["a"], ["a2"]),
             make("Add", ["a2", "a"], ["output"]), make("Add", ["b", "b"], ["unused"])]
    with pytest.raises(ValueError):
        st.onnx_io.import_model(_graph(tmp_path, apart))
    ok = [make("Relu", ["input"], ["a"]), make("Add", ["a", "input"], ["output"])]
    back = st.onnx_io.import_model(_graph(tmp_path, ok))
    assert isinstance(back[0], L.Residual) and isinstance(back[0].body, L.ReLU) and back[0].shortcut is None


def _residual_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:  # pragma: no cover - onnx is an optional extra
        return None
    m = small_resnet(seed=8).eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.onnx")
        m.to_onnx(path, (1, 8, 8))
        with open(path, "rb") as f:
            return f.read()


RESIDUAL_ONNX = _residual_onnx()


@pytest.mark.skipif(RESIDUAL_ONNX is None, reason="needs the onnx extra")
@settings(max_examples=int(os.environ.get("STRIATE_FUZZ_EXAMPLES", "80")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(raw=edited_onnx(RESIDUAL_ONNX) if RESIDUAL_ONNX else hs.just(b""))
def test_fuzz_residual_onnx_import(raw, tmp_path):
    """Edits of a graph with forks and Add nodes give a Sequential or a ValueError, nothing else."""
    path = tmp_path / "m.onnx"
    path.write_bytes(raw)
    try:
        model = st.onnx_io.import_model(path)
    except ValueError:
        return
    assert isinstance(model, st.Sequential) and len(model) >= 1


# ----------------------------------------------------------------------------- gradcheck


def test_gradcheck_through_nesting_with_input_gradient():
    m = small_resnet(seed=4, p=0.3)
    x = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
    errors = st.gradcheck(m, x, np.array([0, 3, 9]), input_grad=True, max_elements=12)
    assert "3.body.4.weight" in errors and "5.shortcut.1.bias" in errors and "input" in errors
    assert max(errors.values()) < 1e-5, errors


# ----------------------------------------------------------------------------- training


def test_feature_cache_with_a_frozen_residual_backbone(digits8, monkeypatch):
    x, y, xt, yt = digits8
    calls = []
    real = feature_cache._features
    monkeypatch.setattr(feature_cache, "_features", lambda *a: calls.append(1) or real(*a))
    runs = []
    for cache in (True, False):
        m = small_resnet(seed=1).freeze(upto=7)
        assert feature_cache.cache_split(m) == 9
        h = fit(m, x, y, epochs=2, batch_size=32, seed=5, validation_data=(xt, yt), verbose=0, cache_features=cache)
        runs.append((m, h))
    assert len(calls) == 2
    assert weights_equal(runs[0][0], runs[1][0])
    assert runs[0][1].history["loss"] == runs[1][1].history["loss"]
    dropped = small_resnet(seed=1, p=0.5).freeze(upto=7)
    assert feature_cache.cache_split(dropped) == 3  # a Dropout inside a block ends the backbone


def test_layer_health_names_nested_layers(digits8):
    x, y, _, _ = digits8
    m = small_resnet(seed=0)
    h = fit(m, x, y, epochs=1, batch_size=64, callbacks=[LayerHealth()], verbose=0)
    keys = set(h.history)
    assert {"dead_relu/2", "dead_relu/3.body.2", "dead_relu/5.body.1", "dead_relu/6"} <= keys
    assert {"grad_norm/3.body.0.weight", "grad_norm/5.shortcut.1.bias", "grad_norm/9.weight"} <= keys


def test_distributed_fit_of_a_nested_model_under_mpiexec(digits8, tmp_path):
    """Two ranks end with equal weights, within 1e-5 of the same fit in one process."""
    from test_distributed import run_mpi

    run_mpi(
        """
        import os, sys
        import numpy as np, striate as st
        from striate import optim
        from striate.datasets import load_digits
        from striate.distributed import rank
        sys.path.insert(0, os.environ["STRIATE_TEST_DIR"])
        from test_residual_features import small_resnet
        (x, y), _ = load_digits(size=8)
        m = small_resnet(seed=rank(), bn=False)  # different inits: rank 0's weights are broadcast
        opt = optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        m.fit(x[:192], y[:192], epochs=2, batch_size=32, optimizer=opt, seed=rank(), verbose=0, distributed=True)
        out = os.path.join(os.environ["STRIATE_TEST_OUT"], f"rank{rank()}.npy")
        np.save(out, np.concatenate([p.data.ravel() for p in m.parameters()]))
        """,
        env_extra={"STRIATE_TEST_OUT": str(tmp_path), "STRIATE_TEST_DIR": os.path.dirname(os.path.abspath(__file__))},
    )
    w0, w1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert w0.tobytes() == w1.tobytes()
    x, y, _, _ = digits8
    single = small_resnet(seed=0, bn=False)
    fit(single, x, y, epochs=2, batch_size=32, optimizer=optim.SGD(single.parameters(), lr=0.05, momentum=0.9),
        seed=0, verbose=0)
    np.testing.assert_allclose(w0, np.concatenate([p.data.ravel() for p in single.parameters()]), rtol=0, atol=1e-5)


_RESUME = r"""
import sys
import numpy as np, striate as st
sys.path.insert(0, sys.argv[3])
from test_residual_features import small_resnet
from striate.datasets import load_digits
(x, y), (xt, yt) = load_digits(size=8)
m = small_resnet(seed=99, p=0.3)  # another init: the checkpoint must replace it
m.fit(x[:192], y[:192], epochs=4, batch_size=32, validation_data=(xt[:64], yt[:64]), verbose=0, resume_from=sys.argv[1])
np.savez(sys.argv[2], **m.state_dict())
"""


def test_checkpoint_and_bit_exact_resume_in_a_fresh_process(digits8, tmp_path):
    """2N epochs straight == N epochs, checkpoint, N more in another process and thread count (dropout in a block)."""
    x, y, xt, yt = digits8
    kw = dict(batch_size=32, validation_data=(xt, yt), seed=21, verbose=0)

    def sgd(model):
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    straight = small_resnet(p=0.3)
    fit(straight, x, y, epochs=4, optimizer=sgd(straight), **kw)
    first = small_resnet(p=0.3)
    ckpt = tmp_path / "run.ckpt"
    fit(first, x, y, epochs=2, optimizer=sgd(first), checkpoint=ckpt, **kw)
    assert not weights_equal(first, straight)
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, STRIATE_NUM_THREADS="3")
    proc = subprocess.run(
        [sys.executable, "-c", _RESUME, str(ckpt), str(out), os.path.dirname(os.path.abspath(__file__))],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = np.load(out)
    sd = straight.state_dict()
    assert sorted(resumed.files) == sorted(sd)
    for k in sd:
        assert np.array_equal(resumed[k], sd[k]), k
