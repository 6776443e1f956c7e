"""Data sets: loaders returning ``(x_train, y_train), (x_test, y_test)``, and batching.

Images are float32 in ``(N, C, H, W)`` scaled to [0, 1]; labels are int64.
The embedded handwritten digits need nothing; MNIST, Fashion-MNIST and
CIFAR-10 loaders validate every file and refuse hostile ones; ``make_shapes``
draws a procedural data set; ``ImageFolder`` reads a user's own images.
``ArrayDataset`` and ``DataLoader`` batch any of them (memmaps included) with
seeded shuffling and a background thread. This package is a plain list of
imports, one module per data set. Not here: the training loop (``fit``).
"""

from __future__ import annotations

from ._download import DownloadError
from .cifar import load_cifar10
from .digits import load_digits
from .fashion import FASHION_MNIST_CLASSES, load_fashion_mnist
from .folder import ImageFolder
from .loader import ArrayDataset, DataLoader
from .mnist import load_mnist
from .shapes import SHAPE_CLASSES, make_shapes

__all__ = [
    "ArrayDataset",
    "DataLoader",
    "DownloadError",
    "FASHION_MNIST_CLASSES",
    "ImageFolder",
    "SHAPE_CLASSES",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "make_shapes",
]
