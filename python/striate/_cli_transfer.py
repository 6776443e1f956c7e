"""The ``striate finetune`` subcommand: few-shot transfer of a pretrained model to a data set.

``striate finetune --from MODEL --dataset NAME [--data-root PATH] --shots K --epochs E`` takes K
labelled training examples per class (stratified, drawn with ``--seed``),
replaces the model's last Linear by one with the data set's number of
classes, freezes the layers before it (or ``[0, --freeze-upto)``), trains
what is left and prints the test accuracy. MODEL is a file saved with
``model.save`` or ``lenet5`` (the bundled weights trained on the digits).
It plugs into ``striate.cli`` through ``add_commands(register)``.

Deliberately not here: the training loop (``striate.training.fit``, with
``striate.transfer.cached_fit`` for frozen backbones), augmentation, and
``sys.exit``: user errors raise CLIError, which ``striate.cli`` prints.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from . import _config, augment, datasets, optim, training, transfer, zoo
from ._cli_data import add_data_args, load_data, load_model_file, model_input
from .cli import CLIError, _positive_float, _positive_int
from .layers import Conv2d, Linear

__all__ = ["add_commands", "configure_finetune", "cmd_finetune", "few_shot_indices", "load_task"]

DATASETS = ("digits", "shapes", "mnist", "fashion-mnist", "cifar10", "imagefolder")
PRETRAINED_NAMES = {"lenet5": "lenet5_digits"}

# make_shapes has no split: a fixed pool and test set, independent of --seed.
SHAPES_POOL = (5000, 101)
SHAPES_TEST = (2000, 102)


def few_shot_indices(y, shots, seed):
    """Sorted indices of ``shots`` examples of each class ``0..y.max()``, drawn without replacement.

    Raises
    ------
    CLIError
        A class has fewer than ``shots`` examples.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(int(y.max()) + 1):
        where = np.flatnonzero(y == c)
        if where.size < shots:
            raise CLIError(f"--shots {shots}: class {c} has only {where.size} training examples")
        picks.append(rng.choice(where, shots, replace=False))
    return np.sort(np.concatenate(picks))


def load_task(name, root=None, download=False, shape=None, seed=0, max_upscale=4.0):
    """``(x_train, y_train), (x_test, y_test)`` of a data set named on the command line.

    ``shape`` is the model's (C, H, W), to which image folders are decoded (each image enlarged at most
    ``max_upscale`` times).
    """
    if name == "shapes":
        return datasets.make_shapes(SHAPES_POOL[0], seed=SHAPES_POOL[1]), datasets.make_shapes(
            SHAPES_TEST[0], seed=SHAPES_TEST[1]
        )
    if name not in DATASETS:
        raise CLIError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "digits":
        return datasets.load_digits()
    data = load_data(name, root, download, shape=shape, val_split=0.2, seed=seed, max_upscale=max_upscale)
    return data.train, data.test


def _load_model(spec):
    if spec in PRETRAINED_NAMES:
        return transfer.load_pretrained(zoo.lenet5(), PRETRAINED_NAMES[spec])
    if not os.path.exists(spec):
        names = ", ".join(PRETRAINED_NAMES)
        raise CLIError(f"--from must be a saved model file or one of {names}, got {spec!r}: no such file")
    return load_model_file(spec)


def _first_conv(model):
    return next((layer for layer in model if isinstance(layer, Conv2d)), None)


def _runs(model, x):
    try:
        with training._mode(model, False):
            model(x[:1])
    except ValueError:
        return False
    return True


def adapt_inputs(model, *arrays):
    """Make images fit the model: grey <-> colour for its first Conv2d, zero padding to 32x32 if needed."""
    conv = _first_conv(model)
    out = list(arrays)
    if conv is not None:
        want, have = conv.in_channels, out[0].shape[1]
        if have == 3 and want == 1:
            out = [augment.grayscale(a) for a in out]
        elif have == 1 and want == 3:
            out = [np.repeat(a, 3, axis=1) for a in out]
    if not _runs(model, out[0]):
        h, w = out[0].shape[2:]
        if h < 32 and w < 32:
            ph, pw = 32 - h, 32 - w
            pad = ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            out = [np.pad(a, pad) for a in out]
        if not _runs(model, out[0]):
            raise CLIError(f"the model does not take the data's {tuple(arrays[0].shape[1:])} images")
    return out


def configure_finetune(p):
    p.add_argument("--from", dest="source", default="lenet5", metavar="MODEL",
                   help="a saved model file, or lenet5 (bundled weights trained on the digits; default)")
    add_data_args(p, default="shapes", names=DATASETS)
    p.add_argument("--root", dest="data_root", default=None, help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--shots", type=_positive_int, default=10, help="labelled examples per class (default %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=100, help="default %(default)s")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="default %(default)s")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate (default %(default)s)")
    p.add_argument("--freeze-upto", type=int, default=None, metavar="N",
                   help="freeze layers [0, N) (default: every layer before the new head)")
    p.add_argument("--seed", type=int, default=0, help="picks the shots, seeds the head and the shuffling (default 0)")
    p.add_argument("--out", default=None, help="save the fine-tuned model here")
    p.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=0, help="1: progress bar, 2: a line per epoch")


def cmd_finetune(args):
    """Run ``striate finetune``; returns the exit status."""
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.dataset not in DATASETS:
        raise CLIError(f"--dataset must be one of {', '.join(DATASETS)}, got {args.dataset!r}")
    if args.threads is not None:
        _config.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = _load_model(args.source)
    heads = [i for i, layer in enumerate(model) if isinstance(layer, Linear)]
    if not heads:
        raise CLIError(f"--from {args.source}: the model has no Linear layer to replace")
    head_at = heads[-1]
    upto = head_at if args.freeze_upto is None else args.freeze_upto
    if not 0 <= upto <= head_at:
        raise CLIError(f"--freeze-upto must be in [0, {head_at}] (layer {head_at} is the new head), got {upto}")
    (x, y), (x_test, y_test) = load_task(args.dataset, args.data_root, args.download,
                                         shape=model_input(model) if args.dataset == "imagefolder" else None,
                                         seed=args.seed, max_upscale=args.max_upscale)
    num_classes = int(max(y.max(), y_test.max())) + 1
    idx = few_shot_indices(y, args.shots, args.seed)
    x, y = x[idx], y[idx]
    _config.seed(args.seed)
    model.replace_head(num_classes)
    model.freeze(upto)
    x, x_test = adapt_inputs(model, x, x_test)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    kwargs = dict(epochs=args.epochs, batch_size=args.batch_size, optimizer=opt, seed=args.seed, verbose=args.verbose)
    cached = transfer.cached_fit(model, x, y, **kwargs)
    if cached is None:
        training.fit(model, x, y, **kwargs)
    metrics = training.evaluate(model, x_test, y_test)
    trainable = sum(p.size for p in model.parameters() if p.trainable)
    print(
        f"fine-tuned {args.source} on {args.dataset}: {args.shots} shots x {num_classes} classes, "
        f"layers [0, {upto}) frozen, {trainable} trainable parameters"
        + (", cached backbone features" if cached is not None else "")
    )
    if args.out is not None:
        try:
            model.save(args.out)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"saved {args.out}")
    print(f"test accuracy {metrics['accuracy'] * 100:.2f}% (loss {metrics['loss']:.3f}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def add_commands(register):
    """Register ``finetune`` with ``striate.cli``'s registry."""
    register(
        "finetune", "fine-tune a pretrained model on K labelled examples per class", configure_finetune, cmd_finetune
    )
