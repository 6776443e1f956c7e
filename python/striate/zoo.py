"""Model zoo: LeNet-5, the "typical CNN" and the CIFAR ResNets as ``Sequential`` models.

Each builder returns a freshly initialised model (PyTorch default init from
striate's global RNG, so ``st.seed`` makes it reproducible), or, for
``lenet5(pretrained=True)``, the weights shipped in ``striate/data`` (trained on
the embedded digits by ``tools/make_pretrained.py``). ``MODELS`` maps each zoo
name (as the command line spells it) to its builder. Not here: ImageNet-size
architectures, or pretrained weights other than LeNet-5's.
"""

from __future__ import annotations

from . import layers as L
from .layers import _bool, _int
from .model import Sequential
from .transfer import load_pretrained

__all__ = ["lenet5", "typical_cnn", "resnet", "resnet20", "MODELS"]


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


def _basic_block(c_in, c, stride):
    """He et al.'s basic block as two entries: ``Residual(body, shortcut)`` and the ReLU after the sum."""
    body = Sequential(
        [
            L.Conv2d(c_in, c, 3, stride, 1, bias=False),
            L.BatchNorm2d(c),
            L.ReLU(),
            L.Conv2d(c, c, 3, 1, 1, bias=False),
            L.BatchNorm2d(c),
        ]
    )
    shortcut = None
    if stride != 1 or c_in != c:
        shortcut = Sequential([L.Conv2d(c_in, c, 1, stride, bias=False), L.BatchNorm2d(c)])
    return [L.Residual(body, shortcut), L.ReLU()]


def resnet(depth, num_classes=10, in_channels=3):
    """He et al. (2016)'s CIFAR ResNet of ``depth`` = 6n + 2 layers, with 1x1 projection shortcuts.

    ``Conv2d(in_channels, 16, 3, padding=1, bias=False)``, ``BatchNorm2d(16)``,
    ``ReLU()``; then three stages of widths 16, 32 and 64 with n basic blocks
    each (the first block of the second and third stage has stride 2); then
    ``AdaptiveAvgPool2d(1)``, ``Flatten()`` and ``Linear(64, num_classes)``.
    Each block is two entries of the top-level model: ``Residual(body,
    shortcut)`` and ``ReLU()``. The body is conv3x3-BN-ReLU-conv3x3-BN; the
    shortcut is None when the shape is kept, else ``Sequential([Conv2d(c_in,
    c, 1, stride, bias=False), BatchNorm2d(c)])``. Any input of at least
    4x4 pixels works (the pooling is global); the paper's is 3x32x32.

    Parameters
    ----------
    depth : int
        6n + 2 for n >= 1: 8, 14, 20, 32, 44, 56, 110, ...
    num_classes : int, default 10
    in_channels : int, default 3

    Raises
    ------
    ValueError
        ``depth`` is not of the form 6n + 2, or an argument is below 1.

    Examples
    --------
    >>> m = resnet(32)
    >>> len(m), sum(p.size for p in m.parameters())
    (36, 466906)
    """
    depth = _int(depth, "depth")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"`depth` must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, ...), got {depth}")
    num_classes = _int(num_classes, "num_classes")
    in_channels = _int(in_channels, "in_channels")
    n = (depth - 2) // 6
    layers = [L.Conv2d(in_channels, 16, 3, padding=1, bias=False), L.BatchNorm2d(16), L.ReLU()]
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            layers += _basic_block(c_in, width, stride)
            c_in = width
    layers += [L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(64, num_classes)]
    return Sequential(layers)


def resnet20(num_classes=10, in_channels=3):
    """ResNet-20 for CIFAR-sized images: ``resnet(20, num_classes, in_channels)``.

    272,474 parameters for 3 input channels and 10 classes.

    Examples
    --------
    >>> m = resnet20()
    >>> sum(p.size for p in m.parameters())
    272474
    >>> [k for k in m.state_dict() if k.startswith("9.shortcut")][:2]
    ['9.shortcut.0.weight', '9.shortcut.1.weight']
    """
    return resnet(20, num_classes=num_classes, in_channels=in_channels)


# The zoo by the names the command line and ``striate.introspect`` use.
MODELS = {"lenet5": lenet5, "typical_cnn": typical_cnn, "resnet20": resnet20}
