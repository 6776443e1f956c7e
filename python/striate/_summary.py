"""Describing a model for one input shape: the summary table, FLOP counts and receptive fields.

``summary`` / ``summary_rows`` describe a model (``Sequential`` or anything
holding layers) for one input shape: per layer the output shape, parameters
(trainable and frozen), forward FLOPs, activation memory and the receptive
field with its jump (product of strides). ``infer_input_shape`` guesses the
input shape of a convolutional model. Public as ``striate.introspect.summary``
and ``Sequential.summary``; it sits below ``Sequential``, which delegates here.

Deliberately not here: timing (``striate._profile``), the zoo benchmark
(``striate.introspect``), pictures (``striate.viz``) and any change to a model.

FLOP conventions (forward, per sample; a multiply-add is 2 FLOPs):

==================  ==============================================================
Conv2d              2 * N_out * (C_in / groups) * kh * kw, + N_out with a bias
Linear              2 * in * out, + out with a bias
MaxPool2d           N_out * (kh * kw - 1) comparisons
AvgPool2d           N_out * kh * kw (kh * kw - 1 adds and one divide per output)
LPPool2d            N_out * 2 * kh * kw (a power per element, adds, one root)
AdaptiveAvgPool2d   the sum of all window sizes (adds and one divide per output)
BatchNorm2d         2 per element (inference: one multiply-add after folding)
ReLU/Tanh/Sigmoid, LeakyReLU/GELU/SiLU   1 per element
Softmax             3 per element (exp, add, divide)
Dropout, Flatten    0
==================  ==============================================================

N_out is the number of output elements. Receptive fields follow the standard
recurrence on each axis, ``rf += (k_eff - 1) * jump; jump *= stride`` with
``k_eff = dilation * (k - 1) + 1``; padding does not change the size (so it can
exceed the input). Flatten acts as one window over the whole feature map, so
everything after it sees the whole input.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import layers as L
from .layers.chain import layers_of

__all__ = ["summary", "summary_rows", "infer_input_shape"]


_BYTES_PER_VALUE = 4  # float32 activations
_DEFAULT_SIDE = 32  # tried first when inferring a square input size
_MAX_SIDE = 4096


# ----------------------------------------------------------------------------- shapes


def _check_input_shape(input_shape):
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise TypeError(
            f"`input_shape` must be a tuple such as (C, H, W) without the batch dimension, got {input_shape!r}"
        )
    out = []
    for v in input_shape:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"`input_shape` must hold positive ints, got {tuple(input_shape)!r}")
        out.append(int(v))
    if len(out) not in (1, 3):
        raise ValueError(
            f"`input_shape` must be (C, H, W) or (features,), without the batch dimension, got {tuple(out)!r}"
        )
    return tuple(out)


def _layer_output(i, layer, shape):
    """The output shape of ``layer`` for ``shape``, or ValueError naming ``input_shape``."""

    def bad(why):
        return ValueError(f"`input_shape` does not fit layer {i} ({layer!r}): {why}")

    spatial = (L.Conv2d, L._Pool, L.AdaptiveAvgPool2d, L.BatchNorm2d)
    if isinstance(layer, spatial) and len(shape) != 3:
        return None, bad(f"it needs a (C, H, W) input, got {shape}")
    if isinstance(layer, L.Conv2d) and shape[0] != layer.in_channels:
        return None, bad(f"its input has {shape[0]} channels, it expects in_channels={layer.in_channels}")
    if isinstance(layer, L.BatchNorm2d) and shape[0] != layer.num_features:
        return None, bad(f"its input has {shape[0]} channels, it expects num_features={layer.num_features}")
    if isinstance(layer, L.Linear) and shape != (layer.in_features,):
        return None, bad(f"its input has shape {shape}, it expects ({layer.in_features},)")
    out = tuple(int(s) for s in layer.output_shape(shape))
    if any(s < 1 for s in out):
        return None, bad(f"the output would be {out} for an input of {shape} (the input is too small)")
    return out, None


def _output_shapes(model, input_shape):
    shapes = []
    shape = input_shape
    for i, layer in enumerate(layers_of(model)):
        shape, err = _layer_output(i, layer, shape)
        if err is not None:
            return None, err
        shapes.append(shape)
    return shapes, None


def infer_input_shape(model):
    """A (C, H, W) input shape for a model that starts with ``Conv2d``.

    C is the first convolution's ``in_channels``. The size is square: 32 when
    that fits every layer (the zoo's size), else the smallest side that does
    (for example the one for which ``Flatten`` feeds the first ``Linear``
    exactly ``in_features`` values).

    Raises
    ------
    ValueError
        The first layer is not ``Conv2d``, or no square size up to 4096 fits.
    """
    layers = layers_of(model)
    if not layers or not isinstance(layers[0], L.Conv2d):
        first = type(layers[0]).__name__ if layers else "nothing (the model is empty)"
        raise ValueError(
            f"pass `input_shape` (C, H, W): it can only be inferred when the first layer is Conv2d, got {first}"
        )
    c = layers[0].in_channels
    for side in (_DEFAULT_SIDE, *range(1, _MAX_SIDE + 1)):
        shapes, err = _output_shapes(model, (c, side, side))
        if err is None:
            return (c, side, side)
    raise ValueError(f"pass `input_shape`: no square input of {c} channels up to {_MAX_SIDE} pixels fits the model")


# ----------------------------------------------------------------------------- per-layer costs


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def _adaptive_windows(size, out):
    """Window sizes of adaptive pooling from ``size`` to ``out`` (PyTorch's floor/ceil rule)."""
    return [-(-(i + 1) * size // out) - (i * size) // out for i in range(out)]


def _flops(layer, in_shape, out_shape):
    """Forward FLOPs per sample (see the module docstring), None for unknown layer types."""
    n_out = _numel(out_shape)
    if isinstance(layer, L.Conv2d):
        kh, kw = layer.kernel_size
        f = 2 * n_out * (layer.in_channels // layer.groups) * kh * kw
        return f + (n_out if layer.bias is not None else 0)
    if isinstance(layer, L.Linear):
        f = 2 * layer.in_features * layer.out_features
        return f + (layer.out_features if layer.bias is not None else 0)
    if isinstance(layer, L.MaxPool2d):
        return n_out * (layer.kernel_size[0] * layer.kernel_size[1] - 1)
    if isinstance(layer, L.AvgPool2d):
        return n_out * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, L.LPPool2d):
        return n_out * 2 * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, L.AdaptiveAvgPool2d):
        c, h, w = in_shape
        return c * sum(_adaptive_windows(h, out_shape[1])) * sum(_adaptive_windows(w, out_shape[2]))
    if isinstance(layer, L.BatchNorm2d):
        return 2 * n_out
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.GELU, L.SiLU, L.Tanh, L.Sigmoid)):
        return n_out
    if isinstance(layer, L.Softmax):
        return 3 * n_out
    if isinstance(layer, (L.Dropout, L.Flatten)):
        return 0
    return None


def _window(layer, in_shape):
    """``((k_eff_h, k_eff_w), (stride_h, stride_w))`` of a layer for the receptive field."""
    if isinstance(layer, L.AdaptiveAvgPool2d):
        # The largest window; the stride is exact when the output size divides the input size.
        osize = layer.resolved_size(in_shape[1:])
        k = tuple(max(_adaptive_windows(in_shape[1 + a], osize[a])) for a in range(2))
        s = tuple(max(1, in_shape[1 + a] // osize[a]) for a in range(2))
        return k, s
    if isinstance(layer, (L.Conv2d, L.MaxPool2d, L.AvgPool2d, L.LPPool2d)):
        d = getattr(layer, "dilation", (1, 1))
        k = tuple(d[a] * (layer.kernel_size[a] - 1) + 1 for a in range(2))
        return k, tuple(layer.stride)
    if isinstance(layer, L.Flatten) and len(in_shape) == 3:
        return (in_shape[1], in_shape[2]), (in_shape[1], in_shape[2])
    return (1, 1), (1, 1)


# ----------------------------------------------------------------------------- summary


def summary_rows(model, input_shape):
    """Per-layer description of ``model`` for inputs of ``input_shape``.

    Parameters
    ----------
    model : Sequential
    input_shape : tuple of int or None
        ``(C, H, W)`` (or ``(features,)`` for a model of Linear layers),
        without the batch dimension. None infers it (``infer_input_shape``).

    Returns
    -------
    list of dict
        One dict per layer, then a totals row (``index`` None, ``layer``
        ``"total"``). Keys: ``index``, ``layer`` (its repr), ``type``,
        ``output_shape``, ``params``, ``trainable``, ``frozen``, ``flops``
        (forward, per sample; None for a layer type without a FLOP rule),
        ``activation_bytes`` (float32 output, per sample), ``rf`` and
        ``jump`` (``(h, w)`` pairs; None for inputs without spatial axes).
        The totals row sums the counts, and holds the last layer's output
        shape, receptive field and jump, plus ``input_shape`` and
        ``inferred`` (whether the input shape was inferred).

    Raises
    ------
    ValueError
        ``input_shape`` does not fit a layer, or cannot be inferred.

    Examples
    --------
    >>> import striate as st
    >>> rows = summary_rows(st.zoo.lenet5(), (1, 32, 32))
    >>> rows[-1]["params"], rows[-1]["rf"], rows[-1]["jump"]
    (61706, (32, 32), (20, 20))
    """
    inferred = input_shape is None
    input_shape = infer_input_shape(model) if inferred else _check_input_shape(input_shape)
    shapes, err = _output_shapes(model, input_shape)
    if err is not None:
        raise err
    rows = []
    spatial = len(input_shape) == 3
    rf, jump = [1, 1], [1, 1]
    in_shape = input_shape
    for i, (layer, out_shape) in enumerate(zip(layers_of(model), shapes)):
        params = layer.parameters()
        n = sum(p.size for p in params)
        trainable = sum(p.size for p in params if p.trainable)
        if spatial:
            k, s = _window(layer, in_shape)
            for a in range(2):
                rf[a] += (k[a] - 1) * jump[a]
                jump[a] *= s[a]
        rows.append(
            {
                "index": i,
                "layer": repr(layer),
                "type": type(layer).__name__,
                "output_shape": out_shape,
                "params": n,
                "trainable": trainable,
                "frozen": n - trainable,
                "flops": _flops(layer, in_shape, out_shape),
                "activation_bytes": _numel(out_shape) * _BYTES_PER_VALUE,
                "rf": tuple(rf) if spatial else None,
                "jump": tuple(jump) if spatial else None,
            }
        )
        in_shape = out_shape
    flops = [r["flops"] for r in rows]
    rows.append(
        {
            "index": None,
            "layer": "total",
            "type": "",
            "output_shape": in_shape,
            "params": sum(r["params"] for r in rows),
            "trainable": sum(r["trainable"] for r in rows),
            "frozen": sum(r["frozen"] for r in rows),
            "flops": sum(f for f in flops if f is not None),
            "flops_complete": all(f is not None for f in flops),
            "activation_bytes": sum(r["activation_bytes"] for r in rows),
            "rf": tuple(rf) if spatial else None,
            "jump": tuple(jump) if spatial else None,
            "input_shape": input_shape,
            "inferred": inferred,
        }
    )
    return rows


def _si(v, unit=""):
    """``1234567 -> '1.23M'``: three significant digits with a K/M/G/T suffix."""
    if v is None:
        return "?"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}{unit}"
    return f"{v:g}{unit}"


def _bytes(n):
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n} B"


def _pair_text(p):
    if p is None:
        return "-"
    return f"{p[0]}" if p[0] == p[1] else f"{p[0]}x{p[1]}"


def _table(header, rows, align, totals=()):
    """Columns padded to their widest cell; ``align`` holds '<' or '>' per column.
    ``totals`` rows go after a closing rule."""
    widths = [max(len(str(r[c])) for r in [header, *rows, *totals]) for c in range(len(header))]

    def fmt(r):
        return "  ".join(f"{str(v):{a}{w}}" for v, a, w in zip(r, align, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [fmt(header), rule, *(fmt(r) for r in rows), rule, *(fmt(r) for r in totals)]


def summary(model, input_shape=None):
    """A printable table describing ``model`` layer by layer (see ``summary_rows``).

    Columns: index, layer, output shape, forward FLOPs (per sample),
    activation memory (float32 output, per sample), receptive field and jump
    (one number when equal along h and w, else ``h x w``), frozen parameters
    and parameters. Footer lines give the totals.

    Parameters
    ----------
    model : Sequential
    input_shape : tuple of int, optional
        ``(C, H, W)`` without the batch dimension; inferred when the first
        layer is ``Conv2d`` (see ``infer_input_shape``).

    Returns
    -------
    str

    Examples
    --------
    >>> import striate as st
    >>> print(summary(st.zoo.lenet5()).splitlines()[-4])
    total params: 61,706 (trainable 61,706, frozen 0)
    """
    rows = summary_rows(model, input_shape)
    total = rows[-1]
    header = ("#", "layer", "output shape", "FLOPs", "act. mem", "RF", "jump", "frozen", "params")
    body = [
        (
            str(r["index"]),
            r["layer"],
            str(r["output_shape"]),
            _si(r["flops"]),
            _bytes(r["activation_bytes"]),
            _pair_text(r["rf"]),
            _pair_text(r["jump"]),
            f"{r['frozen']:,}" if r["frozen"] else "",
            f"{r['params']:,}",
        )
        for r in rows[:-1]
    ]
    lines = _table(header, body, "<<<>>>>>>")
    shape_note = " (inferred)" if total["inferred"] else ""
    flops_note = "" if total["flops_complete"] else " (layers marked ? not counted)"
    lines.append(
        f"total params: {total['params']:,} (trainable {total['trainable']:,}, frozen {total['frozen']:,})"
    )
    lines.append(
        f"forward FLOPs per sample: {_si(total['flops'])} (a multiply-add is 2 FLOPs){flops_note}"
    )
    lines.append(f"activation memory per sample: {_bytes(total['activation_bytes'])} (float32 outputs)")
    rf = f"receptive field {_pair_text(total['rf'])}, jump {_pair_text(total['jump'])}; " if total["rf"] else ""
    lines.append(f"{rf}input shape {total['input_shape']}{shape_note}")
    return "\n".join(lines)
