"""``io.load_weights`` on plain safetensors files (no striate metadata), as torch and numpy write them.

Checks names, dtypes, shapes and finiteness all or nothing, and that striate's
own files still need their checksums. Not here: striate's own format (test_io.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file as np_save_file

import striate as st
from striate import io
from striate import layers as L
from striate.io import FormatError


def _model(seed=0):
    st.seed(seed)
    return st.Sequential([L.Conv2d(1, 4, 3), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                          L.Linear(4 * 3 * 3, 5)])


def _torch_net(torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 5))
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            net(torch.randn(8, 1, 8, 8) * 2 + 0.5)
    return net.eval()


def _state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_torch_written_file_loads_and_predicts_as_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    net = _torch_net(torch)
    path = tmp_path / "torch.safetensors"
    save_file(net.state_dict(), str(path))
    m = io.load_weights(_model(seed=5), path)
    m.eval()
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m(x), logits, rtol=1e-5, atol=1e-5)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(m.predict(x), probs, rtol=1e-5, atol=1e-5)


def test_numpy_written_file_loads(tmp_path):
    src = _model(seed=1)
    path = tmp_path / "np.safetensors"
    np_save_file(_state(src), str(path))
    m = io.load_weights(_model(seed=2), path)
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


def _bad_files():
    good = _state(_model(seed=1))
    missing = dict(good)
    del missing["5.bias"]
    extra = dict(good, **{"6.weight": np.zeros(3, np.float32)})
    shape = dict(good, **{"5.bias": np.zeros(4, np.float32)})
    nan = dict(good)
    nan["0.weight"] = good["0.weight"].copy()
    nan["0.weight"].flat[3] = np.nan
    inf = dict(good)
    inf["5.weight"] = good["5.weight"].copy()
    inf["5.weight"].flat[0] = -np.inf
    f64 = dict(good, **{"0.weight": good["0.weight"].astype(np.float64)})
    f16 = dict(good, **{"5.bias": good["5.bias"].astype(np.float16)})
    return [
        ("missing", missing, "5.bias", "missing tensor"),
        ("extra", extra, "6.weight", "unexpected tensor"),
        ("shape", shape, "5.bias", "shape"),
        ("nan", nan, "0.weight", "non-finite"),
        ("inf", inf, "5.weight", "non-finite"),
        ("float64", f64, "0.weight", "float64.*expected float32"),
        ("float16", f16, "5.bias", "float16.*expected float32"),
    ]


@pytest.mark.parametrize("label, tensors, name, match", _bad_files(), ids=[b[0] for b in _bad_files()])
def test_bad_plain_files_are_refused_and_the_model_is_unchanged(tmp_path, label, tensors, name, match):
    path = tmp_path / f"{label}.safetensors"
    np_save_file(tensors, str(path))
    victim = _model(seed=7)
    before = _state(victim)
    with pytest.raises(FormatError, match=match) as info:
        io.load_weights(victim, path)
    assert name in str(info.value) and str(path) in str(info.value)
    for k, v in before.items():
        np.testing.assert_array_equal(victim.state_dict()[k], v)


def test_striate_metadata_without_checksums_is_still_refused(tmp_path):
    """A file that claims to be striate's (a "striate." metadata key) must carry valid checksums."""
    path = tmp_path / "half.safetensors"
    np_save_file(_state(_model(seed=1)), str(path), metadata={"striate.version": "0.2.0"})
    victim = _model(seed=7)
    before = _state(victim)
    with pytest.raises(FormatError, match="striate.checksums"):
        io.load_weights(victim, path)
    for k, v in before.items():
        np.testing.assert_array_equal(victim.state_dict()[k], v)


def test_other_metadata_is_plain(tmp_path):
    """torch's own metadata ({"format": "pt"}) does not make a file striate's."""
    path = tmp_path / "pt.safetensors"
    src = _model(seed=1)
    np_save_file(_state(src), str(path), metadata={"format": "pt"})
    m = io.load_weights(_model(seed=2), path)
    np.testing.assert_array_equal(m.state_dict()["5.weight"], src.state_dict()["5.weight"])


def test_read_file_still_requires_checksums_by_default(tmp_path):
    path = tmp_path / "plain.safetensors"
    np_save_file(_state(_model(seed=1)), str(path))
    with pytest.raises(FormatError, match="striate.checksums"):
        io.read_file(path)
    tensors, meta = io.read_file(path, require_checksums="auto")
    assert "5.bias" in tensors and meta == {}
