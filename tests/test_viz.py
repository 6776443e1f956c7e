"""Tests of striate.viz: each picture is a real, non-blank PNG; the LR sweep's numbers."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from toy_data import blobs

import striate as st
from striate import layers as L
from striate import viz


@pytest.fixture(autouse=True)
def _one_thread():
    """One kernel thread: the tiny models here are dominated by thread wake-ups on a busy machine
    (conftest restores the thread count)."""
    st.set_num_threads(1)


def read_png(path):
    """Decode with matplotlib after checking the signature and the IHDR size by hand."""
    image = pytest.importorskip("matplotlib.image")
    with open(path, "rb") as f:
        raw = f.read(24)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].var()) > 0, "the image is blank"
    return pixels


def small_cnn(seed=0):
    st.seed(seed)
    return st.Sequential(
        [
            L.Conv2d(1, 4, 3),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(4, 6, 3, padding=1),
            L.BatchNorm2d(6),
            L.ReLU(),
            L.Dropout(0.5),
            L.Flatten(),
            L.Linear(6 * 4 * 4, 3),
        ]
    )


# ----------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("index, size", [(0, (300, 400)), (3, (380, 400))])
def test_filters_png(tmp_path, index, size):
    pytest.importorskip("matplotlib")
    m = small_cnn()
    path = viz.filters(m[index], tmp_path / "f.png")
    assert path == str(tmp_path / "f.png")
    pixels = read_png(path)
    assert pixels.shape[1] == size[1] and pixels.shape[0] >= 200


def test_filters_rgb_and_caps(tmp_path):
    pytest.importorskip("matplotlib")
    conv = L.Conv2d(3, 40, 5)
    read_png(viz.filters(conv, tmp_path / "rgb.png", max_filters=9))
    read_png(viz.filters(L.Conv2d(20, 8, 3), tmp_path / "many.png", max_inputs=4))


def test_activation_maps_png_and_model_untouched(tmp_path):
    pytest.importorskip("matplotlib")
    m = small_cnn()
    m.train()
    before = m.state_dict()
    x, _ = blobs(2)
    pixels = read_png(viz.activation_maps(m, x[0], tmp_path / "a.png"))
    assert pixels.shape[0] == int(100 * (1.25 * 3 + 0.4))  # input row + two conv rows
    assert m.training and all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
    read_png(viz.activation_maps(m, x[:1], tmp_path / "b.png", max_maps=2))


def test_plot_history_png(tmp_path):
    pytest.importorskip("matplotlib")
    hist = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "accuracy": [0.3, 0.6, 0.8]}
    pixels = read_png(viz.plot_history(hist, tmp_path / "h.png"))
    assert pixels.shape[:2] == (350, 900)
    only_loss = read_png(viz.plot_history({"loss": [2.0, 1.0]}, tmp_path / "l.png"))
    assert only_loss.shape[:2] == (350, 450)


def test_plot_history_from_fit(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = blobs()
    h = small_cnn().fit(x, y, epochs=2, batch_size=32, validation_data=(x[:32], y[:32]), verbose=0)
    read_png(viz.plot_history(h, tmp_path / "fit.png"))


def test_bad_arguments(tmp_path):
    pytest.importorskip("matplotlib")
    m = small_cnn()
    with pytest.raises(TypeError, match="`layer`"):
        viz.filters(m[1], tmp_path / "x.png")
    with pytest.raises(TypeError, match="`path`"):
        viz.filters(m[0], 3)
    with pytest.raises(ValueError, match="`max_filters`"):
        viz.filters(m[0], tmp_path / "x.png", max_filters=0)
    with pytest.raises(ValueError, match="no Conv2d"):
        viz.activation_maps(st.Sequential([L.Flatten(), L.Linear(100, 2)]), np.zeros((1, 10, 10), np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="one image"):
        viz.activation_maps(m, np.zeros((2, 1, 10, 10), np.float32), tmp_path / "x.png")
    with pytest.raises(TypeError, match="`x`"):
        viz.activation_maps(m, np.zeros((1, 10, 10), np.int64), tmp_path / "x.png")
    with pytest.raises(ValueError, match="'loss'"):
        viz.plot_history({"accuracy": [0.5]}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="`history`"):
        viz.plot_history([1.0, 2.0], tmp_path / "x.png")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    m = small_cnn()
    x, y = blobs(8)
    calls = [
        lambda: viz.filters(m[0], tmp_path / "f.png"),
        lambda: viz.activation_maps(m, x[0], tmp_path / "a.png"),
        lambda: viz.plot_history({"loss": [1.0]}, tmp_path / "h.png"),
        lambda: viz.lr_sweep(m, x, y, tmp_path / "s.png", steps=5),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=r"pip install 'striate\[viz\]'"):
            call()
    # without a path the sweep only computes
    assert viz.lr_sweep(m, x, y, steps=5, batch_size=4)["path"] is None
    assert not (tmp_path / "f.png").exists()


# ----------------------------------------------------------------------------- LR sweep


def test_lr_sweep_grid_divergence_and_suggestion(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = blobs()
    m = small_cnn()
    before = m.state_dict()
    st.seed(3)
    draw = st._config.rng().random()
    st.seed(3)
    r = viz.lr_sweep(m, x, y, tmp_path / "s.png", lr_min=1e-4, lr_max=100.0, steps=60, batch_size=16)
    assert st._config.rng().random() == draw  # the global RNG was not used
    assert all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
    lrs = np.array(r["lrs"])
    assert lrs[0] == pytest.approx(1e-4)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, (100.0 / 1e-4) ** (1 / 59))
    assert r["diverged"] and len(lrs) < 60  # lr 100 blows SGD up long before the end
    assert len(r["losses"]) == len(r["raw_losses"]) == len(lrs)
    assert lrs[0] <= r["suggested_lr"] <= lrs[-1]
    assert r["lr_min_loss"] == lrs[int(np.argmin(r["losses"]))]
    if r["method"] == "steepest":
        assert r["suggested_lr"] == r["lr_steepest"] <= r["lr_min_loss"]
    read_png(r["path"])


def test_lr_sweep_is_reproducible_and_takes_a_factory():
    x, y = blobs()
    a = viz.lr_sweep(lambda: small_cnn(1), x, y, steps=12, batch_size=16)
    b = viz.lr_sweep(lambda: small_cnn(1), x, y, steps=12, batch_size=16)
    assert a["raw_losses"] == b["raw_losses"] and not a["diverged"] and len(a["lrs"]) == 12


def test_smoothing_and_suggestion_rules():
    # bias-corrected EMA: the first smoothed value is the first loss
    x, y = blobs(32)
    r = viz.lr_sweep(small_cnn(), x, y, steps=3, batch_size=32, beta=0.9)
    assert r["losses"][0] == pytest.approx(r["raw_losses"][0])
    lrs = np.logspace(-4, 0, 20)
    falling = np.concatenate([np.full(5, 2.0), np.linspace(2.0, 0.5, 10), np.linspace(0.6, 3, 5)])
    lr, method, steepest, at_min = viz._suggest(lrs, falling)
    assert method == "steepest" and lrs[5] <= lr < at_min and at_min == lrs[14]
    # minimum in the first steps: the lr of the minimum / 10
    lr, method, steepest, at_min = viz._suggest(lrs, np.linspace(1.0, 3.0, 20))
    assert method == "min/10" and steepest is None and lr == pytest.approx(lrs[0] / 10)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"lr_min": 0.0}, ValueError, "`lr_min`"),
        ({"lr_min": 1.0, "lr_max": 0.1}, ValueError, "below `lr_max`"),
        ({"steps": 1}, ValueError, "`steps`"),
        ({"beta": 1.0}, ValueError, "`beta`"),
        ({"diverge": 1.0}, ValueError, "`diverge`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
    ],
)
def test_lr_sweep_bad_arguments(kwargs, exc, match):
    x, y = blobs(8)
    with pytest.raises(exc, match=match):
        viz.lr_sweep(small_cnn(), x, y, **kwargs)


def test_lr_sweep_bad_model_and_data():
    x, y = blobs(8)
    with pytest.raises(TypeError, match="`model_factory_or_model`"):
        viz.lr_sweep(3, x, y)
    with pytest.raises(TypeError, match="factory"):
        viz.lr_sweep(lambda: None, x, y)
    with pytest.raises(TypeError, match="`x`"):
        viz.lr_sweep(small_cnn(), x.astype(np.float64), y)
    with pytest.raises(ValueError, match="`y`"):
        viz.lr_sweep(small_cnn(), x, y[:3])
