"""striate.io: safetensors round trips, atomic writes, and every kind of damaged file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import striate as st
from striate import io
from striate import layers as L
from striate.io import FormatError


@pytest.fixture(autouse=True)
def _numpy_backend():
    st.set_backend("numpy")


def small_model(seed=0):
    st.seed(seed)
    m = st.Sequential(
        [
            L.Conv2d(1, 2, 3),
            L.BatchNorm2d(2),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Flatten(),
            L.Dropout(0.25),
            L.Linear(18, 3),
        ]
    )
    m[1].running_mean[...] = [0.1, -0.2]
    m[1].num_batches_tracked[...] = 7
    return m


@pytest.fixture
def saved(tmp_path):
    m = small_model()
    path = tmp_path / "model.safetensors"
    m.save(path)
    return m, path


def _raises(path, tensor=None, match=None):
    """Context: FormatError naming ``path`` (and ``tensor``)."""

    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(FormatError, match=match)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self.cm.__exit__(*exc)
            err = self.info.value
            assert str(path) in str(err)
            if tensor is not None:
                assert err.tensor == tensor and repr(tensor) in str(err)
            return ok

    return _Ctx()


def _arch_meta(path):
    _, meta = io.read_header(path)
    return {io.ARCH_KEY: meta[io.ARCH_KEY]}


# ----------------------------------------------------------------------------- round trips


def test_model_round_trip(saved, rng):
    m, path = saved
    m2 = st.load(path)
    assert isinstance(m2, st.Sequential)
    assert m2.to_config() == m.to_config()
    a, b = m.state_dict(), m2.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(m.eval()(x), m2.eval()(x))
    assert io.load_model(path).to_config() == m.to_config()


def test_file_layout(saved):
    m, path = saved
    entries, meta = io.read_header(path)
    assert set(entries) == set(m.state_dict())
    assert entries["1.num_batches_tracked"] == (np.dtype(np.int64), ())
    assert entries["0.weight"] == (np.dtype(np.float32), (2, 1, 3, 3))
    arch = json.loads(meta[io.ARCH_KEY])
    assert [layer["type"] for layer in arch["layers"]][:2] == ["Conv2d", "BatchNorm2d"]
    assert meta["striate.version"] == st.__version__
    assert not [p for p in os.listdir(path.parent) if p != path.name]  # no temp file left


def test_load_does_not_touch_global_rng(saved):
    _, path = saved
    st.seed(5)
    a = st._config.rng().random(3)
    st.seed(5)
    st.load(path)
    np.testing.assert_array_equal(st._config.rng().random(3), a)


def test_write_read_file_round_trip(tmp_path):
    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 5),
        "i64": np.array(3, np.int64),
        "u8": np.arange(4, dtype=np.uint8),
        "empty": np.zeros((0, 4), np.float32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    path = tmp_path / "t.safetensors"
    io.write_file(path, tensors, {"k": "v"})
    out, meta = io.read_file(path)
    assert meta["k"] == "v"
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


def test_write_file_rejects_bad_input(tmp_path):
    path = tmp_path / "t.safetensors"
    with _raises(path, "x", match="non-finite"):
        io.write_file(path, {"x": np.array([1.0, np.nan], np.float32)})
    with _raises(path, "c", match="dtype"):
        io.write_file(path, {"c": np.zeros(2, np.complex64)})
    with _raises(path, "l", match="ndarray"):
        io.write_file(path, {"l": [1.0]})
    with pytest.raises(TypeError, match="`metadata`"):
        io.write_file(path, {"x": np.zeros(1)}, {"k": 1})
    with pytest.raises(ValueError, match="reserved"):
        io.write_file(path, {"x": np.zeros(1)}, {io.CHECKSUM_KEY: "x"})
    assert not path.exists() and not os.listdir(tmp_path)


def test_save_refuses_float64(tmp_path):
    m = small_model().astype(np.float64)
    with _raises(tmp_path / "m.safetensors", "0.weight", match="float32"):
        m.save(tmp_path / "m.safetensors")


def test_foreign_file_without_checksums(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"a": np.ones(3, np.float32)}, str(path))
    with _raises(path, None, match="checksums"):
        io.read_file(path)
    t, _ = io.read_file(path, require_checksums=False)
    np.testing.assert_array_equal(t["a"], np.ones(3))


# ----------------------------------------------------------------------------- atomic writes


def test_failed_write_keeps_old_file(saved, monkeypatch):
    m, path = saved
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(io.os, "fsync", boom)
    m2 = small_model(seed=1)
    with pytest.raises(OSError, match="simulated"):
        m2.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]
    st.load(path)


def test_killed_save_keeps_old_file(saved):
    """A process that dies between writing the temp file and renaming leaves the old file loadable."""
    m, path = saved
    before = path.read_bytes()
    code = textwrap.dedent(
        f"""
        import os, sys
        import striate as st
        from striate import io, layers as L
        st.set_backend("numpy")
        m = st.Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.ReLU(), L.MaxPool2d(2),
                           L.Flatten(), L.Dropout(0.25), L.Linear(18, 3)])
        io.os.replace = lambda *a: os._exit(3)   # killed just before the rename
        m.save({str(path)!r})
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert r.returncode == 3
    assert path.read_bytes() == before
    m2 = st.load(path)
    np.testing.assert_array_equal(m2[0].weight.data, m[0].weight.data)


# ----------------------------------------------------------------------------- damaged files


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with _raises(path, None, match="too short"):
        st.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with _raises(path, None, match="cannot read"):
        st.load(path)


@pytest.mark.parametrize("frac", [0.0005, 0.01, 0.3, 0.6, 0.99])
def test_truncated(saved, tmp_path, frac):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: max(1, int(len(data) * frac))])
    with _raises(bad):
        st.load(bad)


def test_truncated_data_names_the_tensor(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:-1])
    entries, _ = io.read_header(path)
    with _raises(bad, match="truncated") as info:
        st.load(bad)
    assert info.value.tensor in entries


def test_trailing_garbage(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "long.safetensors"
    bad.write_bytes(path.read_bytes() + b"\0")
    with _raises(bad, None, match="data region"):
        st.load(bad)


def _tensor_at(path, pos):
    """The tensor whose data holds byte ``pos`` of the file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")
    for name, info in header.items():
        b, e = info["data_offsets"]
        if 8 + n + b <= pos < 8 + n + e:
            return name
    return None


def test_header_bit_flips_are_caught(saved, tmp_path, rng):
    """Every bit of the length prefix, and one random bit in each of 400 random header bytes.

    (The header also carries a digest of the metadata, so a flip that keeps the
    JSON valid, such as a changed stride, is caught too.)
    """
    _, path = saved
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "flip.safetensors"
    flips = [(pos, bit) for pos in range(8) for bit in range(8)]
    flips += [(int(p), int(rng.integers(8))) for p in rng.choice(np.arange(8, 8 + n), size=min(400, n), replace=False)]
    for pos, bit in flips:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        bad.write_bytes(bytes(flipped))
        with _raises(bad):
            st.load(bad)


def test_metadata_edit_that_keeps_json_valid_is_caught(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    edited = data.replace(b'\\"stride\\": 1', b'\\"stride\\": 3', 1)
    assert edited != data
    bad = tmp_path / "edit.safetensors"
    bad.write_bytes(edited)
    with _raises(bad, None, match="metadata"):
        st.load(bad)


def test_data_bit_flips_name_the_tensor(saved, tmp_path, rng):
    _, path = saved
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "flip.safetensors"
    positions = rng.choice(np.arange(8 + n, len(data)), size=60, replace=False)
    for pos in sorted(int(p) for p in positions):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(flipped))
        with _raises(bad, _tensor_at(path, pos), match="SHA-256|non-finite"):
            st.load(bad)


def _rewrite(path, out, change):
    tensors, _ = io.read_file(path)
    change(tensors)
    io.write_file(out, tensors, _arch_meta(path))


@pytest.mark.parametrize(
    "change, tensor, match",
    [
        (lambda t: t.__setitem__("0.weight", t["0.weight"].astype(np.float64)), "0.weight", "dtype"),
        (lambda t: t.__setitem__("1.num_batches_tracked", np.array(7, np.int32)), "1.num_batches_tracked", "dtype"),
        (lambda t: t.__setitem__("6.bias", np.zeros(4, np.float32)), "6.bias", "shape"),
        (lambda t: t.__setitem__("0.weight", t["0.weight"].reshape(2, 9)), "0.weight", "shape"),
        (lambda t: t.pop("1.running_var"), "1.running_var", "missing"),
        (lambda t: t.__setitem__("7.weight", np.zeros(3, np.float32)), "7.weight", "unexpected"),
        (lambda t: t.__setitem__("2.weight", np.zeros(3, np.float32)), "2.weight", "unexpected"),
    ],
    ids=["f64", "i32_counter", "bias_shape", "weight_shape", "missing", "extra", "param_on_relu"],
)
def test_wrong_tensors(saved, tmp_path, change, tensor, match):
    _, path = saved
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, change)
    with _raises(bad, tensor, match=match):
        st.load(bad)


def _raw_file(header, data=b""):
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def test_non_finite_values(saved, tmp_path):
    from safetensors.numpy import save

    _, path = saved
    tensors, _ = io.read_file(path)
    tensors["6.weight"] = tensors["6.weight"].copy()
    tensors["6.weight"][1, 2] = np.inf
    meta = _arch_meta(path)
    sums = {k: io._sha256(v) for k, v in tensors.items()}
    sums["__metadata__"] = io._metadata_digest(meta)
    meta[io.CHECKSUM_KEY] = json.dumps(sums)
    bad = tmp_path / "inf.safetensors"
    bad.write_bytes(save(tensors, metadata=meta))
    with _raises(bad, "6.weight", match="non-finite"):
        st.load(bad)


@pytest.mark.parametrize(
    "blob, match",
    [
        ((2**63 + 5).to_bytes(8, "little") + b"{}", "cap"),
        ((2**20).to_bytes(8, "little") + b"{}", "past the end"),
        ((17 * 2**20).to_bytes(8, "little") + b"{}", "cap"),
        ((7).to_bytes(8, "little") + b"not json", "not valid JSON"),
        ((4).to_bytes(8, "little") + b"\xff\xfe{}", "not valid JSON"),
        (_raw_file([1, 2]), "JSON object"),
        ((25).to_bytes(8, "little") + b'{"a": 1, "a": 2}         ', "duplicate"),
        (_raw_file({"__metadata__": {"k": 1}}), "__metadata__"),
        (_raw_file({"x": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0"), "dtype"),
        (_raw_file({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (_raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "span"),
        (_raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "data_offsets"),
        (
            _raw_file(
                {
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 8,
            ),
            "overlap",
        ),
        (_raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "overlap or gap"),
        (_raw_file({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly"),
        (_raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "checksums"),
    ],
)
def test_bad_headers(tmp_path, blob, match):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob)
    with _raises(bad, match=match):
        st.load(bad)


class _Payload:
    """Unpickling this creates a file: the side effect the loader must never trigger."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_never_run(tmp_path):
    probe = tmp_path / "probe"
    payload = pickle.dumps(_Payload(str(probe)))
    pickle.loads(payload)  # the payload is live: unpickling does create the file
    assert probe.exists()
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)), protocol=2)
    variants = {
        "raw.pkl": payload,
        "raw_p4.pkl": pickle.dumps(_Payload(str(marker)), protocol=4),
        # a valid-looking header whose only tensor holds the pickle bytes
        "wrapped.safetensors": _raw_file(
            {"__metadata__": {io.ARCH_KEY: "x"}, "0.weight": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}},
            payload,
        ),
        # the payload as the header
        "header.safetensors": len(payload).to_bytes(8, "little") + payload,
    }
    for name, blob in variants.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        with _raises(bad):
            st.load(bad)
        if name == "wrapped.safetensors":  # well-formed: the pickle comes back as inert bytes
            t, _ = io.read_file(bad, require_checksums=False)
            assert t["0.weight"].tobytes() == payload
        else:
            with _raises(bad):
                io.read_file(bad, require_checksums=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------- architecture schema


def _with_arch(path, out, mutate):
    tensors, _ = io.read_file(path)
    arch = json.loads(_arch_meta(path)[io.ARCH_KEY])
    mutate(arch)
    io.write_file(out, tensors, {io.ARCH_KEY: json.dumps(arch) if not isinstance(arch, str) else arch})


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a["layers"][2].__setitem__("type", "Evil"), "unknown layer type"),
        (lambda a: a["layers"][0]["config"].__setitem__("in_channels", 0), "in_channels"),
        (lambda a: a["layers"][0]["config"].__setitem__("kernel_size", 2**40), "kernel_size"),
        (lambda a: a["layers"][0]["config"].__setitem__("stride", "2"), "stride"),
        (lambda a: a["layers"][0]["config"].__setitem__("stride", [1, [2]]), "config"),
        (lambda a: a["layers"][2]["config"].__setitem__("inplace", True), "inplace"),
        (lambda a: a["layers"][5]["config"].__setitem__("p", 1.0), "`p`"),
        (lambda a: a.__setitem__("version", 2), "version"),
        (lambda a: a.__setitem__("layers", []), "layers"),
        (lambda a: a.__setitem__("extra", 1), "architecture must be"),
        (lambda a: a["layers"][1].pop("config"), "'type' and 'config'"),
    ],
)
def test_bad_architecture(saved, tmp_path, mutate, match):
    _, path = saved
    bad = tmp_path / "arch.safetensors"
    _with_arch(path, bad, mutate)
    with _raises(bad, None, match=match):
        st.load(bad)


def test_architecture_changing_shapes_is_caught(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "arch.safetensors"
    _with_arch(path, bad, lambda a: a["layers"][6]["config"].__setitem__("out_features", 4))
    with _raises(bad, "6.weight", match="shape"):
        st.load(bad)


def test_missing_or_bad_architecture_json(saved, tmp_path):
    _, path = saved
    tensors, _ = io.read_file(path)
    bad = tmp_path / "noarch.safetensors"
    io.write_file(bad, tensors, {})
    with _raises(bad, None, match="architecture"):
        st.load(bad)
    io.write_file(bad, tensors, {io.ARCH_KEY: "{not json"})
    with _raises(bad, None, match="not valid JSON"):
        st.load(bad)


# ----------------------------------------------------------------------------- load into a model


def test_load_weights_and_failed_load_leaves_model_unchanged(saved, tmp_path):
    m, path = saved
    other = small_model(seed=3)
    io.load_weights(other, path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    victim = small_model(seed=4)
    before = victim.state_dict()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # corrupts the last tensor only
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with _raises(bad):
        io.load_weights(victim, bad)
    _rewrite(path, bad, lambda t: t.__setitem__("6.bias", np.zeros(4, np.float32)))
    with _raises(bad, "6.bias"):
        io.load_weights(victim, bad)
    for k, v in before.items():
        np.testing.assert_array_equal(victim.state_dict()[k], v)
    with pytest.raises(TypeError, match="`model`"):
        io.load_weights(object(), path)


# ----------------------------------------------------------------------------- torch interop


def _torch_twin(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(18, 3)
    )


def test_torch_loads_our_file_unchanged(saved, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    m, path = saved
    sd = load_file(str(path))
    tm = _torch_twin(torch)
    tm.load_state_dict(sd, strict=True)
    for k, v in m.state_dict().items():
        assert sd[k].numpy().dtype == v.dtype
        np.testing.assert_array_equal(sd[k].numpy(), v)
    tm.eval()
    m.eval()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(m(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_we_load_torch_weights(tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tm = _torch_twin(torch)
    tm.train()
    tm(torch.randn(4, 1, 8, 8))  # move the running statistics
    path = tmp_path / "torch.safetensors"
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(path))
    tensors, _ = io.read_file(path, require_checksums=False)
    m = small_model()
    m.load_state_dict(tensors)
    tm.eval()
    m.eval()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(m(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(blob=hs.binary(max_size=300))
def test_fuzz_arbitrary_bytes(tmp_path, blob):
    bad = tmp_path / "fuzz.safetensors"
    bad.write_bytes(blob)
    with pytest.raises(FormatError):
        st.load(bad)
    with pytest.raises(FormatError):
        io.read_file(bad, require_checksums=False) if len(blob) < 8 else io.read_file(bad)


@_FUZZ
@given(edits=hs.lists(hs.tuples(hs.integers(min_value=0), hs.integers(0, 255)), min_size=1, max_size=4), cut=hs.integers(0, 40))
def test_fuzz_mutated_model_file(saved, tmp_path, edits, cut):
    """Overwritten bytes and/or a truncated tail give a FormatError, or (edits that
    change nothing, or only JSON whitespace) exactly the saved model; never
    another exception and never a different model."""
    m, path = saved
    data = bytearray(path.read_bytes())
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut:
        del data[-cut:]
    bad = tmp_path / "mut.safetensors"
    bad.write_bytes(bytes(data))
    try:
        loaded = st.load(bad)
    except FormatError:
        return
    assert loaded.to_config() == m.to_config()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)


def test_docstring_examples():
    import doctest

    from striate import io as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
