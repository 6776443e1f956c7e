"""Describing a model for one input shape: the summary table, FLOP counts and receptive fields.

``summary`` / ``summary_rows`` describe a model (``Sequential`` or anything
holding layers) for one input shape: per layer the output shape, parameters
(trainable and frozen), forward FLOPs, activation memory and the receptive
field with its jump (product of strides). A container (a nested
``Sequential``, a ``Residual``) gets a row with its totals, followed by the
rows of the layers inside it, indented. ``infer_input_shape`` guesses the
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
Dropout, Flatten    0 (Identity too)
Sequential          the sum over its layers
Residual            body + shortcut + N_out (the addition)
==================  ==============================================================

N_out is the number of output elements. Receptive fields follow the standard
recurrence on each axis, ``rf += (k_eff - 1) * jump; jump *= stride`` with
``k_eff = dilation * (k - 1) + 1``; padding does not change the size (so it can
exceed the input). Flatten acts as one window over the whole feature map, so
everything after it sees the whole input. A Residual's field is the larger of
its two branches' (the identity shortcut keeps the field it is given), axis
by axis, and so is its jump.

A container's activation memory is that of every output inside it (for a
Residual, also the sum); the totals add the top-level rows only.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import layers as L
from .layers.chain import leaves, layers_of

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


class _Misfit(Exception):
    """An input shape that does not fit a layer; ``.error`` is the ValueError to report."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _leaf_output(name, layer, shape):
    """The output shape of a (non-container) ``layer`` for ``shape``; raises ``_Misfit`` naming ``input_shape``."""

    def bad(why):
        return _Misfit(ValueError(f"`input_shape` does not fit layer {name} ({layer!r}): {why}"))

    spatial = (L.Conv2d, L._Pool, L.AdaptiveAvgPool2d, L.BatchNorm2d)
    if isinstance(layer, spatial) and len(shape) != 3:
        raise bad(f"it needs a (C, H, W) input, got {shape}")
    if isinstance(layer, L.Conv2d) and shape[0] != layer.in_channels:
        raise bad(f"its input has {shape[0]} channels, it expects in_channels={layer.in_channels}")
    if isinstance(layer, L.BatchNorm2d) and shape[0] != layer.num_features:
        raise bad(f"its input has {shape[0]} channels, it expects num_features={layer.num_features}")
    if isinstance(layer, L.Linear) and shape != (layer.in_features,):
        raise bad(f"its input has shape {shape}, it expects ({layer.in_features},)")
    out = tuple(int(s) for s in layer.output_shape(shape))
    if any(s < 1 for s in out):
        raise bad(f"the output would be {out} for an input of {shape} (the input is too small)")
    return out


def _label(layer):
    """The text of a layer's row: its repr, or a one-line description for a container."""
    if isinstance(layer, L.Residual):
        return "Residual (" + ("identity" if layer.shortcut is None else "projection") + " shortcut)"
    if isinstance(layer, L._Container):
        return f"{type(layer).__name__} ({len(layer.children())} layers)"
    return repr(layer)


def _merge_cost(a, b):
    return None if a is None or b is None else a + b


class _Walk:
    """One pass over a model for one input shape, down into its containers.

    ``node`` appends a row for a layer and, for a container, the rows of the
    layers inside it; ``leaves`` collects ``(layer, in_shape, out_shape,
    flops)`` of every non-container layer and ``adds`` the element count of
    every Residual sum (for the profiler's backward estimate).
    """

    def __init__(self, spatial):
        self.spatial = spatial
        self.rows = []
        self.leaves = []
        self.adds = []

    def node(self, layer, index, depth, in_shape, rf, jump):
        """Describe ``layer`` at ``index``; return ``(row, out_shape, rf, jump)``."""
        row = {"index": index, "depth": depth, "layer": _label(layer), "type": type(layer).__name__}
        self.rows.append(row)
        name = str(index)
        if isinstance(layer, L.Residual):
            out, rf, jump, flops, act = self._residual(layer, name, depth, in_shape, rf, jump)
        elif isinstance(layer, L._Container) and layer._sequence() is not None:
            out, rf, jump, flops, act = self._chain(layer, name, depth, in_shape, rf, jump)
        else:
            out = _leaf_output(name, layer, in_shape)
            flops = _flops(layer, in_shape, out)
            k, s = _window(layer, in_shape) if self.spatial else ((1, 1), (1, 1))
            rf = tuple(rf[a] + (k[a] - 1) * jump[a] for a in range(2))
            jump = tuple(jump[a] * s[a] for a in range(2))
            act = _numel(out) * _BYTES_PER_VALUE
            self.leaves.append((layer, in_shape, out, flops))
        params = layer.parameters()
        n = sum(p.size for p in params)
        trainable = sum(p.size for p in params if p.trainable)
        row.update(
            output_shape=out, params=n, trainable=trainable, frozen=n - trainable, flops=flops,
            activation_bytes=act, rf=rf if self.spatial else None, jump=jump if self.spatial else None,
        )
        return row, out, rf, jump

    def _chain(self, layer, name, depth, shape, rf, jump):
        flops, act = 0, 0
        for j, child in enumerate(layer._sequence()):
            row, shape, rf, jump = self.node(child, f"{name}.{j}", depth + 1, shape, rf, jump)
            flops = _merge_cost(flops, row["flops"])
            act += row["activation_bytes"]
        return shape, rf, jump, flops, act

    def _residual(self, layer, name, depth, in_shape, rf, jump):
        body, out, b_rf, b_jump = self.node(layer.body, f"{name}.body", depth + 1, in_shape, rf, jump)
        flops, act = body["flops"], body["activation_bytes"]
        s_out, s_rf, s_jump = in_shape, rf, jump
        if layer.shortcut is not None:
            short, s_out, s_rf, s_jump = self.node(layer.shortcut, f"{name}.shortcut", depth + 1, in_shape, rf, jump)
            flops, act = _merge_cost(flops, short["flops"]), act + short["activation_bytes"]
        if s_out != out:
            what = "the identity shortcut" if layer.shortcut is None else "its shortcut"
            raise _Misfit(ValueError(
                f"`input_shape` does not fit layer {name} (Residual): its body gives {out} but {what} gives {s_out}"
            ))
        self.adds.append(_numel(out))
        flops = _merge_cost(flops, _numel(out))
        act += _numel(out) * _BYTES_PER_VALUE
        rf = tuple(max(b_rf[a], s_rf[a]) for a in range(2))
        jump = tuple(max(b_jump[a], s_jump[a]) for a in range(2))
        return out, rf, jump, flops, act


def _walk(model, input_shape):
    """``(_Walk, top-level output shapes)`` for ``model`` on ``input_shape``; raises ``_Misfit``."""
    walk = _Walk(len(input_shape) == 3)
    shape, rf, jump = input_shape, (1, 1), (1, 1)
    shapes = []
    for i, layer in enumerate(layers_of(model)):
        _, shape, rf, jump = walk.node(layer, i, 0, shape, rf, jump)
        shapes.append(shape)
    return walk, shapes


def _output_shapes(model, input_shape):
    """``(per top-level layer output shapes, None)``, or ``(None, ValueError)`` when the input does not fit."""
    try:
        return _walk(model, input_shape)[1], None
    except _Misfit as misfit:
        return None, misfit.error


def container_costs(layer, in_shape):
    """``(leaves, adds)`` of a container on ``in_shape``: see ``_Walk``."""
    walk = _Walk(len(in_shape) == 3)
    walk.node(layer, 0, 0, tuple(in_shape), (1, 1), (1, 1))
    return walk.leaves, walk.adds


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
    layers = leaves(model)
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
    if isinstance(layer, L._Container):
        walk = _Walk(len(in_shape) == 3)
        return walk.node(layer, 0, 0, tuple(in_shape), (1, 1), (1, 1))[0]["flops"]
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
    if isinstance(layer, (L.Dropout, L.Flatten, L.Identity)):
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
        ``"total"``). A container's row (a nested ``Sequential`` or a
        ``Residual``) holds its totals and is followed by the rows of the
        layers inside it, whose ``index`` is their dotted name (``"3.body.0"``)
        and ``depth`` how deeply they are nested (0 at the top level).
        Keys: ``index``, ``depth``, ``layer`` (its repr, or a description of a container), ``type``,
        ``output_shape``, ``params``, ``trainable``, ``frozen``, ``flops``
        (forward, per sample; None for a layer type without a FLOP rule),
        ``activation_bytes`` (float32 output, per sample), ``rf`` and
        ``jump`` (``(h, w)`` pairs; None for inputs without spatial axes).
        The totals row sums the counts of the top-level rows, and holds the last layer's output
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
    try:
        walk, shapes = _walk(model, input_shape)
    except _Misfit as misfit:
        raise misfit.error from None
    rows = walk.rows
    top = [r for r in rows if r["depth"] == 0]
    in_shape = shapes[-1] if shapes else input_shape
    rf = top[-1]["rf"] if top else ((1, 1) if len(input_shape) == 3 else None)
    jump = top[-1]["jump"] if top else ((1, 1) if len(input_shape) == 3 else None)
    flops = [r["flops"] for r in top]
    rows.append(
        {
            "index": None,
            "depth": 0,
            "layer": "total",
            "type": "",
            "output_shape": in_shape,
            "params": sum(r["params"] for r in top),
            "trainable": sum(r["trainable"] for r in top),
            "frozen": sum(r["frozen"] for r in top),
            "flops": sum(f for f in flops if f is not None),
            "flops_complete": all(f is not None for f in flops),
            "activation_bytes": sum(r["activation_bytes"] for r in top),
            "rf": rf,
            "jump": jump,
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
            "  " * r["depth"] + r["layer"],
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
