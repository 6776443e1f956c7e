"""The ``striate`` command line: ``train``, ``evaluate``, ``predict``, and a registry for more.

``striate train`` with no arguments trains LeNet-5 on the embedded handwritten
digits with tuned defaults, saves the model and prints the test accuracy.
``evaluate`` and ``predict`` load a saved model (``striate.load``). Further
subcommands (finetune, bench, summary, visualize, export, lr-sweep) plug in
through ``register`` from the modules listed in ``COMMAND_MODULES``.

Not here: any training logic (that is ``striate.training.fit``), plotting, or
``sys.exit`` inside library code; ``main`` returns the exit status, and only
the console-script wrapper exits with it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from . import _config, augment, datasets, distributed, io, optim, training, zoo
from ._version import __version__

__all__ = ["main", "register", "build_parser", "COMMAND_MODULES", "TRAIN_DEFAULTS"]

# Modules that add subcommands: each defines ``add_commands(register)``.
COMMAND_MODULES: list[str] = ["striate._cli_introspect", "striate._cli_transfer", "striate._cli_onnx"]

# name -> (help, configure(parser), run(args) -> int)
_COMMANDS: dict = {}

# The defaults of `striate train`, tuned for LeNet-5 on the embedded digits.
TRAIN_DEFAULTS = {
    "model": "lenet5",
    "dataset": "digits",
    "epochs": 30,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "loss": "cross_entropy",
    "seed": 0,
    "out": "model.safetensors",
}


class CLIError(Exception):
    """A user error on the command line: printed as ``striate: error: ...``, exit status 2."""


def register(name, help, configure, run):
    """Add a subcommand.

    Parameters
    ----------
    name : str
        The subcommand (``striate NAME ...``).
    help : str
        One line for ``striate --help``.
    configure : callable
        ``configure(parser)`` adds the subcommand's arguments to its
        ``argparse`` parser.
    run : callable
        ``run(args) -> int`` does the work and returns the exit status; it
        raises ``CLIError`` (or ValueError/OSError/ImportError) for user errors.
    """
    if name in _COMMANDS:
        raise ValueError(f"subcommand {name!r} is already registered")
    _COMMANDS[name] = (help, configure, run)


# --------------------------------------------------------------------------- helpers


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _float_arg(text, positive):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        what = "a positive finite number" if positive else "a finite number >= 0"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def _nonneg_float(text):
    return _float_arg(text, positive=False)


def _positive_float(text):
    return _float_arg(text, positive=True)


def _load_dataset(name, root, size=32):
    if name == "digits":
        return datasets.load_digits(size=size)
    loader = getattr(datasets, f"load_{name}", None)
    if loader is None:
        raise CLIError(f"dataset {name!r} is not available in this version of striate")
    if root is None:
        raise CLIError(f"--dataset {name} needs --data-root (the folder holding its files)")
    return loader(root)


def _build_model(name, x_shape, num_classes):
    channels, height = x_shape[1], x_shape[2]
    if name == "lenet5":
        if channels != 1 or height not in (28, 32):
            raise CLIError(f"lenet5 takes 1x28x28 or 1x32x32 images, the data has {tuple(x_shape[1:])}")
        return zoo.lenet5(num_classes=num_classes, input_size=height)
    if name == "typical_cnn":
        if height != 32:
            raise CLIError(f"typical_cnn takes 32x32 images, the data has {tuple(x_shape[1:])}")
        return zoo.typical_cnn(in_channels=channels, num_classes=num_classes)
    raise CLIError(f"unknown model {name!r}")


def _default_augment(x_shape):
    """A mild random affine for digit-like data."""
    return augment.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def _set_threads(threads):
    if threads is not None:
        _config.set_num_threads(threads)


def _load_model(path):
    return io.load_model(path)


def _result_line(metrics, seconds):
    return f"test accuracy {metrics['accuracy'] * 100:.2f}% (loss {metrics['loss']:.3f}) in {seconds:.1f} s"


# --------------------------------------------------------------------------- train


def _configure_train(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--model", default=d["model"], choices=["lenet5", "typical_cnn"], help="architecture (default %(default)s)")
    p.add_argument("--dataset", default=d["dataset"], help="digits (embedded), mnist or cifar10 (default %(default)s)")
    p.add_argument("--data-root", default=None, help="folder of the mnist / cifar10 files")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="default %(default)s")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="default %(default)s")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="(peak) learning rate, default %(default)s")
    p.add_argument("--momentum", type=_nonneg_float, default=d["momentum"], help="SGD momentum, default %(default)s")
    p.add_argument("--weight-decay", type=_nonneg_float, default=d["weight_decay"], help="default %(default)s")
    p.add_argument(
        "--schedule", default=d["schedule"], choices=["onecycle", "cosine", "constant"],
        help="learning-rate schedule, per step (default %(default)s)",
    )
    p.add_argument("--loss", default=d["loss"], choices=["cross_entropy", "squared_error"], help="default %(default)s")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random affine augmentation (default: on)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seeds init, shuffling, dropout (default %(default)s)")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads for the kernels (default: all cores)")
    p.add_argument("--out", default=d["out"], help="where to save the trained model (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="write a resumable training checkpoint after every epoch")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written with --checkpoint")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="1: progress bar, 2: a line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (run under mpiexec -n K; needs the [mpi] extra)")


def _run_train(args):
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    _set_threads(args.threads)
    t0 = time.perf_counter()
    (x, y), (x_test, y_test) = _load_dataset(args.dataset, args.data_root)
    num_classes = int(max(y.max(), y_test.max())) + 1
    _config.seed(args.seed)
    model = _build_model(args.model, x.shape, num_classes)
    opt = optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum,
        nesterov=args.momentum > 0, weight_decay=args.weight_decay,
    )
    steps = -(-x.shape[0] // args.batch_size)
    callbacks = []
    if args.schedule == "onecycle":
        sched = optim.OneCycleLR(opt, max_lr=args.lr, total_steps=steps * args.epochs)
        callbacks.append(training.LearningRateScheduler(sched, per_step=True))
    elif args.schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=steps * args.epochs)
        callbacks.append(training.LearningRateScheduler(sched, per_step=True))
    augment = None
    if args.augment is None or args.augment:
        augment = _default_augment(x.shape)
    training.fit(
        model, x, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt, loss=args.loss,
        augment=augment, callbacks=callbacks, seed=args.seed, verbose=args.verbose,
        checkpoint=args.checkpoint, resume_from=args.resume, distributed=args.distributed,
    )
    metrics = training.evaluate(model, x_test, y_test, loss=args.loss)
    if args.distributed:
        if distributed.rank() != 0:  # every rank holds the same model; rank 0 reports
            return 0
    model.save(args.out)
    print(f"saved {args.out}")
    print(_result_line(metrics, time.perf_counter() - t0))
    return 0


# --------------------------------------------------------------------------- evaluate


def _configure_evaluate(p):
    p.add_argument("model", help="a model file saved by striate (model.save / striate train)")
    p.add_argument("--dataset", default="digits", help="digits (embedded), mnist or cifar10 (default %(default)s)")
    p.add_argument("--data-root", default=None, help="folder of the mnist / cifar10 files")
    p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "squared_error"])
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--threads", type=_positive_int, default=None)


def _run_evaluate(args):
    _set_threads(args.threads)
    t0 = time.perf_counter()
    model = _load_model(args.model)
    _, (x_test, y_test) = _load_dataset(args.dataset, args.data_root)
    metrics = training.evaluate(model, x_test, y_test, batch_size=args.batch_size, loss=args.loss)
    print(_result_line(metrics, time.perf_counter() - t0) + f" on {x_test.shape[0]} images")
    return 0


# --------------------------------------------------------------------------- predict


def _read_image(path, channels):
    """One input file as a float32 batch ``(n, C, H, W)``."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = np.load(path, allow_pickle=False)
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
    if ext == ".png":
        try:
            import matplotlib.image as mpimg
        except ImportError:
            raise CLIError(
                f"{path}: reading .png needs matplotlib: install the [viz] extra (pip install 'striate[viz]') "
                "or pass .npy files"
            ) from None
        img = np.asarray(mpimg.imread(path), dtype=np.float32)
        if img.dtype.kind != "f" or img.max() > 1.0:
            img = img / np.float32(255.0)
        if img.ndim == 3:
            img = img[..., :3]
            if channels == 1:
                img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            else:
                img = np.moveaxis(img, -1, 0)
        if img.ndim == 2:
            img = img[None]
        return np.ascontiguousarray(img[None], dtype=np.float32)
    raise CLIError(f"{path}: unsupported file type {ext or '(none)'}; pass .npy or .png files")


def _configure_predict(p):
    p.add_argument("model", help="a model file saved by striate")
    p.add_argument("files", nargs="+", help=".npy arrays ((H, W), (C, H, W) or (N, C, H, W)) or .png images")
    p.add_argument("--top", type=_positive_int, default=1, help="how many classes to print per image (default 1)")
    p.add_argument("--threads", type=_positive_int, default=None)


def _run_predict(args):
    _set_threads(args.threads)
    model = _load_model(args.model)
    channels = getattr(model[0], "in_channels", 1)
    for path in args.files:
        batch = _read_image(path, channels)
        probs = training.predict(model, batch)
        for i, row in enumerate(probs):
            top = np.argsort(-row, kind="stable")[: args.top]
            name = path if probs.shape[0] == 1 else f"{path}[{i}]"
            print(f"{name}\t" + "\t".join(f"{int(c)} ({row[c]:.3f})" for c in top))
    return 0


register("train", "train a model (default: LeNet-5 on the embedded digits)", _configure_train, _run_train)
register("evaluate", "test accuracy and loss of a saved model", _configure_evaluate, _run_evaluate)
register("predict", "class probabilities for .npy / .png inputs", _configure_predict, _run_predict)


# --------------------------------------------------------------------------- entry point


def _command_table():
    """The registered subcommands plus those of ``COMMAND_MODULES``, built afresh for each parser.

    A module's commands go into this table only (not into the registry), so
    building the parser twice, or listing a module twice, is harmless; a
    name taken by a different command raises ValueError.
    """
    table = dict(_COMMANDS)

    def add(name, help, configure, run):
        if name in table and table[name][2] is not run:
            raise ValueError(f"subcommand {name!r} is already registered")
        table[name] = (help, configure, run)

    for module in dict.fromkeys(COMMAND_MODULES):
        importlib.import_module(module).add_commands(add)
    return table


def build_parser():
    """The argparse parser with every subcommand; each sets ``args.run``."""
    parser = argparse.ArgumentParser(prog="striate", description="Convolutional networks on multicore CPUs.")
    parser.add_argument("--version", action="version", version=f"striate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, configure, run) in _command_table().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (0 on success, 2 on user errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("striate: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, ImportError) as exc:
        print(f"striate {args.command}: error: {exc}", file=sys.stderr)
        return 2
