"""Model builders the benchmarks share, defined once.

``tf_cnn`` is the TensorFlow-tutorial CNN for 1x28x28 inputs (conv5 1->32
pad 2, ReLU, max-pool 2, conv5 32->64 pad 2, ReLU, max-pool 2, flatten, fc
3136->1024, ReLU, dropout 0.4, fc 10). ``bench_fashion.py`` trains it on
Fashion-MNIST; ``bench_train.py`` times its inference against onnxruntime.

``torch_twin`` builds the equivalent ``torch.nn`` module of a striate layer
tree (nested ``Sequential`` and ``Residual`` included, so the state names are
the same) and loads striate's weights into it strictly; ``bench_train.py``
and ``bench_fashion.py`` time and validate against it.

Not here: data, validation or timing. The tests build their torch models
independently of this file, so that the benchmarks' twin is not what checks
striate's names.
"""

from __future__ import annotations

import striate as st
from striate import layers as L


def _torch_residual_class(torch):
    """The torch ``Residual`` of the API contract: ``body(x) + (x if shortcut is None else shortcut(x))``."""

    class Residual(torch.nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body = body
            self.shortcut = shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    return Residual


def _torch_module(torch, layer, residual_cls):
    """The untrained torch counterpart of one striate layer or container (recursive)."""
    nn = torch.nn
    if isinstance(layer, st.Sequential):
        return nn.Sequential(*[_torch_module(torch, c, residual_cls) for c in layer])
    if isinstance(layer, L.Residual):
        short = None if layer.shortcut is None else _torch_module(torch, layer.shortcut, residual_cls)
        return residual_cls(_torch_module(torch, layer.body, residual_cls), short)
    name = type(layer).__name__
    cfg = layer.config()
    if name == "Conv2d":
        return nn.Conv2d(cfg["in_channels"], cfg["out_channels"], cfg["kernel_size"], stride=cfg["stride"],
                         padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"])
    if name == "BatchNorm2d":
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    if name == "MaxPool2d":
        return nn.MaxPool2d(cfg["kernel_size"], stride=cfg["stride"], padding=cfg["padding"],
                            ceil_mode=cfg["ceil_mode"])
    if name == "AdaptiveAvgPool2d":
        return nn.AdaptiveAvgPool2d(cfg["output_size"])
    if name == "Dropout":
        return nn.Dropout(cfg["p"])
    if name == "Linear":
        return nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg["bias"])
    simple = {"ReLU": nn.ReLU, "Flatten": nn.Flatten, "Identity": nn.Identity}
    if name not in simple:
        raise ValueError(f"`model` holds a {name}, which has no torch counterpart here")
    return simple[name]()


def torch_twin(torch, model):
    """The same architecture in ``torch.nn``, loaded strictly with ``model``'s weights.

    Parameters
    ----------
    torch : module
        The imported ``torch`` package (passed in, so importing this file never imports torch).
    model : striate.Sequential
        Any tree of ``Sequential``, ``Residual`` and the layers listed in ``_torch_module``.

    Returns
    -------
    torch.nn.Sequential
        Its state names equal ``model.state_dict()``'s; ``load_state_dict`` is strict.
    """
    tm = _torch_module(torch, model, _torch_residual_class(torch))
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}, strict=True)
    return tm


def tf_cnn():
    """The TensorFlow-tutorial CNN for 1x28x28 inputs, freshly initialised from striate's RNG."""
    return st.Sequential(
        [
            L.Conv2d(1, 32, 5, padding=2),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(32, 64, 5, padding=2),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Flatten(),
            L.Linear(64 * 7 * 7, 1024),
            L.ReLU(),
            L.Dropout(0.4),
            L.Linear(1024, 10),
        ]
    )
