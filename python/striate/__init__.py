"""striate: convolutional networks on multicore CPUs.

C++/OpenMP kernels for convolution and pooling (``striate.functional``), a
pure-NumPy oracle with the same signatures (``striate.reference``), and a thin
NumPy layer of layers, losses, optimizers and a Keras-like ``fit``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import get_backend, get_num_threads, seed, set_backend, set_num_threads

__all__ = [
    "__version__",
    "get_backend",
    "get_num_threads",
    "seed",
    "set_backend",
    "set_num_threads",
]
