"""Looking inside a model: a summary table, a per-layer profile and a layer-health callback.

``summary`` / ``summary_rows`` describe a ``Sequential`` for one input shape:
per layer the output shape, parameters (trainable and frozen), forward FLOPs,
activation memory and the receptive field with its jump (product of strides).
``profile`` times each layer's forward and backward on real data, and
``bench_zoo`` does so for the zoo models (next to PyTorch when it is
importable). ``LayerHealth`` is a ``fit`` callback recording gradient norms and
dead ReLUs per epoch.

Deliberately not here: pictures (``striate.viz``), gradient checking
(``striate.gradcheck``), command-line parsing (``striate._cli_introspect``), and
any change to a model: every function here leaves the model's parameters,
gradients and modes as it found them (``profile`` overwrites ``.grad``, as a
training step would).

FLOP conventions (forward, per sample; a multiply-add is 2 FLOPs):

==================  ==============================================================
Conv2d              2 * N_out * (C_in / groups) * kh * kw, + N_out with a bias
Linear              2 * in * out, + out with a bias
MaxPool2d           N_out * (kh * kw - 1) comparisons
AvgPool2d           N_out * kh * kw (kh * kw - 1 adds and one divide per output)
LPPool2d            N_out * 2 * kh * kw (a power per element, adds, one root)
AdaptiveAvgPool2d   the sum of all window sizes (adds and one divide per output)
BatchNorm2d         2 per element (inference: one multiply-add after folding)
ReLU/Tanh/Sigmoid   1 per element
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

import math
import numbers
import warnings

import numpy as np

from . import layers as L

__all__ = [
    "summary",
    "summary_rows",
    "infer_input_shape",
    "profile",
    "ProfileResult",
    "bench_zoo",
    "BenchReport",
    "torch_layer_times",
    "LayerHealth",
    "LayerHealthWarning",
]

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


def _layers(model):
    return list(model.layers) if hasattr(model, "layers") else list(model)


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
    for i, layer in enumerate(_layers(model)):
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
    layers = _layers(model)
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
    if isinstance(layer, (L.ReLU, L.Tanh, L.Sigmoid)):
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
        k = tuple(max(_adaptive_windows(in_shape[1 + a], layer.output_size[a])) for a in range(2))
        s = tuple(max(1, in_shape[1 + a] // layer.output_size[a]) for a in range(2))
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
    for i, (layer, out_shape) in enumerate(zip(_layers(model), shapes)):
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


# ----------------------------------------------------------------------------- profile


def _backward_flops(layer, fwd_flops, out_shape, needs_dx):
    """Approximate backward FLOPs: a conv/linear costs one forward's multiply-adds per
    gradient it computes (dx, dweight), plus N_out for the bias; other layers one forward."""
    if fwd_flops is None:
        return None
    if isinstance(layer, (L.Conv2d, L.Linear)):
        n_bias = _numel(out_shape) if layer.bias is not None else 0
        mac = fwd_flops - n_bias
        grads = int(needs_dx) + int(layer.weight.trainable)
        bias = n_bias if layer.bias is not None and layer.bias.trainable else 0
        return grads * mac + bias
    return fwd_flops if needs_dx else 0


class ProfileResult:
    """What ``profile`` measured.

    Attributes
    ----------
    rows : list of dict
        One per layer, then a totals row (``index`` None). Keys: ``index``,
        ``layer``, ``forward_ms``, ``backward_ms`` (medians over the repeats;
        0 for layers before the first trainable one, whose backward a
        training step skips), ``flops`` (forward, whole batch), ``backward_flops``
        (approximate), ``gflops`` ((forward + backward FLOPs) / time, per
        second, in GFLOP/s; None without a FLOP count or time) and ``share``
        (the layer's fraction of the summed step time).
    batch_size, repeat, threads : int
    loss_ms : float
        Median time of the loss and its gradient (not part of ``share``).
    """

    def __init__(self, rows, batch_size, repeat, threads, loss_ms):
        self.rows = rows
        self.batch_size = batch_size
        self.repeat = repeat
        self.threads = threads
        self.loss_ms = loss_ms

    @property
    def total(self):
        return self.rows[-1]

    def table(self, extra=None):
        """The rows as text; ``extra`` is an optional ``(title, [cell per layer], total cell)``."""
        header = ["#", "layer", "fwd ms", "bwd ms", "GFLOP/s", "share"]
        align = "<<>>>>"
        if extra is not None:
            header.append(extra[0])
            align += ">"
        body = []
        for k, r in enumerate(self.rows):
            cells = [
                "" if r["index"] is None else str(r["index"]),
                r["layer"],
                f"{r['forward_ms']:.3f}",
                f"{r['backward_ms']:.3f}",
                "-" if r["gflops"] is None else f"{r['gflops']:.2f}",
                f"{100 * r['share']:.1f}%",
            ]
            if extra is not None:
                cells.append(extra[1][k] if r["index"] is not None else extra[2])
            body.append(cells)
        lines = _table(header, body[:-1], align, totals=body[-1:])
        lines.append(
            f"batch {self.batch_size}, {self.threads} threads, median of {self.repeat}; "
            f"loss {self.loss_ms:.3f} ms not included"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        t = self.total
        return f"ProfileResult(layers={len(self.rows) - 1}, step_ms={t['forward_ms'] + t['backward_ms']:.3f})"


def _median_ms(samples):
    return float(np.median(samples)) * 1e3 if samples else 0.0


def _default_targets(out, seed=0):
    return np.random.default_rng(seed).integers(0, out.shape[1], size=out.shape[0])


def _first_trainable(layers):
    return next((i for i, l in enumerate(layers) if any(p.trainable for p in l.parameters())), len(layers))


class _Preserved:
    """Saves a model's state, modes, gradients and Dropout generators; restores them on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        layers = _layers(self.model)
        self.state = self.model.state_dict()
        self.modes = [l.training for l in layers]
        self.grads = [(p, p.grad) for p in self.model.parameters()]
        self.rngs = [(l, l.rng) for l in layers if isinstance(l, L.Dropout)]
        for k, (l, _) in enumerate(self.rngs):
            l.set_rng(np.random.default_rng(k))
        return self

    def __exit__(self, *exc):
        self.model.load_state_dict(self.state)
        for l, mode in zip(_layers(self.model), self.modes):
            l.train(mode)
        for p, g in self.grads:
            p.grad = g
        for l, g in self.rngs:
            l.set_rng(g)
        return False


def profile(model, x, y=None, repeat=5, *, loss="cross_entropy", warmup=1):
    """Time each layer's forward and backward in one training step.

    The step is the one ``fit`` takes: training mode, forward through every
    layer, the loss, then backward down to the first layer with trainable
    parameters (which does not compute its input gradient). Each layer is
    timed on its own with ``time.perf_counter``; the median of ``repeat``
    steps after ``warmup`` untimed ones is reported. The model is left as it
    was (parameters, BatchNorm statistics, modes, gradients, Dropout
    generators), and striate's global RNG is not used.

    Parameters
    ----------
    model : Sequential
    x : ndarray, float32, shape (N, C, H, W)
        One batch.
    y : ndarray, optional
        Targets for ``loss``; default random labels (seeded) for the model's outputs.
    repeat : int, default 5
    loss : str or striate.losses.Loss, default "cross_entropy"
    warmup : int, default 1

    Returns
    -------
    ProfileResult
        ``.rows`` (per layer and a totals row) and ``str(result)``, a table.

    Examples
    --------
    >>> import numpy as np, striate as st
    >>> x = np.zeros((8, 1, 32, 32), np.float32)
    >>> result = profile(st.zoo.lenet5(), x, repeat=1)
    >>> len(result.rows), result.rows[0]["layer"]
    (13, 'Conv2d(1, 6, 5)')
    """
    import time

    from .losses import get_loss

    for name, v, lo in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}, got {v!r}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
        raise TypeError(
            f"`x` must be a float32 numpy.ndarray with a batch dimension, got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"`x` must hold at least one sample, got shape {x.shape}")
    loss_fn = get_loss(loss)
    layers = _layers(model)
    stop = _first_trainable(layers)
    rows_info, err = _output_shapes(model, tuple(x.shape[1:]))
    if err is not None:
        raise ValueError(f"`x` of shape {x.shape} does not fit the model: {err}") from None
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
    loss_t = []
    from . import _config

    with _Preserved(model):
        model.train()
        for r in range(warmup + repeat):
            keep = r >= warmup
            a = x
            for i, layer in enumerate(layers):
                t0 = time.perf_counter()
                a = layer(a)
                if keep:
                    fwd[i].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if y is None:
                y = _default_targets(a)
            loss_fn(a, y)
            dy = loss_fn.backward()
            if keep:
                loss_t.append(time.perf_counter() - t0)
            for i in range(len(layers) - 1, stop - 1, -1):
                layer = layers[i]
                saved = layer.needs_input_grad
                layer.needs_input_grad = i > stop
                try:
                    t0 = time.perf_counter()
                    dy = layer.backward(dy)
                    dt = time.perf_counter() - t0
                finally:
                    layer.needs_input_grad = saved
                if keep:
                    bwd[i].append(dt)
        threads = _config.get_num_threads()

    n = x.shape[0]
    rows = []
    in_shape = tuple(x.shape[1:])
    for i, layer in enumerate(layers):
        out_shape = rows_info[i]
        f = _flops(layer, in_shape, out_shape)
        f = None if f is None else f * n
        b = _backward_flops(layer, f, (n,) + out_shape, i > stop) if i >= stop else 0
        fm, bm = _median_ms(fwd[i]), _median_ms(bwd[i])
        work = None if f is None or b is None else f + b
        rows.append(
            {
                "index": i,
                "layer": repr(layer),
                "forward_ms": fm,
                "backward_ms": bm,
                "flops": f,
                "backward_flops": b,
                "gflops": work / ((fm + bm) * 1e6) if work and fm + bm > 0 else None,
            }
        )
        in_shape = out_shape
    step = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    for r in rows:
        r["share"] = (r["forward_ms"] + r["backward_ms"]) / step if step > 0 else 0.0
    fl = [r["flops"] for r in rows]
    bl = [r["backward_flops"] for r in rows]
    tf = sum(v for v in fl if v is not None)
    tb = sum(v for v in bl if v is not None)
    rows.append(
        {
            "index": None,
            "layer": "total",
            "forward_ms": sum(r["forward_ms"] for r in rows),
            "backward_ms": sum(r["backward_ms"] for r in rows),
            "flops": tf,
            "backward_flops": tb,
            "gflops": (tf + tb) / (step * 1e6) if step > 0 else None,
            "share": 1.0,
        }
    )
    return ProfileResult(rows, n, repeat, threads, _median_ms(loss_t))


# ----------------------------------------------------------------------------- bench


ZOO_INPUTS = {"lenet5": (1, 32, 32), "typical_cnn": (3, 32, 32)}


def _torch_module(layer, torch):
    """The ``torch.nn`` module equivalent to a striate layer (weights copied), or None."""
    nn = torch.nn
    if isinstance(layer, L.Conv2d):
        m = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None,
        )
    elif isinstance(layer, L.Linear):
        m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, L.BatchNorm2d):
        m = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    elif isinstance(layer, L.MaxPool2d):
        m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode)
    elif isinstance(layer, L.AvgPool2d):
        m = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad)
    elif isinstance(layer, L.LPPool2d):
        m = nn.LPPool2d(layer.norm_type, layer.kernel_size, layer.stride, layer.ceil_mode)
    elif isinstance(layer, L.AdaptiveAvgPool2d):
        m = nn.AdaptiveAvgPool2d(layer.output_size)
    elif isinstance(layer, L.Dropout):
        m = nn.Dropout(layer.p)
    elif isinstance(layer, L.Softmax):
        m = nn.Softmax(dim=layer.axis)
    else:
        simple = {L.ReLU: nn.ReLU, L.Tanh: nn.Tanh, L.Sigmoid: nn.Sigmoid, L.Flatten: nn.Flatten}
        cls = simple.get(type(layer))
        return None if cls is None else cls()
    with torch.no_grad():
        for name, arr in layer.state_dict().items():
            getattr(m, name).copy_(torch.from_numpy(np.array(arr)))
    return m


def torch_layer_times(model, x, repeat=5, warmup=1):
    """Per-layer forward + backward milliseconds of the same step in PyTorch.

    Each striate layer is rebuilt as its ``torch.nn`` module (same weights)
    and timed on its own, on the input the striate model gives it, like
    ``profile`` does. Returns a list with one float per layer (None for a
    layer without a torch equivalent), or None when torch is not importable.
    torch uses striate's thread count for the measurement.
    """
    try:
        import torch
    except ImportError:
        return None
    import time

    from . import _config

    layers = _layers(model)
    stop = _first_trainable(layers)
    mods = [_torch_module(l, torch) for l in layers]
    inputs = []
    with _Preserved(model):
        model.eval()
        a = x
        for i, (layer, mod) in enumerate(zip(layers, mods)):
            inputs.append(a)
            a = layer(a)
            if mod is not None:  # validate before timing: the torch module computes the same thing
                mod.eval()
                with torch.no_grad():
                    ref = mod(torch.from_numpy(np.ascontiguousarray(inputs[-1]))).numpy()
                if ref.shape != a.shape or not np.allclose(ref, a, rtol=1e-3, atol=1e-4):
                    raise RuntimeError(f"torch_layer_times: torch's {mod} disagrees with striate's layer {i} ({layer!r})")
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(_config.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    times = []
    try:
        for i, (mod, inp) in enumerate(zip(mods, inputs)):
            if mod is None or i < stop:
                times.append(None if mod is None else 0.0)
                continue
            mod.train()
            xt = torch.from_numpy(np.ascontiguousarray(inp))
            samples = []
            for r in range(warmup + repeat):
                xin = xt.detach().requires_grad_(i > stop)
                t0 = time.perf_counter()
                out = mod(xin)
                t1 = time.perf_counter()
                dy = torch.randn(out.shape, generator=gen)
                t2 = time.perf_counter()
                if out.requires_grad:
                    out.backward(dy)
                t3 = time.perf_counter()
                if r >= warmup:
                    samples.append((t1 - t0) + (t3 - t2))
            times.append(float(np.median(samples)) * 1e3)
    finally:
        torch.set_num_threads(saved_threads)
    return times


class BenchReport:
    """``bench_zoo``'s result: ``.results[name] = (ProfileResult, torch ms per layer or None)``."""

    def __init__(self, results, torch_version=None, torch_note="PyTorch comparison off"):
        self.results = results
        self.torch_version = torch_version
        self.torch_note = torch_note

    def __str__(self):
        parts = []
        for name, (prof, torch_ms) in self.results.items():
            parts.append(f"== {name}: input {ZOO_INPUTS.get(name, '?')}, one training step")
            extra = None
            if torch_ms is not None:
                cells = ["-" if t is None else f"{t:.3f}" for t in torch_ms]
                total = sum(t for t in torch_ms if t is not None)
                extra = ("torch ms", cells, f"{total:.3f}")
            parts.append(prof.table(extra))
        if self.torch_version is not None:
            parts.append(f"torch {self.torch_version}: forward + backward per layer, same inputs and weights")
        else:
            parts.append(self.torch_note)
        return "\n".join(parts)


def bench_zoo(models=("lenet5", "typical_cnn"), batch_size=64, repeat=5, *, torch="auto", seed=0):
    """Profile the zoo models on a random batch, next to PyTorch when it is importable.

    Parameters
    ----------
    models : sequence of str, default ("lenet5", "typical_cnn")
    batch_size : int, default 64
    repeat : int, default 5
    torch : {"auto", False}
        "auto" compares with PyTorch when it is importable; False never does.
    seed : int, default 0
        Seeds the weights (through a local generator; the global RNG is restored) and the batch.

    Returns
    -------
    BenchReport
        ``str(report)`` is the table ``striate bench`` prints.
    """
    from . import _config, zoo

    if torch not in ("auto", False):
        raise ValueError(f"`torch` must be 'auto' or False, got {torch!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if isinstance(models, str):
        models = (models,)
    unknown = [m for m in models if m not in ZOO_INPUTS]
    if unknown or not models:
        raise ValueError(f"`models` must name zoo models among {sorted(ZOO_INPUTS)}, got {list(models)!r}")
    torch_version, note = None, "PyTorch comparison off"
    if torch == "auto":
        try:
            import torch as _torch

            torch_version = _torch.__version__
        except ImportError:
            note = "PyTorch is not installed: no comparison"
    results = {}
    gen = np.random.default_rng(seed)
    saved_rng = _config._rng
    try:
        for name in models:
            _config.seed(int(gen.integers(2**31)))
            shape = ZOO_INPUTS[name]
            model = zoo.lenet5() if name == "lenet5" else zoo.typical_cnn(in_channels=shape[0])
            x = gen.random((batch_size,) + shape, dtype=np.float32)
            y = gen.integers(0, 10, size=batch_size)
            prof = profile(model, x, y, repeat=repeat)
            torch_ms = torch_layer_times(model, x, repeat=repeat) if torch_version is not None else None
            results[name] = (prof, torch_ms)
    finally:
        _config._rng = saved_rng
    return BenchReport(results, torch_version, note)


# ----------------------------------------------------------------------------- layer health

try:  # training.Callback when training is available; the hooks below are all fit calls.
    from .training import Callback as _CallbackBase
except ImportError:  # pragma: no cover - only while striate.training is absent
    _CallbackBase = object


class LayerHealthWarning(UserWarning):
    """A layer's gradient exploded, or most of a ReLU's units are dead (see ``LayerHealth``)."""


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


class LayerHealth(_CallbackBase):
    """A ``fit`` callback that records, per epoch, gradient norms and dead ReLUs.

    For every trainable parameter it records ``grad_norm/<name>`` (for
    example ``grad_norm/0.weight``): the L2 norm of the parameter's gradient,
    averaged over the epoch's batches. For every ReLU layer ``i`` it records
    ``dead_relu/<i>``: the fraction of the layer's units that were zero for
    every training sample of the epoch. A unit is one element of the layer's
    per-sample output (a channel at one position), so a channel that is zero
    only at the border counts only its border units. The values go into the
    epoch's logs and into ``History.history`` under those keys.

    At the end of each epoch it warns (``LayerHealthWarning``) when a
    gradient norm exceeds ``max_grad_norm``, when it grew more than
    ``growth`` times over the previous epoch's, or when more than
    ``dead_fraction`` of a ReLU's units are dead.

    Parameters
    ----------
    max_grad_norm : float, default 1e3
    growth : float, default 10.0
    dead_fraction : float in (0, 1], default 0.9
    model : Sequential, optional
        Only needed when the hooks are called by hand; ``fit`` sets ``self.model``.

    Examples
    --------
    >>> import striate as st
    >>> from striate.datasets import load_digits
    >>> (x, y), _ = load_digits()
    >>> h = st.zoo.lenet5().fit(x[:256], y[:256], epochs=1, callbacks=[LayerHealth()], verbose=0)
    >>> [k for k in h.history if k.startswith("dead_relu")]
    ['dead_relu/1', 'dead_relu/4', 'dead_relu/8', 'dead_relu/10']
    """

    def __init__(self, max_grad_norm=1e3, growth=10.0, dead_fraction=0.9, *, model=None):
        self.max_grad_norm = _positive(max_grad_norm, "max_grad_norm")
        self.growth = _positive(growth, "growth")
        self.dead_fraction = _positive(dead_fraction, "dead_fraction")
        if self.dead_fraction > 1:
            raise ValueError(f"`dead_fraction` must be in (0, 1], got {dead_fraction!r}")
        if model is not None:
            self.model = model
        self._previous = {}
        self._reset()

    def _reset(self):
        self._norm_sum = {}
        self._batches = 0
        self._alive = {}

    def _watched(self):
        if getattr(self, "model", None) is None:
            raise RuntimeError("LayerHealth has no model: pass it to fit(callbacks=...) or as `model`")
        layers = _layers(self.model)
        params = [(f"{i}.{n}", p) for i, l in enumerate(layers) for n, p in l.named_parameters() if p.trainable]
        relus = [(i, l) for i, l in enumerate(layers) if isinstance(l, L.ReLU)]
        return params, relus

    # -- hooks -------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._watched()
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()

    def on_batch_end(self, step, logs=None):
        params, relus = self._watched()
        self._batches += 1
        for name, p in params:
            if p.grad is not None:
                g = p.grad.reshape(-1).astype(np.float64)
                self._norm_sum[name] = self._norm_sum.get(name, 0.0) + float(np.sqrt(g @ g))
        for i, layer in relus:
            y = getattr(layer, "_y", None)  # the output of the batch just trained on
            if y is None or y.ndim < 1 or y.shape[0] == 0:
                continue
            alive = (y > 0).any(axis=0)
            prev = self._alive.get(i)
            self._alive[i] = alive if prev is None or prev.shape != alive.shape else (prev | alive)

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        if self._batches:
            for name, total in self._norm_sum.items():
                values[f"grad_norm/{name}"] = total / self._batches
            for i, alive in self._alive.items():
                values[f"dead_relu/{i}"] = 1.0 - float(np.count_nonzero(alive)) / alive.size
        if logs is not None:
            logs.update(values)
        self._record(values)
        self._warn(epoch, values)
        self._previous = {k: v for k, v in values.items() if k.startswith("grad_norm/")}

    def _record(self, values):
        """Add the values to the run's History, unless fit already stored them from the logs."""
        history = getattr(getattr(self, "state", None), "history", None)
        if history is None or not hasattr(history, "history"):
            return
        done = len(getattr(history, "epoch", []))
        for key, v in values.items():
            if len(history.history.get(key, ())) < done:
                history.history.setdefault(key, []).append(float(v))

    def _warn(self, epoch, values):
        problems = []
        for key, v in values.items():
            if key.startswith("grad_norm/"):
                name = key[len("grad_norm/"):]
                before = self._previous.get(key)
                if not math.isfinite(v) or v > self.max_grad_norm:
                    problems.append(f"gradient of {name} exploded: norm {v:.3g} > max_grad_norm {self.max_grad_norm:g}")
                elif before is not None and before > 0 and v > self.growth * before:
                    problems.append(
                        f"gradient of {name} exploded: norm {v:.3g}, {v / before:.1f}x the previous epoch's {before:.3g}"
                    )
            elif v > self.dead_fraction:
                layer = key[len("dead_relu/"):]
                problems.append(f"ReLU {layer}: {100 * v:.1f}% of its units are dead (output 0 for every sample)")
        if problems:
            warnings.warn(f"epoch {epoch + 1}: " + "; ".join(problems), LayerHealthWarning, stacklevel=2)

    def state_dict(self):
        return {"previous": dict(self._previous)}

    def load_state_dict(self, state):
        self._previous = {str(k): float(v) for k, v in dict(state.get("previous", {})).items()}
