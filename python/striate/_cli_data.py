"""The data side of the command line: ``--dataset``/``--data-root``/``--download``, models, input files.

Every subcommand that reads data takes the same options (``add_data_args``:
``--dataset``, ``--data-root``, ``--download``, ``--max-upscale``) and
loads through ``load_data``, which returns a ``Data`` (train and test
arrays, class names, the name). ``imagefolder``
reads ``--data-root`` as ``root/<class>/<image>``, resized to the model's
input (enlarged at most ``--max-upscale`` times; ``striate predict`` too)
and split by ``--val-split``. ``model_input`` says what a model takes
(its recorded ``input_shape``, else what its first layers imply);
``fit_to_model`` makes the images fit it or names the mismatch;
``read_inputs`` reads the files ``striate predict`` and ``visualize --input``
accept; ``load_model_file`` tells a file that is not a striate model from a
damaged one; ``MODELS`` is the ``--model`` table: the zoo's models
(``resnet20`` appears once ``striate.zoo`` has it) and ``typical_cnn_bn``,
typical_cnn with BatchNorm, built here for the Fashion-MNIST recipe.

Not here: training or evaluating (``striate.cli``), decoding images
(``striate.datasets.folder``), and no ``sys.exit``: errors raise ``CLIError``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from . import _files, augment, datasets, introspect, io, zoo
from .datasets import _download
from .datasets.folder import decode_image

__all__ = [
    "CLIError", "DATASETS", "Data", "MODELS", "IMAGE_EXTENSIONS", "add_data_args", "add_upscale_arg", "build_model",
    "fit_to_model", "load_data", "load_model_file", "model_input", "read_inputs",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagefolder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(k) for k in range(10))


class CLIError(Exception):
    """A runtime error on the command line: printed as ``striate: error: ...``, exit status 1."""


# --------------------------------------------------------------------------- models


def _lenet5(shape, num_classes):
    c, h, w = shape
    if c != 1 or h != w or h not in (28, 32):
        raise CLIError(f"lenet5 takes 1x28x28 or 1x32x32 images, the data has {c}x{h}x{w}")
    return zoo.lenet5(num_classes=num_classes, input_size=h)


def _typical_cnn(shape, num_classes):
    c, h, w = shape
    if h > 32 or w > 32:
        raise CLIError(f"typical_cnn takes 32x32 images (smaller ones are padded), the data has {c}x{h}x{w}")
    return zoo.typical_cnn(in_channels=c, num_classes=num_classes)


def _typical_cnn_bn(shape, num_classes):
    """typical_cnn's stack with BatchNorm after every convolution and dropout before both Linears."""
    from . import layers as L

    c, h, w = shape
    if h % 4 or w % 4:
        raise CLIError(f"typical_cnn_bn takes images whose sides are multiples of 4, the data has {c}x{h}x{w}")
    return _sequential([
        L.Conv2d(c, 32, 3, padding=1, bias=False), L.BatchNorm2d(32), L.ReLU(),
        L.Conv2d(32, 32, 3, padding=1, bias=False), L.BatchNorm2d(32), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(32, 64, 3, padding=1, bias=False), L.BatchNorm2d(64), L.ReLU(), L.MaxPool2d(2),
        L.Dropout(0.25), L.Flatten(), L.Linear(64 * (h // 4) * (w // 4), 128), L.ReLU(), L.Dropout(0.25),
        L.Linear(128, num_classes),
    ])


def _sequential(layers):
    from .model import Sequential

    return Sequential(layers)


def _resnet20(shape, num_classes):
    return zoo.resnet20(num_classes=num_classes, in_channels=shape[0])


# name -> (builder(shape, num_classes), default (C, H, W) for image folders)
MODELS = {
    "lenet5": (_lenet5, (1, 32, 32)),
    "typical_cnn": (_typical_cnn, (3, 32, 32)),
    "typical_cnn_bn": (_typical_cnn_bn, (3, 32, 32)),
}
if hasattr(zoo, "resnet20"):  # the CIFAR ResNet, once the zoo has it
    MODELS["resnet20"] = (_resnet20, (3, 32, 32))


def build_model(name, shape, num_classes):
    """A fresh ``--model NAME`` for samples of ``shape`` (C, H, W) and ``num_classes`` outputs."""
    if name not in MODELS:
        raise CLIError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name][0](tuple(shape), num_classes)


def model_input(model, required=True):
    """``(C, H, W)`` the model takes: its recorded ``input_shape``, else what its layers imply.

    When neither tells, a CLIError, or None with ``required=False``.
    """
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        return tuple(introspect.infer_input_shape(model))
    except ValueError as exc:
        if not required:
            return None
        raise CLIError(f"cannot tell which images the model takes ({exc})") from None


def load_model_file(path):
    """``striate.load(path)``, with a missing file, a file that is not a striate model and a damaged one
    told apart in the message."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path}: cannot read: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a folder, not a striate model file")
    if path.lower().endswith(".onnx"):  # read through the ONNX import, not as safetensors
        from . import onnx_io

        try:
            return onnx_io.import_model(path)
        except (ImportError, ValueError) as exc:
            raise CLIError(f"{path}: an ONNX file that cannot be imported ({exc})") from None
    try:
        _, metadata = io.read_header(path)
    except io.FormatError as exc:
        raise CLIError(f"{path} is not a striate model file ({exc.problem})") from None
    if io.ARCH_KEY not in metadata:
        raise CLIError(f"{path} is not a striate model file (a safetensors file without a striate architecture)")
    return io.load_model(path)


# --------------------------------------------------------------------------- data sets


class Data:
    """What ``load_data`` returns: ``train`` and ``test`` as ``(x, y)`` arrays, ``classes`` and ``name``."""

    def __init__(self, name, train, test, classes):
        self.name, self.train, self.test, self.classes = name, train, test, classes

    @property
    def num_classes(self):
        return max(len(self.classes or ()), int(max(self.train[1].max(), self.test[1].max())) + 1)

    @property
    def shape(self):
        return tuple(self.train[0].shape[1:])


def add_data_args(p, default="digits", names=DATASETS, image_options=False):
    """``--dataset``, ``--data-root``, ``--download`` and ``--max-upscale`` (and, for training,
    ``--image-size``/``--val-split``).

    ``default=None`` means "the model's recorded dataset, else digits".
    """
    shown = default if default is not None else "the model's, else digits"
    p.add_argument("--dataset", default=default, choices=list(names), help=f"data set (default: {shown})")
    p.add_argument("--data-root", default=None, metavar="PATH",
                   help="folder of the data set's files (mnist, cifar10; imagefolder: root/<class>/<image>); "
                   "default: striate's cache folder, and Debian's folder for fashion-mnist")
    p.add_argument("--download", action="store_true", help="fetch missing mnist / fashion-mnist / cifar10 files")
    add_upscale_arg(p, "imagefolder: ")
    if image_options:
        p.add_argument("--image-size", type=_size_arg, default=None, metavar="N|HxW",
                       help="imagefolder: resize images to this size (default: the model's input, 32x32)")
        p.add_argument("--val-split", type=_fraction, default=0.2,
                       help="imagefolder: fraction of the images held out for testing (default %(default)s)")


def add_upscale_arg(p, what=""):
    """``--max-upscale X``: how much smaller images may be enlarged to the model's input."""
    p.add_argument("--max-upscale", type=_upscale_arg, default=4.0, metavar="X",
                   help=f"{what}refuse images that would be enlarged more than X times along a side to fit the "
                   "model's input (default %(default)s; inf: no limit)")


def _upscale_arg(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 1 (inf: no limit), got {text!r}") from None
    if not v >= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number >= 1 (inf: no limit), got {text!r}")
    return v


def _size_arg(text):
    parts = text.lower().split("x")
    try:
        vals = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N or HxW, got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"must be N or HxW with positive sizes, got {text!r}")
    return (vals[0], vals[-1])


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return v


def _cli_words(exc):
    """A data loader's advice in the command line's words."""
    text = str(exc).replace("download=True", "--download").replace("root=", "--data-root").replace(
        "pass --data-root the folder", "pass --data-root, the folder")
    return text


def _image_words(exc):
    """An image's refusal in the command line's words: ``--max-upscale``, the model's input."""
    text = str(exc).replace("max_upscale=", "--max-upscale ")
    return text.replace("for image_size ", "for the model's input ").replace("to image_size ", "to the model's input ")


def _idx_or_cifar(name, root, download):
    loader = {"mnist": datasets.load_mnist, "cifar10": datasets.load_cifar10}[name]
    if root is None:
        root = _download.cache_dir() / name
        if download:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise CLIError(f"--dataset {name} needs --data-root (the folder holding its files), "
                           f"or --download to fetch them into {root}")
    return loader(root, download=download)


def _image_folder(root, shape, val_split, seed, max_upscale):
    if root is None:
        raise CLIError("--dataset imagefolder needs --data-root PATH, a folder laid out as PATH/<class>/<image>")
    c, h, w = shape
    ds = datasets.ImageFolder(root, image_size=(h, w), channels=c if c in (1, 3) else 3, max_upscale=max_upscale)
    n = len(ds)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * val_split))
    if val_split > 0 and (n_test < 1 or n_test >= n):
        raise CLIError(f"--val-split {val_split} of {n} images in {root} leaves no test or no training images")
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    try:
        train = ds.get_batch(train_idx)
        test = ds.get_batch(test_idx) if n_test else train
    except ValueError as exc:  # a file that cannot be decoded, or one too small for the model's input
        raise CLIError(_image_words(exc)) from None
    return train, test, list(ds.classes)


def load_data(name, root=None, download=False, *, shape=None, val_split=0.2, seed=0, max_upscale=4.0):
    """Load ``--dataset NAME`` as a ``Data``.

    ``shape`` is the ``(C, H, W)`` the model wants: the digits are rendered
    at its size and image folders decoded to it (default 1x32x32 for digits,
    3x32x32 for folders; an image smaller than ``1 / max_upscale`` of it is
    refused); the fixed-size sets are returned as they are.
    """
    try:
        if name == "digits":
            size = shape[1] if shape is not None and shape[1] == shape[2] and shape[1] >= 8 else 32
            train, test = datasets.load_digits(size=size)
            return Data(name, train, test, list(DIGIT_CLASSES))
        if name == "fashion-mnist":
            train, test = datasets.load_fashion_mnist(root, download=download)
            return Data(name, train, test, list(datasets.FASHION_MNIST_CLASSES))
        if name in ("mnist", "cifar10"):
            train, test = _idx_or_cifar(name, root, download)
            return Data(name, train, test, list(DIGIT_CLASSES if name == "mnist" else CIFAR10_CLASSES))
        if name == "imagefolder":
            train, test, classes = _image_folder(root, shape or (3, 32, 32), val_split, seed, max_upscale)
            return Data(name, train, test, classes)
    except (FileNotFoundError, datasets.DownloadError) as exc:
        raise CLIError(_cli_words(exc)) from None
    raise CLIError(f"dataset {name!r} is not available; choose from {', '.join(DATASETS)}")


def fit_to_model(model, x, what="the data", want=None):
    """``x`` (N, C, H, W) made to fit the model's input ``want`` (default ``model_input(model)``).

    Grey becomes colour and colour grey when the channels differ; smaller
    images are zero-padded in the centre (28x28 digits for a 32x32 model).
    Anything else is a CLIError naming both shapes. With ``want`` None and a
    model whose input cannot be told, ``x`` is passed on as it is.
    """
    want = tuple(want) if want is not None else model_input(model, required=False)
    if want is None:
        return x
    have = tuple(x.shape[1:])
    if len(have) == 3 and have[0] != want[0]:
        if have[0] == 3 and want[0] == 1:
            x = augment.grayscale(x)
        elif have[0] == 1 and want[0] == 3:
            x = np.repeat(x, 3, axis=1)
    if len(have) == 3 and x.shape[1] == want[0] and x.shape[2] <= want[1] and x.shape[3] <= want[2]:
        ph, pw = want[1] - x.shape[2], want[2] - x.shape[3]
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        return np.ascontiguousarray(x, dtype=np.float32)
    raise CLIError(
        f"the model takes {'x'.join(map(str, want))} inputs (C x H x W), {what} has {'x'.join(map(str, have))}"
    )


# --------------------------------------------------------------------------- input files


def _npy(path):
    try:
        f, _ = _files.open_regular(path)  # a FIFO or a device is refused at once
        with f:
            arr = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255.0)
    elif arr.dtype.kind != "f":
        raise CLIError(f"{path}: arrays must be float or uint8, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        return arr[None]
    if arr.ndim == 4:
        return arr
    raise CLIError(f"{path}: expected an (H, W), (C, H, W) or (N, C, H, W) array, got shape {arr.shape}")


def _image(path, shape, notes, max_upscale):
    c, h, w = shape
    channels = 1 if c == 1 else 3
    img = decode_image(path, channels)
    if img.shape[1:] != (h, w):
        try:
            resized = decode_image(path, channels, (h, w), max_upscale=max_upscale)
        except ValueError as exc:  # too small for the model's input
            raise CLIError(_image_words(exc)) from None
        notes.append(f"resized {path} from {img.shape[1]}x{img.shape[2]} to {h}x{w} (H x W, the model's input)")
        img = resized
    return img[None]


def _expand(paths):
    """Files as given; a folder stands for its image files (sorted, recursively)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*")
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
            if not found:
                raise CLIError(f"{p}: the folder holds no {', '.join(IMAGE_EXTENSIONS)} images")
            out.extend(found)
        else:
            out.append(p)
    return out


def read_inputs(paths, shape=None, max_upscale=4.0):
    """``[(name, batch (n, C, H, W) float32)]`` and notes for the files and folders given.

    ``.npy`` arrays of shape (H, W), (C, H, W) or (N, C, H, W) (uint8 scaled by
    1/255) are taken as they are; PNG, JPEG, BMP and GIF images are decoded to
    ``shape``'s channels and resized to its size when they differ (a note
    says so; an image that would be enlarged more than ``max_upscale`` times
    along a side, or a single pixel stretched, is a CLIError naming it). ``shape`` may be a callable giving it (called for the first
    image only); None then means images keep their size and get 1 channel.
    """
    if callable(shape):
        shape_fn, shape = shape, None
    else:
        shape_fn = None
    items, notes = [], []
    for path in _expand(paths):
        ext = os.path.splitext(path)[1].lower()
        if not os.path.isfile(path):
            raise CLIError(f"{path}: no such file")
        if ext == ".npy":
            items.append((path, _npy(path)))
        elif ext in IMAGE_EXTENSIONS:
            if shape is None and shape_fn is not None:
                shape, shape_fn = shape_fn(), None
            if shape is None:
                items.append((path, decode_image(path, 1)[None]))
            else:
                items.append((path, _image(path, shape, notes, max_upscale)))
        else:
            raise CLIError(
                f"{path}: unsupported file type {ext or '(none)'}; pass .npy arrays or "
                f"{'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS if e != '.jpeg')} images"
            )
    return items, notes
