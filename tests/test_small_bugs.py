"""Regressions of issue 17's smaller bugs, each the test that would have caught it.

MaxPool2d construction and forward agree (torch's padding rule); AdaptiveAvgPool2d takes None
entries as the functional form and torch do; the filter figure's title fits; ``model(tensor)``
accepts what ``predict`` accepts. Not here: the CLI and training-loop bugs (other files).
"""

from __future__ import annotations

import numpy as np
import pytest

import striate as st
from striate import functional as F
from striate import layers as L
from striate import viz


@pytest.mark.parametrize("k, s, p, d", [(3, 1, 2, 2), (3, 1, 1, 2), (2, 1, 1, 3), (3, 1, 2, 1), (4, 2, 2, 2),
                                        (5, 1, 2, 3), (5, 1, 3, 2), (1, 1, 0, 4)])
def test_max_pool_builds_exactly_when_it_runs_as_torch(k, s, p, d):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 2, 12, 12)).astype(np.float32)
    try:
        want = torch.nn.MaxPool2d(k, s, p, dilation=d)(torch.from_numpy(x)).numpy()
    except RuntimeError:
        want = None
    if want is None:
        with pytest.raises(ValueError, match="`padding` must be at most half of `kernel_size`"):
            L.MaxPool2d(k, s, p, dilation=d)
    else:
        layer = L.MaxPool2d(k, s, p, dilation=d)
        np.testing.assert_array_equal(layer(x), want)
        assert layer.output_shape((2, 12, 12)) == want.shape[1:]


@pytest.mark.parametrize("size", [(None, 3), (4, None), (None, None), [None, 5]])
def test_adaptive_avg_pool_takes_none_as_torch(tmp_path, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 10)).astype(np.float32)
    layer = L.AdaptiveAvgPool2d(size)
    y = layer(x)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), tuple(size)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y, F.adaptive_avg_pool2d(x, size))
    assert layer.output_shape((3, 6, 10)) == y.shape[1:]
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    again = L.layer_from_config("AdaptiveAvgPool2d", layer.config())
    np.testing.assert_array_equal(again(x), y)
    st.seed(0)
    m = st.Sequential([L.Conv2d(3, 2, 1), layer, L.Flatten()])
    m.save(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(st.load(tmp_path / "m.safetensors")(x), m(x))
    with pytest.raises((TypeError, ValueError), match="output_size"):
        L.AdaptiveAvgPool2d((None, 0))


@pytest.mark.parametrize("layer", [L.Conv2d(6, 16, 5, padding=2, dilation=1, bias=False), L.Conv2d(1, 6, 5),
                                   L.Conv2d(3, 4, 3, stride=2, padding=1)])
def test_filter_figure_title_fits_the_figure(tmp_path, monkeypatch, layer):
    pytest.importorskip("matplotlib")
    figs = []
    real_save = viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: (figs.append(fig), real_save(fig, path))[1])
    viz.filters(layer, tmp_path / "f.png")
    fig = figs[0]
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    box = fig.bbox
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and box.y0 <= title.y0 and title.y1 <= box.y1
    image = fig.axes[0].get_window_extent(renderer)
    assert image.y1 <= title.y0 + 1  # the title does not cover the filters


def test_model_call_accepts_a_torch_tensor_as_predict_does():
    torch = pytest.importorskip("torch")
    st.seed(0)
    m = st.Sequential([L.Flatten(), L.Linear(6, 3)])
    x = np.random.default_rng(2).standard_normal((4, 1, 2, 3)).astype(np.float32)
    want = m(x)
    np.testing.assert_array_equal(m(torch.from_numpy(x)), want)
    np.testing.assert_array_equal(m(torch.from_numpy(x).requires_grad_()), want)
    np.testing.assert_array_equal(m(x.tolist()), m(np.asarray(x.tolist())))
    np.testing.assert_allclose(m.predict(torch.from_numpy(x)), m.predict(x))
    with pytest.raises(TypeError, match="`x`"):
        m(object())
