"""Layers: Parameter, the Layer base class and the layers of the public API (docs/api.md).

Each layer runs ``forward`` on NumPy arrays (NCHW, float32; float64 works with
the NumPy backend for gradient checks), keeps only what ``backward`` needs, and
``backward(dy) -> dx`` overwrites ``param.grad``. Convolution, pooling and
Linear call ``striate.functional``, so the backend switch applies to them; the
element-wise layers and BatchNorm2d are plain NumPy.

This is deliberately not an autograd engine: there is no graph, a layer
remembers exactly one forward call, and layers are chained by ``Sequential``
(through ``striate.layers.chain``).
Initialisation follows PyTorch (kaiming-uniform with a=sqrt(5) on the weight,
bias uniform in +-1/sqrt(fan_in)), drawn from ``striate._config.rng()``.

The package holds one module per family: ``base`` (Parameter, Layer, the
registry, the architecture schema), ``conv``, ``pool``, ``normalization``,
``activation``, ``core`` (Linear, Dropout, Flatten, Identity), ``container``
(the base of layers that hold layers, and BatchNorm folding), ``residual``
(Residual) and ``chain`` (walking a list of layers). ``Sequential``, the
other container, lives in ``striate.model``.

Examples
--------
>>> import numpy as np
>>> from striate import layers as L
>>> conv = L.Conv2d(1, 4, 3, padding=1)
>>> conv(np.zeros((2, 1, 8, 8), np.float32)).shape, conv.output_shape((1, 8, 8))
((2, 4, 8, 8), (4, 8, 8))
>>> L.layer_from_config("ReLU", {})
ReLU()
"""

from __future__ import annotations

from .base import (  # noqa: F401  (the private helpers are shared with optim, zoo and model)
    _FLOAT_DTYPES,
    _INT_MAX,
    Layer,
    Parameter,
    _as,
    _bool,
    _check_input,
    _float,
    _int,
    _ops,
    _pair,
    _pair_out,
    layer_from_config,
    layer_types,
    spec_state,
)
from .conv import Conv2d
from .pool import _Pool, AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, LPPool2d, MaxPool2d
from .normalization import BatchNorm2d
from .activation import _Elementwise, _SavesInput, GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .core import Dropout, Flatten, Identity, Linear
from .container import _Container, child_spec, fuse_conv_bn, nodes
from .residual import Residual

__all__ = [
    "Parameter",
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "LPPool2d",
    "AdaptiveAvgPool2d",
    "GlobalAvgPool2d",
    "BatchNorm2d",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "Dropout",
    "Flatten",
    "Linear",
    "Identity",
    "Residual",
    "layer_from_config",
    "layer_types",
]
