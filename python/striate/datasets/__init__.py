"""Data sets: loaders returning ``(x_train, y_train), (x_test, y_test)``.

Images are float32 in ``(N, C, H, W)`` scaled to [0, 1]; labels are int64.
This package is a plain list of imports, one module per data set.
"""

from .digits import load_digits

__all__ = ["load_digits"]
