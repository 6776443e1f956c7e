"""Datasets: MNIST and CIFAR-10 loaders that refuse hostile files, and procedural shapes.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with float32
images in [0, 1] of shape (N, C, H, W) and int64 labels.

Not here: data pipelines, shuffling or batching (see ``Sequential.fit``).
"""

from __future__ import annotations

from ._download import DownloadError
from .cifar import load_cifar10
from .mnist import load_mnist
from .shapes import SHAPE_CLASSES, make_shapes

__all__ = ["DownloadError", "SHAPE_CLASSES", "load_cifar10", "load_mnist", "make_shapes"]
