"""The ``striate`` command line: ``train``, ``evaluate``, ``predict``, and a registry for more.

``striate train`` with no arguments trains LeNet-5 on the embedded handwritten
digits with tuned defaults, saves the model (with its data set's name and
class names) and prints the test accuracy. ``--dataset digits | mnist |
fashion-mnist | cifar10 | imagefolder`` with ``--data-root`` and ``--download``
choose the data on every subcommand that reads some (``striate._cli_data``).
``evaluate`` (default: the data set the model was trained on; ``--report``,
``--plot``) and ``predict`` (images, ``.npy`` arrays and folders; class names
when the model has them) load a saved model. Further subcommands (finetune,
bench, summary, visualize, export, lr-sweep) plug in through ``register``
from the modules listed in ``COMMAND_MODULES``.

Errors: argparse's usage errors exit 2; every runtime error prints one line,
``striate: error: ...``, and exits 1.

Not here: any training logic (that is ``striate.training.fit``), plotting
(``striate._cli_report``), or ``sys.exit`` inside library code; ``main``
returns the exit status, and only the console-script wrapper exits with it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from . import _cli_report, _config, augment, distributed, optim, training
from ._cli_data import (
    DATASETS, MODELS, CLIError, add_data_args, add_upscale_arg, build_model, fit_to_model, load_data, load_model_file,
    model_input, read_inputs,
)
from ._version import __version__

__all__ = ["CLIError", "main", "register", "build_parser", "COMMAND_MODULES", "TRAIN_DEFAULTS", "data_for_model"]

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
        raises ``CLIError`` (or any other exception) for errors, which ``main``
        prints as one line with exit status 1.
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


def _set_threads(threads):
    if threads is not None:
        _config.set_num_threads(threads)


def _default_augment(x_shape):
    """A mild random affine for digit-like data."""
    return augment.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def _result_line(metrics, seconds):
    return f"test accuracy {metrics['accuracy'] * 100:.2f}% (loss {metrics['loss']:.3f}) in {seconds:.1f} s"


# --------------------------------------------------------------------------- train


def _configure_train(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--model", default=d["model"], choices=list(MODELS), help="architecture (default %(default)s)")
    add_data_args(p, default=d["dataset"], image_options=True)
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


def _train_data(args):
    """The data set of ``striate train``, image folders decoded for the chosen model."""
    shape = None
    if args.dataset == "imagefolder":
        c, h, w = MODELS[args.model][1]
        if args.image_size is not None:
            h, w = args.image_size
        shape = (c, h, w)
    return load_data(args.dataset, args.data_root, args.download, shape=shape, val_split=args.val_split,
                     seed=args.seed, max_upscale=args.max_upscale)


def _schedule_callbacks(args, opt, steps):
    if args.schedule == "onecycle":
        sched = optim.OneCycleLR(opt, max_lr=args.lr, total_steps=steps * args.epochs)
    elif args.schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=steps * args.epochs)
    else:
        return []
    return [training.LearningRateScheduler(sched, per_step=True)]


def _run_train(args):
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    _set_threads(args.threads)
    t0 = time.perf_counter()
    data = _train_data(args)
    _config.seed(args.seed)
    model = build_model(args.model, data.shape, data.num_classes)
    (x, y), (x_test, y_test) = data.train, data.test
    x = fit_to_model(model, x, f"--dataset {data.name}")
    x_test = fit_to_model(model, x_test, f"--dataset {data.name}")
    if tuple(x.shape[1:]) != data.shape:
        print(f"note: {data.name} images ({'x'.join(map(str, data.shape))}) are fed to {args.model} as "
              f"{'x'.join(map(str, x.shape[1:]))}", file=sys.stderr)
    if data.classes is not None and len(data.classes) == data.num_classes:
        model.classes = data.classes
    model.dataset = data.name
    opt = optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum,
        nesterov=args.momentum > 0, weight_decay=args.weight_decay,
    )
    steps = -(-x.shape[0] // args.batch_size)
    aug = _default_augment(x.shape) if args.augment is None or args.augment else None
    training.fit(
        model, x, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt, loss=args.loss,
        augment=aug, callbacks=_schedule_callbacks(args, opt, steps), seed=args.seed, verbose=args.verbose,
        checkpoint=args.checkpoint, resume_from=args.resume, distributed=args.distributed,
    )
    metrics = training.evaluate(model, x_test, y_test, loss=args.loss)
    if args.distributed:
        if distributed.rank() != 0:  # every rank holds the same model; rank 0 reports
            return 0
    _save(model, args.out)
    print(f"saved {args.out}")
    print(_result_line(metrics, time.perf_counter() - t0))
    return 0


def _save(model, path):
    try:
        model.save(path)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- evaluate


def _configure_evaluate(p):
    p.add_argument("model", help="a model file saved by striate (model.save / striate train)")
    add_data_args(p, default=None)
    p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "squared_error"])
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--report", action="store_true",
                   help="print per-class precision, recall, F1 and support, and the confusion matrix")
    p.add_argument("--plot", default=None, metavar="CM.png", help="draw the confusion matrix to this image")
    p.add_argument("--threads", type=_positive_int, default=None)


def data_for_model(model, dataset, data_root, download, split="test", max_upscale=4.0):
    """``(name, x, y, classes)``: the model's data set (``--dataset`` or the one it recorded), fitted to it.

    For an image folder every image is used (point ``--data-root`` at held-out images), each enlarged
    at most ``max_upscale`` times to the model's input.
    """
    name = dataset or getattr(model, "dataset", None) or "digits"
    if name not in DATASETS:
        raise CLIError(f"the model was trained on {name!r}, which the command line cannot load; pass --dataset")
    want = model_input(model)
    data = load_data(name, data_root, download, shape=want, val_split=0.0, max_upscale=max_upscale)
    x, y = data.train if split == "train" else data.test
    return name, fit_to_model(model, x, f"--dataset {name}", want), y, data.classes


def _run_evaluate(args):
    _set_threads(args.threads)
    t0 = time.perf_counter()
    model = load_model_file(args.model)
    name, x_test, y_test, classes = data_for_model(model, args.dataset, args.data_root, args.download,
                                                   max_upscale=args.max_upscale)
    metrics = training.evaluate(model, x_test, y_test, batch_size=args.batch_size, loss=args.loss)
    print(_result_line(metrics, time.perf_counter() - t0) + f" on {x_test.shape[0]} images")
    if args.report or args.plot:
        pred = np.argmax(training.predict(model, x_test, batch_size=args.batch_size), axis=1)
        names = model.classes or classes
        _cli_report.report(y_test, pred, names, args.plot, title=f"{os.path.basename(args.model)} on {name}",
                           show=args.report)
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------- predict


def _configure_predict(p):
    p.add_argument("model", help="a model file saved by striate")
    p.add_argument("files", nargs="+",
                   help=".npy arrays ((H, W), (C, H, W) or (N, C, H, W)), PNG/JPEG/BMP/GIF images, or folders of them")
    p.add_argument("--top", type=_positive_int, default=1, help="how many classes to print per image (default 1)")
    add_upscale_arg(p)
    p.add_argument("--threads", type=_positive_int, default=None)


def _run_predict(args):
    _set_threads(args.threads)
    model = load_model_file(args.model)
    want = model_input(model, required=False)  # .npy arrays are fed as they are when the model cannot tell
    items, notes = read_inputs(args.files, want if want is not None else (lambda: model_input(model)),
                               max_upscale=args.max_upscale)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    names = model.classes
    for path, batch in items:
        probs = training.predict(model, fit_to_model(model, batch, path, want))
        if names is not None and len(names) != probs.shape[1]:
            names = None
        for i, row in enumerate(probs):
            top = np.argsort(-row, kind="stable")[: args.top]
            label = path if probs.shape[0] == 1 else f"{path}[{i}]"
            print(f"{label}\t" + "\t".join(
                f"{names[c] if names else int(c)} ({row[c]:.3f})" for c in top))
    return 0


register("train", "train a model (default: LeNet-5 on the embedded digits)", _configure_train, _run_train)
register("evaluate", "test accuracy and loss of a saved model", _configure_evaluate, _run_evaluate)
register("predict", "class probabilities for images (PNG/JPEG/BMP/GIF) and .npy arrays", _configure_predict,
         _run_predict)


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


def _one_line(exc):
    """An exception as one line: its message, prefixed by its type when that is not a user error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (CLIError, ValueError, TypeError, OSError, ImportError, ArithmeticError)):
        text = f"{type(exc).__name__}: {text}"
    return text


def main(argv=None):
    """Run the command line; returns the exit status.

    0 on success, 2 for usage errors (argparse's), 1 for every runtime error,
    printed as one line ``striate: error: ...`` with no traceback (set
    ``STRIATE_TRACEBACK=1`` to see one), 130 when interrupted.
    """
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
    except Exception as exc:  # every runtime error: one line, exit status 1
        if os.environ.get("STRIATE_TRACEBACK"):
            raise
        print(f"striate: error: {_one_line(exc)}", file=sys.stderr)
        return 1
