"""Fuzzing of the newer loaders with hypothesis (RELIABILITY Tools, item 22's readers).

Targets: ``ImageFolder`` decoding (a folder holding a damaged image next to a
valid one), a ``DataLoader``'s state (given to ``load_state_dict`` and inside a
checkpoint that ``fit(resume_from=...)`` reads), the architecture JSON of a
nested model (``Sequential`` in ``Sequential``, ``Residual``), and plain
safetensors files (``io.read_file(require_checksums=False)``). Only the
documented errors may come out: ValueError or TypeError (``FormatError`` for
the files); a crash or a hang is a bug.

Budget: ``STRIATE_FUZZ_EXAMPLES`` examples per target (default 200, for CI),
as in test_fuzz.py, whose mutation strategy is shared.

Not here: the first loaders' targets (IDX, CIFAR, striate files, ONNX: test_fuzz.py).
"""

from __future__ import annotations

import io as pyio
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs

import striate as st
from striate import io, layers as L
from striate.datasets import ArrayDataset, DataLoader
from striate.model import Sequential
from striate.training import fit

from test_fuzz import FUZZ, _INTERESTING, mutated


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield d


# ----------------------------------------------------------------------------- ImageFolder


def _png():
    from PIL import Image

    buf = pyio.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="PNG")
    return buf.getvalue()


try:
    PNG = _png()
except ImportError:  # pragma: no cover - Pillow is a test dependency
    PNG = None


@pytest.mark.skipif(PNG is None, reason="needs Pillow")
@FUZZ
@given(data=hs.one_of(hs.binary(max_size=256), mutated(PNG or b"", max_ops=3)))
def test_fuzz_image_folder(data, scratch):
    from striate.datasets import ImageFolder

    root = os.path.join(scratch, "folder")
    for cls, blob in (("a", data), ("b", PNG)):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        with open(os.path.join(root, cls, "x.png"), "wb") as f:
            f.write(blob)
    ds = ImageFolder(root, image_size=4)
    assert ds.classes == ["a", "b"]
    try:
        x, y = ds[0]
    except ValueError as e:
        assert "x.png" in str(e)
    else:
        assert x.shape == (3, 4, 4) and x.dtype == np.float32 and np.isfinite(x).all() and int(y) == 0
    x, _ = ds[1]
    assert x.shape == (3, 4, 4)


# ----------------------------------------------------------------------------- DataLoader state

_DS = ArrayDataset(np.zeros((10, 1, 4, 4), np.float32), np.arange(10) % 3)
_json_values = hs.recursive(
    hs.one_of(hs.none(), hs.booleans(), hs.sampled_from(_INTERESTING), hs.integers(-2**70, 2**70),
              hs.floats(allow_nan=True), hs.text(max_size=8)),
    lambda kids: hs.lists(kids, max_size=3) | hs.dictionaries(hs.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


@hs.composite
def loader_states(draw):
    state = DataLoader(_DS, batch_size=4, seed=1).state_dict()
    for _ in range(draw(hs.integers(1, 3))):
        key = draw(hs.sampled_from(sorted(state) + ["extra"]))
        if draw(hs.booleans()) and key in state:
            del state[key]
        else:
            state[key] = draw(_json_values)
    return state


@FUZZ
@given(state=hs.one_of(loader_states(), _json_values))
def test_fuzz_loader_state(state):
    dl = DataLoader(_DS, batch_size=4, seed=1)
    try:
        dl.load_state_dict(state)
    except (ValueError, TypeError):
        return
    got = [yb for _, yb in dl]  # a state that loads gives batches of the data set
    assert all(len(yb) <= 4 for yb in got)


def _model():
    st.seed(0)
    return Sequential([L.Flatten(), L.Linear(16, 3)])


def _checkpoint():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ck.safetensors")
        fit(_model(), DataLoader(_DS, batch_size=4, seed=1), epochs=1, checkpoint=path, verbose=0)
        with open(path, "rb") as f:
            return f.read()


CHECKPOINT = _checkpoint()


@FUZZ
@given(data=mutated(CHECKPOINT, max_ops=3))
def test_fuzz_checkpoint_with_loader_state(data, scratch):
    path = os.path.join(scratch, "ck.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    try:
        fit(_model(), DataLoader(_DS, batch_size=4, seed=1), epochs=2, resume_from=path, verbose=0)
    except ValueError:
        pass


# ----------------------------------------------------------------------------- nested architecture JSON


def _nested_arch():
    st.seed(0)
    inner = Sequential([L.Conv2d(2, 2, 3, padding=1), L.BatchNorm2d(2), L.ReLU()])
    m = Sequential([L.Conv2d(1, 2, 3, padding=1), L.Residual(inner), Sequential([L.ReLU(), L.Flatten()]),
                    L.Linear(32, 3)])
    return m.to_config()


ARCH = _nested_arch()


@hs.composite
def edited_arch(draw):
    """The nested architecture with 1-3 values somewhere in its tree replaced, removed or added."""
    cfg = json.loads(json.dumps(ARCH))
    for _ in range(draw(hs.integers(1, 3))):
        node, path = cfg, []
        while isinstance(node, (dict, list)) and node and draw(hs.integers(0, 3)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            k = draw(hs.sampled_from(keys))
            path.append((node, k))
            node = node[k]
        if not path:
            continue
        parent, k = path[-1]
        op = draw(hs.sampled_from(["set", "del", "dup"]))
        if op == "set":
            parent[k] = draw(_json_values)
        elif op == "del":
            del parent[k]
        elif isinstance(parent, list):
            parent.insert(k, json.loads(json.dumps(parent[k])))
        else:
            parent[draw(hs.text(max_size=6))] = json.loads(json.dumps(parent[k]))
    return json.dumps(cfg)


@FUZZ
@given(text=hs.one_of(edited_arch(), mutated(json.dumps(ARCH).encode(), max_ops=3).map(
    lambda b: b.decode("utf-8", "replace"))))
def test_fuzz_nested_architecture_json(text):
    try:
        cfg, expected = io.parse_architecture(text, "arch.json")
    except io.FormatError as e:
        assert e.path == "arch.json"
        return
    assert isinstance(cfg, dict) and isinstance(expected, dict)
    model = Sequential.from_config(cfg)  # an accepted architecture builds, with the state it promised
    assert {k: (v.shape, v.dtype) for k, v in model.state_dict().items()} == {
        k: (tuple(s), np.dtype(d)) for k, (s, d) in expected.items()}


# ----------------------------------------------------------------------------- plain safetensors


def _plain():
    from safetensors.numpy import save

    return save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)},
                metadata={"k": "v"})


PLAIN = _plain()


@FUZZ
@given(data=hs.one_of(hs.binary(max_size=256), mutated(PLAIN, max_ops=3)))
def test_fuzz_plain_safetensors(data, scratch):
    path = os.path.join(scratch, "plain.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    try:
        tensors, metadata = io.read_file(path, require_checksums=False)
    except io.FormatError as e:
        assert e.path == path
        return
    assert all(isinstance(v, np.ndarray) for v in tensors.values())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
