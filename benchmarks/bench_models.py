"""Model builders the benchmarks share, defined once.

``tf_cnn`` is the TensorFlow-tutorial CNN for 1x28x28 inputs (conv5 1->32
pad 2, ReLU, max-pool 2, conv5 32->64 pad 2, ReLU, max-pool 2, flatten, fc
3136->1024, ReLU, dropout 0.4, fc 10). ``bench_fashion.py`` trains it on
Fashion-MNIST; ``bench_train.py`` times its inference against onnxruntime.

Not here: data, torch twins (``bench_train._torch_model``) or timing.
"""

from __future__ import annotations

import striate as st
from striate import layers as L


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
