"""Data sets: loaders returning ``(x_train, y_train), (x_test, y_test)``.

Images are float32 in ``(N, C, H, W)`` scaled to [0, 1]; labels are int64.
The embedded handwritten digits need nothing; MNIST and CIFAR-10 loaders
validate every file and refuse hostile ones; ``make_shapes`` draws a
procedural data set. This package is a plain list of imports, one module per
data set. Not here: data pipelines, shuffling or batching (see ``fit``).
"""

from __future__ import annotations

from ._download import DownloadError
from .cifar import load_cifar10
from .digits import load_digits
from .mnist import load_mnist
from .shapes import SHAPE_CLASSES, make_shapes

__all__ = ["DownloadError", "SHAPE_CLASSES", "load_cifar10", "load_digits", "load_mnist", "make_shapes"]
