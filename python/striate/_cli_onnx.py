"""``striate export MODEL OUT.onnx``: the ONNX exporter on the command line.

MODEL is a saved model file or a zoo name. The input shape is inferred from
the first convolution (as ``striate summary`` does) unless ``--input-shape C H W``
is given. A path that cannot be written is reported as given (the export
writes a temporary file next to it first). Not here: the export itself
(``striate.onnx_io``).
"""

from __future__ import annotations

import os

from . import introspect, onnx_io
from ._cli_introspect import _add_model, resolve_model
from .cli import CLIError, _positive_int

__all__ = ["add_commands", "cmd_export"]


def configure_export(p):
    _add_model(p)
    p.add_argument("out", metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--input-shape", nargs=3, type=_positive_int, metavar=("C", "H", "W"), default=None,
                   help="one sample's shape (default: inferred from the first Conv2d)")
    p.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset (default 17, at least 13)")


def cmd_export(args):
    model = resolve_model(args.model)
    if args.input_shape is not None:
        shape = tuple(args.input_shape)
    else:
        try:
            shape = introspect.infer_input_shape(model)
        except ValueError as e:
            raise CLIError(f"{e}; pass --input-shape C H W") from None
    kwargs = {} if args.opset is None else {"opset": args.opset}
    model.eval()
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {args.out}: the folder {folder} does not exist")
    try:
        onnx_io.export(model, args.out, shape, **kwargs)
    except OSError as exc:  # name the path given, not the temporary file the export writes first
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out} (input N x {shape[0]} x {shape[1]} x {shape[2]})")
    return 0


def add_commands(register):
    """Register ``export`` with ``striate.cli``'s registry."""
    register("export", "export a model to ONNX (needs the [onnx] extra)", configure_export, cmd_export)
