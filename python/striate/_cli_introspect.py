"""The look-inside subcommands: ``striate summary | visualize | bench | lr-sweep``.

Each command is a ``configure(parser)`` / ``cmd_*(args) -> int`` pair. They plug
into ``striate.cli`` through ``add_commands(register)`` (its registry; list
this module in ``striate.cli.COMMAND_MODULES``), or into any argparse
sub-parsers through ``add_subcommands(subparsers)``. MODEL is a file saved
with ``model.save`` (``striate.load``) or a zoo name (``lenet5``, ``typical_cnn``,
``resnet20`` once the zoo has it). ``visualize`` and ``lr-sweep`` read
``--dataset`` (default: the one the model recorded, else the digits).

Deliberately not here: the computations themselves (``striate.introspect`` and
``striate.viz``) and ``sys.exit``: the commands return the exit status and
raise CLIError (or any exception) for errors, which ``striate.cli`` prints
as one line.
"""

from __future__ import annotations

import os

import numpy as np

from . import _config, introspect, viz, zoo
from . import layers as L
from ._cli_data import add_data_args, fit_to_model, load_model_file, model_input, read_inputs
from .cli import CLIError, _positive_float, _positive_int, data_for_model

__all__ = [
    "add_commands",
    "add_subcommands",
    "cmd_summary",
    "cmd_visualize",
    "cmd_bench",
    "cmd_lr_sweep",
    "resolve_model",
]

ZOO_NAMES = ("lenet5", "typical_cnn") + (("resnet20",) if hasattr(zoo, "resnet20") else ())


def resolve_model(spec, seed=0, in_channels=None):
    """A model from MODEL: a zoo name (freshly initialised from ``seed``) or a saved file.

    ``in_channels`` is passed to ``typical_cnn`` (default 3).
    """
    if spec in ZOO_NAMES:
        _config.seed(seed)
        if spec == "lenet5":
            return zoo.lenet5()
        if spec == "resnet20":
            return zoo.resnet20(in_channels=in_channels or 3)
        return zoo.typical_cnn(in_channels=in_channels or 3)
    if not os.path.exists(spec):
        raise CLIError(
            f"MODEL must be a saved model file or a zoo name ({', '.join(ZOO_NAMES)}), got {spec!r}: no such file"
        )
    return load_model_file(spec)


def _add_model(p, optional=False):
    kw = {"nargs": "?", "default": "lenet5"} if optional else {}
    p.add_argument(
        "model", metavar="MODEL", **kw,
        help=f"a saved model file or a zoo name ({', '.join(ZOO_NAMES)})" + (" (default lenet5)" if optional else ""),
    )


def _add_threads(p):
    p.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: all cores)")


def _set_threads(args):
    if getattr(args, "threads", None) is not None:
        _config.set_num_threads(args.threads)


# ----------------------------------------------------------------------------- summary


def configure_summary(p):
    _add_model(p)
    p.add_argument(
        "--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"), default=None,
        help="input shape without the batch dimension (default: inferred from the model)",
    )


def cmd_summary(args):
    """``striate summary MODEL [--input-shape C H W]``: print the layer table."""
    model = resolve_model(args.model)
    shape = tuple(args.input_shape) if args.input_shape else None
    print(introspect.summary(model, shape))
    return 0


# ----------------------------------------------------------------------------- visualize


def configure_visualize(p):
    _add_model(p)
    p.add_argument("--out", required=True, help="folder for the images (created if missing)")
    p.add_argument(
        "--input", default=None,
        help="an image (PNG/JPEG/BMP/GIF) or a .npy array (H, W), (C, H, W) or (N, C, H, W; the first is used) "
        "for the activation maps (default: the first test image of --dataset)",
    )
    p.add_argument("--max-maps", type=_positive_int, default=16, help="maps drawn per conv layer (default 16)")
    add_data_args(p, default=None)


def _sample_input(model, args):
    """One (C, H, W) image: ``--input``, else the first test image of the data set (the model's by default)."""
    if args.input is not None:
        want = model_input(model, required=False)
        items, _ = read_inputs([args.input], want if want is not None else (lambda: model_input(model)),
                               max_upscale=args.max_upscale)
        path, batch = items[0]
        return fit_to_model(model, batch[:1], f"--input {path}", want)[0]
    if args.dataset is None and getattr(model, "dataset", None) is None:
        c, h, w = model_input(model)
        if c != 1 or h != w:  # no data set to take an image from: a seeded random one
            return np.random.default_rng(0).random((c, h, w), dtype=np.float32)
    _, x, _, _ = data_for_model(model, args.dataset, args.data_root, args.download, max_upscale=args.max_upscale)
    return x[0]


def cmd_visualize(args):
    """``striate visualize MODEL --out DIR``: filter grids of every Conv2d and activation maps."""
    model = resolve_model(args.model)
    x = _sample_input(model, args)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for i, layer in enumerate(model):
        if isinstance(layer, L.Conv2d):
            written.append(viz.filters(layer, os.path.join(args.out, f"filters_layer{i}.png")))
    written.append(viz.activation_maps(model, x, os.path.join(args.out, "activations.png"), max_maps=args.max_maps))
    for path in written:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- bench


def configure_bench(p):
    p.add_argument(
        "--models", nargs="+", choices=ZOO_NAMES, default=list(ZOO_NAMES), help="zoo models (default: all)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    p.add_argument("--repeat", type=_positive_int, default=5, help="timed steps; the median is shown (default 5)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even when installed")
    _add_threads(p)


def cmd_bench(args):
    """``striate bench``: per-layer profile of the zoo models, next to PyTorch when installed."""
    _set_threads(args)
    report = introspect.bench_zoo(
        tuple(args.models), batch_size=args.batch_size, repeat=args.repeat, torch=False if args.no_torch else "auto"
    )
    print(report)
    return 0


# ----------------------------------------------------------------------------- lr-sweep


def configure_lr_sweep(p):
    _add_model(p, optional=True)
    p.add_argument("--lr-min", type=_positive_float, default=1e-5, help="smallest lr (default 1e-5)")
    p.add_argument("--lr-max", type=_positive_float, default=1.0, help="largest lr (default 1)")
    p.add_argument("--steps", type=_positive_int, default=100, help="lr values / training steps (default 100)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches and of a zoo model (default 0)")
    p.add_argument("--out", default=None, help="draw loss against lr to this image (needs matplotlib)")
    add_data_args(p, default=None)
    _add_threads(p)


def cmd_lr_sweep(args):
    """``striate lr-sweep [MODEL]``: LR range test on a data set's training images; prints the suggested lr."""
    _set_threads(args)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    in_channels = 3 if args.dataset in ("cifar10", "imagefolder") else 1
    model = resolve_model(args.model, seed=args.seed, in_channels=in_channels)
    _, x, y, _ = data_for_model(model, args.dataset, args.data_root, args.download, split="train",
                                max_upscale=args.max_upscale)
    result = viz.lr_sweep(
        model, x, y, args.out, lr_min=args.lr_min, lr_max=args.lr_max, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed,
    )
    lrs, losses = result["lrs"], result["losses"]
    for k in np.unique(np.linspace(0, len(lrs) - 1, min(len(lrs), 8)).round().astype(int)):
        print(f"lr {lrs[k]:10.3g}  smoothed loss {losses[k]:.4f}")
    if result["shape"] == "flat":
        print(f"the smoothed loss is flat over the sweep (it fell {100 * result['drop']:.1f}%)")
    stop = "stopped early: the loss diverged" if result["diverged"] else "ran every step"
    print(f"{len(lrs)} steps from {lrs[0]:.3g} to {lrs[-1]:.3g} ({stop})")
    how = "steepest descent of the smoothed loss" if result["method"] == "steepest" else "lr of the lowest loss / 10"
    print(f"suggested lr: {result['suggested_lr']:.3g} ({how})")
    if args.out:
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- plugging in

COMMANDS = (
    ("summary", "layer table: shapes, parameters, FLOPs, memory, receptive field", configure_summary, cmd_summary),
    ("visualize", "draw conv filters and activation maps to PNG files", configure_visualize, cmd_visualize),
    ("bench", "per-layer time of a training step for the zoo models (and PyTorch)", configure_bench, cmd_bench),
    ("lr-sweep", "learning-rate range test; prints a suggested lr", configure_lr_sweep, cmd_lr_sweep),
)


def add_commands(register):
    """Register the commands with ``striate.cli.register(name, help, configure, run)``."""
    for name, help_text, configure, run in COMMANDS:
        register(name, help_text, configure, run)


def add_subcommands(subparsers):
    """Add the commands to an ``argparse`` sub-parsers object; each sets ``args.func``."""
    for name, help_text, configure, run in COMMANDS:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(func=run)
    return subparsers
