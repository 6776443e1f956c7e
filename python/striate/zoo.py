"""Model zoo: the LeNet-5 and "typical CNN" stacks as ``Sequential`` models.

Each builder returns a freshly initialised model (PyTorch default init from
striate's global RNG, so ``st.seed`` makes it reproducible), or, for
``lenet5(pretrained=True)``, the weights shipped in ``striate/data`` (trained on
the embedded digits by ``tools/make_pretrained.py``). Not here: any
architecture beyond these two.
"""

from __future__ import annotations

from . import layers as L
from .layers import _bool, _int
from .model import Sequential
from .transfer import load_pretrained

__all__ = ["lenet5", "typical_cnn"]


def lenet5(num_classes: int = 10, pretrained: bool = False, input_size: int = 32) -> Sequential:
    """LeNet-5 for 1-channel images: conv5-relu-pool, conv5-relu-pool, 120-84-num_classes.

    Parameters
    ----------
    num_classes : int, default 10
    pretrained : bool, default False
        Load the weights trained on the embedded digits (99.7% test accuracy).
        They need ``num_classes=10`` and ``input_size=32``; for other classes
        load them, then ``replace_head(k)``. A mismatch raises
        ``striate.io.FormatError``.
    input_size : {32, 28}
        32 for 32x32 inputs; 28 pads the first convolution by 2 (MNIST size).

    Examples
    --------
    >>> m = lenet5()
    >>> sum(p.size for p in m.parameters())
    61706
    """
    num_classes = _int(num_classes, "num_classes")
    pretrained = _bool(pretrained, "pretrained")
    if input_size not in (28, 32) or isinstance(input_size, bool):
        raise ValueError(f"`input_size` must be 28 or 32, got {input_size!r}")
    model = Sequential(
        [
            L.Conv2d(1, 6, 5, padding=2 if input_size == 28 else 0),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(6, 16, 5),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Flatten(),
            L.Linear(400, 120),
            L.ReLU(),
            L.Linear(120, 84),
            L.ReLU(),
            L.Linear(84, num_classes),
        ]
    )
    if pretrained:
        load_pretrained(model, "lenet5_digits")
    return model


def typical_cnn(in_channels: int = 3, num_classes: int = 10) -> Sequential:
    """A small VGG-like CNN for 32x32 inputs.

    conv3x3(in->32)-relu, conv3x3(32->32)-relu, maxpool2, conv3x3(32->64)-relu,
    maxpool2, dropout(0.25), flatten, linear(4096->128)-relu, linear(128->num_classes).
    """
    in_channels = _int(in_channels, "in_channels")
    num_classes = _int(num_classes, "num_classes")
    return Sequential(
        [
            L.Conv2d(in_channels, 32, 3, padding=1),
            L.ReLU(),
            L.Conv2d(32, 32, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(32, 64, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dropout(0.25),
            L.Flatten(),
            L.Linear(64 * 8 * 8, 128),
            L.ReLU(),
            L.Linear(128, num_classes),
        ]
    )
