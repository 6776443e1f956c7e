"""Fuzzing of every file loader with hypothesis over bytes (Guarantee Tools, items 9-12).

Targets: the MNIST IDX parser (raw and gzip), the CIFAR-10 binary and
python-pickle batches, the safetensors weights loader (``io.read_file`` and
``st.load``), and the ONNX importer. Each starts from a valid file and mutates
it (bit flips, overwritten bytes and integer fields, truncation, insertion,
deletion, appended garbage, edited header lengths and header JSON), next to
plain random bytes. Only the documented errors may come out: ValueError (for
the weights loader, exactly ``striate.io.FormatError``); anything else, a
crash or a hang is a bug.

Budget: ``STRIATE_FUZZ_EXAMPLES`` examples per target (default 200, for CI).
A long local run, e.g. ``STRIATE_FUZZ_EXAMPLES=25000 nice pytest tests/test_fuzz.py``,
is how the loaders are hardened.

Not here: the hand-written malformed-file cases (test_io.py, test_mnist.py,
test_cifar.py, test_onnx_io.py), and kernel arguments (test_functional.py).
"""

from __future__ import annotations

import gzip
import io as pyio
import json
import os
import pickle
import subprocess
import sys
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import striate as st
from striate import io, layers as L
from striate.datasets import cifar, mnist

EXAMPLES = int(os.environ.get("STRIATE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_INTERESTING = [0, 1, 2, 3, 7, 8, 255, 256, 2049, 2051, 3072, 3073, 2**16, 2**31 - 1, 2**31, 2**32 - 1,
                2**32, 2**53, 2**63 - 1, 2**64 - 1]


@hs.composite
def mutated(draw, base: bytes, max_ops=4):
    """``base`` after 1..max_ops random edits."""
    data = bytearray(base)
    for _ in range(draw(hs.integers(1, max_ops))):
        op = draw(hs.sampled_from(["flip", "set", "int", "truncate", "insert", "delete", "append"]))
        n = len(data)
        if op == "flip" and n:
            pos = draw(hs.integers(0, n - 1))
            data[pos] ^= 1 << draw(hs.integers(0, 7))
        elif op == "set" and n:
            data[draw(hs.integers(0, n - 1))] = draw(hs.integers(0, 255))
        elif op == "int" and n:
            width = draw(hs.sampled_from([1, 2, 4, 8]))
            pos = draw(hs.integers(0, max(0, n - width)))
            value = draw(hs.one_of(hs.sampled_from(_INTERESTING), hs.integers(0, 2**64 - 1))) % (1 << (8 * width))
            order = draw(hs.sampled_from(["little", "big"]))
            data[pos:pos + width] = value.to_bytes(width, order)[: n - pos]
        elif op == "truncate":
            data = data[: draw(hs.integers(0, n))]
        elif op == "insert":
            pos = draw(hs.integers(0, n))
            data[pos:pos] = draw(hs.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            pos = draw(hs.integers(0, n - 1))
            del data[pos:pos + draw(hs.integers(1, 16))]
        elif op == "append":
            data += draw(hs.binary(min_size=1, max_size=64))
    return bytes(data)


def _bytes_from(*bases, max_size=512):
    return hs.one_of(hs.binary(max_size=max_size), *[mutated(b) for b in bases])


# ----------------------------------------------------------------------------- MNIST IDX


def _idx(magic, dims, payload):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


IDX_IMAGES = _idx(mnist.IMAGES_MAGIC, (3, 4, 5), bytes(range(60)))
IDX_LABELS = _idx(mnist.LABELS_MAGIC, (3,), bytes([1, 9, 0]))


def _parse_both(data, name, magic, gz):
    if gz:
        return mnist.parse_idx(gzip.GzipFile(fileobj=pyio.BytesIO(data)), name, magic)
    return mnist.parse_idx(pyio.BytesIO(data), name, magic, len(data))


@FUZZ
@given(data=_bytes_from(IDX_IMAGES, IDX_LABELS, gzip.compress(IDX_IMAGES), gzip.compress(IDX_LABELS)),
       gz=hs.booleans(), compress_after=hs.booleans())
def test_fuzz_idx(data, gz, compress_after):
    """Guarantee 11 / Tools: the IDX parser (raw and gzip) raises only ValueError on any bytes."""
    if gz and compress_after:
        data = gzip.compress(data)
    results = {}
    for name, magic in (("images", mnist.IMAGES_MAGIC), ("labels", mnist.LABELS_MAGIC)):
        try:
            arr = _parse_both(data, name, magic, gz)
        except ValueError as e:
            assert name in str(e) and "offset" in str(e), str(e)
            continue
        assert arr.dtype == np.uint8 and arr.ndim == (magic & 0xFF)
        results[name] = arr
    if len(results) == 2:
        try:
            mnist._check_pair(results["images"], results["labels"], "images", "labels")
        except ValueError as e:
            assert "offset" in str(e)


# ----------------------------------------------------------------------------- CIFAR-10


def _cifar_bin(labels):
    rng = np.random.default_rng(0)
    return b"".join(bytes([lab]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for lab in labels)


CIFAR_BIN = _cifar_bin([3, 9])


@FUZZ
@given(data=hs.one_of(hs.binary(max_size=8000), mutated(CIFAR_BIN)))
def test_fuzz_cifar_binary(data):
    """Guarantee 12 / Tools: a binary CIFAR-10 batch parses or raises ValueError, whatever the bytes."""
    try:
        x, y = cifar.parse_cifar_bin(data, "batch.bin")
    except ValueError as e:
        assert "batch.bin" in str(e)
        return
    assert x.shape == (len(data) // 3073, 3, 32, 32) and ((y >= 0) & (y < 10)).all()


def _cifar_pickles():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    out = []
    for proto in (2, 3, 4, 5):
        out.append(pickle.dumps({b"data": images, b"labels": [1, 7], b"batch_label": b"x"}, protocol=proto))
    out.append(pickle.dumps({"data": images, "labels": np.array([0, 9], np.int64)}, protocol=2))
    return out


CIFAR_PICKLES = _cifar_pickles()


@FUZZ
@given(data=hs.one_of(hs.binary(max_size=512), *[mutated(b) for b in CIFAR_PICKLES]))
def test_fuzz_cifar_pickle(data):
    """Guarantee 10, 12 / Tools: the restricted unpickler turns any bytes into a batch or a ValueError."""
    try:
        x, y = cifar.parse_cifar_pickle(data, "data_batch_1")
    except ValueError as e:
        assert "data_batch_1" in str(e)
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (x.shape[0],)


# dtype('u1', copy=True) then BUILD with a 6-tuple state: numpy's dtype __setstate__
# takes it and crashes the interpreter (segfault in arraydescr_setstate, numpy 2.4).
_DTYPE_STATE_CRASH = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"
                      b"(K\x03X\x01\x00\x00\x00|NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")


def test_cifar_pickle_with_a_malformed_dtype_state_is_refused_not_a_crash():
    """Guarantee 10, 12 (found by fuzzing): a dtype state numpy would crash on is refused with ValueError.

    Run in a fresh process: before the fix this input killed it with SIGSEGV.
    """
    code = ("import sys\nfrom striate.datasets import cifar\n"
            "try:\n    cifar.parse_cifar_pickle(sys.stdin.buffer.read(), 'batch')\n"
            "except ValueError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(st.__file__)))
    r = subprocess.run([sys.executable, "-c", code], input=_DTYPE_STATE_CRASH, capture_output=True, env=env,
                       timeout=120)
    assert r.returncode == 0, f"exit status {r.returncode}: {r.stderr.decode()[-2000:]}"
    assert b"refused dtype state" in r.stdout


@pytest.mark.parametrize("i", range(len(CIFAR_PICKLES)))
def test_cifar_pickles_of_every_in_band_protocol_still_load(i):
    """Guarantee 12: the checked BUILD accepts what numpy writes (protocols 2-4, bytes or str keys)."""
    if i == 3:  # protocol 5 stores the array out of band through a function that is not allowed
        with pytest.raises(ValueError, match="refused global"):
            cifar.parse_cifar_pickle(CIFAR_PICKLES[i], "batch")
        return
    x, y = cifar.parse_cifar_pickle(CIFAR_PICKLES[i], "batch")
    assert x.shape == (2, 3, 32, 32) and y.dtype == np.int64


# ----------------------------------------------------------------------------- safetensors weights


def _weights_file():
    st.seed(0)
    model = st.Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                           L.Dropout(0.25), L.Linear(18, 3)])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        model.save(path)
        with open(path, "rb") as f:
            return f.read(), model.state_dict()


WEIGHTS, WEIGHTS_STATE = _weights_file()
_N = int.from_bytes(WEIGHTS[:8], "little")
WEIGHTS_HEADER = json.loads(WEIGHTS[8:8 + _N])
WEIGHTS_DATA = WEIGHTS[8 + _N:]

_json_scalar = hs.one_of(hs.none(), hs.booleans(), hs.integers(-2**65, 2**65), hs.sampled_from(_INTERESTING),
                         hs.floats(allow_nan=False), hs.text(max_size=8),
                         hs.sampled_from(["F32", "F64", "I64", "U8", "BF16", "F16", "BOOL", "f32", ""]))
_json_value = hs.recursive(_json_scalar, lambda inner: hs.one_of(hs.lists(inner, max_size=5),
                                                                 hs.dictionaries(hs.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


def _edit_config(draw, arch):
    """Change one value in one layer's config (or the layer list itself)."""
    layers = arch.get("layers")
    if not isinstance(layers, list) or not layers or draw(hs.integers(0, 9)) == 0:
        arch[draw(hs.sampled_from(["layers", "format", "version", "extra"]))] = draw(_json_value)
        return
    i = draw(hs.integers(0, len(layers) - 1))
    spec = layers[i]
    if not isinstance(spec, dict):
        layers[i] = draw(_json_value)
        return
    what = draw(hs.sampled_from(["config", "config", "config", "type", "drop", "dup"]))
    if what == "type":
        spec["type"] = draw(hs.one_of(hs.sampled_from(["Conv2d", "Linear", "BatchNorm2d", "Dropout", "MaxPool2d",
                                                       "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d", "Flatten",
                                                       "ReLU", "Softmax", "Layer", "Parameter"]), _json_scalar))
    elif what == "drop":
        del layers[i]
    elif what == "dup":
        layers.insert(i, json.loads(json.dumps(spec)))
    else:
        cfg = spec.get("config")
        if not isinstance(cfg, dict):
            spec["config"] = draw(_json_value)
            return
        keys = sorted(cfg) + ["bogus"]
        key = draw(hs.sampled_from(keys))
        cfg[key] = draw(hs.one_of(_json_value, hs.tuples(hs.integers(-3, 2**40), hs.integers(-3, 2**40)).map(list)))


@hs.composite
def edited_weights(draw):
    """The valid file with its header JSON edited; the checksums optionally recomputed to reach deeper checks."""
    header = json.loads(json.dumps(WEIGHTS_HEADER))
    meta = header["__metadata__"]
    target = draw(hs.sampled_from(["entry", "entry", "arch", "arch", "arch", "meta", "top"]))
    if target == "arch":
        arch = json.loads(meta[io.ARCH_KEY])
        for _ in range(draw(hs.integers(1, 3))):
            _edit_config(draw, arch)
        meta[io.ARCH_KEY] = json.dumps(arch)
    elif target == "entry":
        name = draw(hs.sampled_from(sorted(k for k in header if k != "__metadata__")))
        what = draw(hs.sampled_from(["dtype", "shape", "data_offsets", "delete_key", "add_key", "drop", "rename"]))
        if what in ("dtype", "shape", "data_offsets"):
            header[name][what] = draw(_json_value)
        elif what == "delete_key":
            del header[name][draw(hs.sampled_from(["dtype", "shape", "data_offsets"]))]
        elif what == "add_key":
            header[name]["extra"] = draw(_json_value)
        elif what == "drop":
            del header[name]
        else:
            header[draw(hs.text(max_size=8))] = header.pop(name)
    elif target == "meta":
        meta[draw(hs.sampled_from([io.CHECKSUM_KEY, io.ARCH_KEY, "striate.version", "x"]))] = draw(
            hs.one_of(hs.text(max_size=20), _json_value.map(json.dumps)))
    else:
        header[draw(hs.text(max_size=8))] = draw(_json_value)
    if draw(hs.booleans()) and isinstance(header.get("__metadata__"), dict):
        meta = header["__metadata__"]
        try:
            sums = json.loads(meta[io.CHECKSUM_KEY])
            sums["__metadata__"] = io._metadata_digest(meta)
            meta[io.CHECKSUM_KEY] = json.dumps(sums, sort_keys=True)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
    raw = json.dumps(header).encode()
    length = len(raw)
    if draw(hs.integers(0, 9)) == 0:
        length = draw(hs.one_of(hs.sampled_from(_INTERESTING), hs.integers(0, len(raw) + 64)))
    return length.to_bytes(8, "little") + raw + WEIGHTS_DATA


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield d


@FUZZ
@given(data=hs.one_of(hs.binary(max_size=256), mutated(WEIGHTS, max_ops=3), edited_weights(),
                      edited_weights().flatmap(lambda b: mutated(b, max_ops=2))))
def test_fuzz_weights_file(data, scratch):
    """Guarantee 9 / Tools: st.load and io.read_file refuse a damaged file with one FormatError, nothing else.

    A file that still loads must give back exactly the saved tensors.
    """
    path = os.path.join(scratch, "w.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    for reader in (io.read_file, io.read_header):
        try:
            reader(path)
        except io.FormatError as e:
            assert e.path == path
    try:
        model = st.load(path)
    except io.FormatError as e:
        assert e.path == path and str(e).startswith(path)
        return
    sd = model.state_dict()
    assert sd.keys() == WEIGHTS_STATE.keys()
    for k, v in WEIGHTS_STATE.items():
        np.testing.assert_array_equal(sd[k], v)


# ----------------------------------------------------------------------------- ONNX import


def _onnx_file():
    pytest.importorskip("onnx")
    from striate import onnx_io

    st.seed(0)
    model = st.Sequential([L.Conv2d(1, 2, 3, padding=1), L.BatchNorm2d(2), L.ReLU(), L.MaxPool2d(2),
                           L.AvgPool2d(2, stride=1), L.LPPool2d(2, 2, 1), L.Flatten(), L.Linear(8, 3),
                           L.Softmax()])
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        onnx_io.export(model, path, input_shape=(1, 8, 8))
        with open(path, "rb") as f:
            return f.read()


_ATTR_NAMES = ["kernel_shape", "strides", "pads", "dilations", "group", "ceil_mode", "count_include_pad", "p",
               "axis", "alpha", "beta", "transA", "transB", "epsilon", "auto_pad", "momentum"]
_OPS = ["Conv", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "BatchNormalization", "Relu", "Tanh",
        "Sigmoid", "Softmax", "Flatten", "Gemm", "Identity", "Dropout", "Add", ""]
_attr_value = hs.one_of(hs.integers(-3, 2**40), hs.floats(allow_nan=True, allow_infinity=True, width=32),
                        hs.lists(hs.integers(-3, 2**40), max_size=5), hs.text(max_size=6),
                        hs.lists(hs.floats(width=32, allow_nan=False), min_size=1, max_size=3))


@hs.composite
def edited_onnx(draw, base):
    """The valid model with one to three structural edits of nodes, attributes, initializers or inputs."""
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(base)
    g = proto.graph
    for _ in range(draw(hs.integers(1, 3))):
        what = draw(hs.sampled_from(["attr", "attr", "attr", "del_attr", "op", "del_input", "add_input",
                                     "del_node", "dup_node", "init_dims", "init_type", "init_data", "init_del",
                                     "graph_input", "output"]))
        if what in ("attr", "del_attr", "op", "del_input", "add_input", "del_node", "dup_node", "output") and g.node:
            i = draw(hs.integers(0, len(g.node) - 1))
            node = g.node[i]
            if what == "attr":
                name = draw(hs.sampled_from(_ATTR_NAMES + [a.name for a in node.attribute]))
                for j in reversed(range(len(node.attribute))):
                    if node.attribute[j].name == name:
                        del node.attribute[j]
                value = draw(_attr_value)
                if isinstance(value, list) and not value:
                    value = [0]
                node.attribute.append(helper.make_attribute(name, value))
            elif what == "del_attr" and node.attribute:
                del node.attribute[draw(hs.integers(0, len(node.attribute) - 1))]
            elif what == "op":
                node.op_type = draw(hs.sampled_from(_OPS))
            elif what == "del_input" and node.input:
                del node.input[draw(hs.integers(0, len(node.input) - 1))]
            elif what == "add_input":
                node.input.append(draw(hs.sampled_from(["", "input", "nope"] + [t.name for t in g.initializer])))
            elif what == "del_node":
                del g.node[i]
            elif what == "dup_node":
                g.node.insert(i, node)
            elif what == "output" and node.output:
                node.output[0] = draw(hs.sampled_from(["", "input", "t1", "x"]))
        elif what.startswith("init") and g.initializer:
            t = g.initializer[draw(hs.integers(0, len(g.initializer) - 1))]
            if what == "init_dims":
                del t.dims[:]
                t.dims.extend(draw(hs.lists(hs.integers(0, 2**33), max_size=5)))
            elif what == "init_type":
                t.data_type = draw(hs.integers(0, 20))
            elif what == "init_data":
                t.raw_data = draw(mutated(t.raw_data or b"\x00", max_ops=2))
            else:
                g.initializer.remove(t)
        elif what == "graph_input" and g.input:
            if draw(hs.booleans()):
                del g.input[0]
            else:
                g.input.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    return proto.SerializeToString()


try:
    ONNX_BASE = _onnx_file()
except pytest.skip.Exception:  # pragma: no cover - onnx is an optional extra
    ONNX_BASE = None


@pytest.mark.skipif(ONNX_BASE is None, reason="needs the onnx extra")
@FUZZ
@given(data=hs.one_of(hs.binary(max_size=256), mutated(ONNX_BASE or b"", max_ops=3),
                      edited_onnx(ONNX_BASE or b"") if ONNX_BASE else hs.just(b"")))
def test_fuzz_onnx_import(data, scratch):
    """Guarantee Tools: onnx_io.import_model turns any bytes into a Sequential or a ValueError."""
    from striate import onnx_io

    path = os.path.join(scratch, "m.onnx")
    with open(path, "wb") as f:
        f.write(data)
    try:
        model = onnx_io.import_model(path)
    except ValueError:
        return
    assert isinstance(model, st.Sequential) and len(model) >= 1


# ----------------------------------------------------------------------------- regressions found by fuzzing


def _edit_onnx(edit):
    import onnx

    proto = onnx.load_from_string(ONNX_BASE)
    edit(proto.graph)
    return proto.SerializeToString()


def _set_attr(node, name, value):
    from onnx import helper

    for j in reversed(range(len(node.attribute))):
        if node.attribute[j].name == name:
            del node.attribute[j]
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


_ONNX_REGRESSIONS = {
    "Conv kernel_shape an INT, not INTS": lambda g: _set_attr(g.node[0], "kernel_shape", 0),
    "Conv group an INTS list": lambda g: _set_attr(g.node[0], "group", [1, 2]),
    "Conv pads an INT": lambda g: _set_attr(g.node[0], "pads", 1),
    "MaxPool without kernel_shape": lambda g: _set_attr(g.node[3], "kernel_shape", None),
    "Conv kernel_shape larger than its weight": lambda g: _set_attr(g.node[0], "kernel_shape", [3000, 3000]),
    "Conv without its weight input": lambda g: g.node[0].input.__delitem__(slice(1, None)),
    "Gemm with a scalar bias": lambda g: g.initializer[-1].dims.__delitem__(slice(None)),
    "initializer of UNDEFINED type": lambda g: setattr(g.initializer[0], "data_type", 0),
    "node without an output": lambda g: g.node[2].output.__delitem__(0),
}


@pytest.mark.skipif(ONNX_BASE is None, reason="needs the onnx extra")
@pytest.mark.parametrize("case", sorted(_ONNX_REGRESSIONS))
def test_onnx_import_malformed_nodes_are_value_errors(case, tmp_path):
    """Guarantee Tools (fuzzing): attributes of the wrong type or missing parts give ValueError naming the file.

    Each of these escaped as TypeError, KeyError or IndexError before, and a
    kernel_shape larger than the weight made the importer allocate (and
    initialise) a layer of that size before noticing (3000x3000: 72 MB of weights).
    """
    from striate import onnx_io

    path = tmp_path / "m.onnx"
    path.write_bytes(_edit_onnx(_ONNX_REGRESSIONS[case]))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=str(tmp_path)) as info:
            onnx_io.import_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(info.value) is ValueError
    assert peak < 50 * 2**20, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"


# Training checkpoints whose metadata JSON was edited (and its digest recomputed,
# so the edit reaches the checkpoint decoder): found by fuzzing the decoder, where
# TypeError, AttributeError and (at the next step) KeyError escaped.


def _checkpoint_with(tmp_path, edit):
    from striate import optim, training

    st.seed(0)
    model = st.Sequential([L.Flatten(), L.Linear(4, 3)])
    x, y = np.zeros((8, 1, 2, 2), np.float32), np.zeros(8, np.int64)
    path = tmp_path / "c.ckpt"
    training.fit(model, x, y, epochs=1, batch_size=8, optimizer=optim.Adam(model.parameters()), seed=0,
                 checkpoint=path, verbose=0)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header["__metadata__"]
    ck = json.loads(meta[training._CHECKPOINT_KEY])
    edit(ck)
    meta[training._CHECKPOINT_KEY] = json.dumps(ck)
    sums = json.loads(meta[io.CHECKSUM_KEY])
    sums["__metadata__"] = io._metadata_digest(meta)
    meta[io.CHECKSUM_KEY] = json.dumps(sums, sort_keys=True)
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    return path, model, x, y


def _pairs(ck):
    return ck["optimizer_state"]["__dict__"]


_CHECKPOINT_REGRESSIONS = {
    "optimizer state key that is a list": lambda ck: _pairs(ck)[0].__setitem__(0, ["type"]),
    "optimizer state key that is an int": lambda ck: _pairs(ck)[6].__setitem__(0, 3),
    "optimizer state entry that is not a pair": lambda ck: _pairs(ck).__setitem__(0, 5),
    "Adam state without exp_avg_sq": lambda ck: _pairs(ck).pop(8),
}


@pytest.mark.parametrize("case", sorted(_CHECKPOINT_REGRESSIONS))
def test_malformed_checkpoint_metadata_is_a_format_error(case, tmp_path):
    """Guarantee 9, 15: checkpoint metadata of the wrong shape is refused with FormatError (a ValueError).

    Loading either refuses the file or gives a state that trains on; no other exception escapes.
    """
    from striate import optim, training

    path, model, x, y = _checkpoint_with(tmp_path, _CHECKPOINT_REGRESSIONS[case])
    for run in (lambda: training.load_checkpoint(path, model, optim.Adam(model.parameters())),
                lambda: training.fit(model, x, y, epochs=2, batch_size=8, verbose=0, resume_from=path)):
        try:
            run()
        except ValueError:
            pass

