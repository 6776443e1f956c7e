"""striate: convolutional networks on multicore CPUs.

C++/OpenMP kernels for convolution and pooling (``striate.functional``), a
pure-NumPy oracle with the same signatures (``striate.reference``), and a thin
NumPy layer of layers, losses, optimizers and a Keras-like ``fit``.
"""

from __future__ import annotations

from ._version import __version__  # the one version source: pyproject.toml reads it

from ._config import get_backend, get_isa, get_num_threads, seed, set_backend, set_isa, set_num_threads
from . import io, layers, losses, optim, zoo  # noqa: E402
from .layers import Parameter  # noqa: E402
from .model import Sequential  # noqa: E402
from .model import load_model as load  # noqa: E402
from . import functional, reference  # noqa: E402  (after _config: functional reads the backend)
from . import augment, datasets, distributed, introspect, onnx_io, training, transfer, viz  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402  (viz imports matplotlib only when drawing)
from . import metrics  # noqa: E402

__all__ = [
    "__version__",
    "augment",
    "datasets",
    "distributed",
    "functional",
    "gradcheck",
    "introspect",
    "metrics",
    "onnx_io",
    "transfer",
    "training",
    "viz",
    "reference",
    "get_backend",
    "get_isa",
    "get_num_threads",
    "seed",
    "set_backend",
    "set_isa",
    "set_num_threads",
    "Parameter",
    "Sequential",
    "io",
    "layers",
    "load",
    "losses",
    "optim",
    "zoo",
]
