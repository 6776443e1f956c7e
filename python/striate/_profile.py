"""Timing one training step layer by layer: ``profile`` and its ``ProfileResult``.

``profile`` runs ``striate.training.train_step`` (the step of ``fit``) through
a timed view of the model's layers and a timed loss, and reports per layer the
median forward and backward time, FLOPs and GFLOP/s. ``_Preserved`` saves and
restores everything a step changes (parameters, BatchNorm statistics, modes,
gradients, Dropout generators). Public as ``striate.introspect.profile`` and
``Sequential.profile``; it sits below ``Sequential``, which delegates here.
A container (a ``Residual`` block, a nested ``Sequential``) is timed as one
row, with the FLOPs of everything inside it.

Not here: the FLOP rules and tables (``striate._summary``), the zoo benchmark
and the PyTorch comparison (``striate.introspect``).
"""

from __future__ import annotations

import time

import numpy as np

from . import _args, _config
from . import layers as L
from ._summary import _flops, _label, _numel, _output_shapes, _table, container_costs
from .layers.chain import backward_chain, first_trainable, forward_chain, layers_of, leaves
from .losses import get_loss
from .training.step import train_step

__all__ = ["ProfileResult", "profile"]


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


def _container_backward_flops(layer, in_shape, n, needs_dx):
    """Backward FLOPs of a container on a batch of ``n``: its layers' estimates, plus one add per
    Residual output element when the input gradient is needed. Without ``needs_dx`` (the first
    trainable layer of the step) the layers up to its first trainable one compute no input gradient."""
    inner, adds = container_costs(layer, in_shape)
    first = next((k for k, (l, *_) in enumerate(inner) if any(p.trainable for p in l.parameters())), len(inner))
    total = 0
    for k, (leaf, _, out_shape, f) in enumerate(inner):
        if f is None:
            return None
        if needs_dx or k >= first:
            total += _backward_flops(leaf, f * n, (n,) + out_shape, needs_dx or k > first)
    return total + (n * sum(adds) if needs_dx else 0)


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


def _default_targets(out_shape, seed=0):
    """Seeded random labels for outputs of shape ``(N, classes)``."""
    return np.random.default_rng(seed).integers(0, out_shape[1], size=out_shape[0])


class _Preserved:
    """Saves a model's state, modes, gradients and Dropout generators; restores them on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        layers = leaves(self.model)
        self.state = self.model.state_dict()
        self.modes = [l.training for l in layers]
        self.grads = [(p, p.grad) for p in self.model.parameters()]
        self.rngs = [(l, l.rng) for l in layers if isinstance(l, L.Dropout)]
        for k, (l, _) in enumerate(self.rngs):
            l.set_rng(np.random.default_rng(k))
        return self

    def __exit__(self, *exc):
        self.model.load_state_dict(self.state)
        for l, mode in zip(leaves(self.model), self.modes):
            l.train(mode)
        for p, g in self.grads:
            p.grad = g
        for l, g in self.rngs:
            l.set_rng(g)
        return False




class _TimedLayers:
    """The layers of a model, timed one by one, behind the model protocol ``train_step`` needs.

    Forward and backward go through ``striate.layers.chain`` like
    ``Sequential``'s; each layer call is timed with ``time.perf_counter`` and
    kept when ``keep`` is set (after the warm-up).
    """

    def __init__(self, layers):
        self.layers = layers
        self.fwd = [[] for _ in layers]
        self.bwd = [[] for _ in layers]
        self.keep = False

    def _call(self, i, layer, value, backward):
        t0 = time.perf_counter()
        out = layer.backward(value) if backward else layer(value)
        if self.keep:
            (self.bwd if backward else self.fwd)[i].append(time.perf_counter() - t0)
        return out

    def __call__(self, x):
        return forward_chain(self.layers, x, self._call)

    def backward(self, dloss, input_grad=True):
        return backward_chain(self.layers, dloss, input_grad, self._call)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]


class _TimedLoss:
    """A loss whose value and gradient are timed together, one sample per step."""

    def __init__(self, loss_fn, timed_layers):
        self.loss_fn, self.owner = loss_fn, timed_layers
        self.samples = []
        self._t = 0.0

    def __call__(self, out, y):
        t0 = time.perf_counter()
        value = self.loss_fn(out, y)
        self._t = time.perf_counter() - t0
        return value

    def backward(self):
        t0 = time.perf_counter()
        d = self.loss_fn.backward()
        if self.owner.keep:
            self.samples.append(self._t + time.perf_counter() - t0)
        return d


def profile(model, x, y=None, repeat=5, *, loss="cross_entropy", warmup=1):
    """Time each layer's forward and backward in one training step.

    The step is the one ``fit`` takes (``striate.training.train_step``, run
    without an optimizer): training mode, forward through every layer, the
    loss, then backward down to the first layer with trainable parameters
    (which does not compute its input gradient). Each layer is
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
    _args.int_at_least(repeat, "repeat", 1)
    _args.int_at_least(warmup, "warmup", 0)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
        raise TypeError(
            f"`x` must be a float32 numpy.ndarray with a batch dimension, got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"`x` must hold at least one sample, got shape {x.shape}")
    loss_fn = get_loss(loss)
    layers = layers_of(model)
    stop = first_trainable(layers)
    rows_info, err = _output_shapes(model, tuple(x.shape[1:]))
    if err is not None:
        raise ValueError(f"`x` of shape {x.shape} does not fit the model: {err}") from None
    if y is None:
        y = _default_targets((x.shape[0],) + rows_info[-1])
    timed = _TimedLayers(layers)
    timed_loss = _TimedLoss(loss_fn, timed)
    with _Preserved(model):
        model.train()
        for r in range(warmup + repeat):
            timed.keep = r >= warmup
            train_step(timed, x, y, timed_loss)
        threads = _config.get_num_threads()
    fwd, bwd, loss_t = timed.fwd, timed.bwd, timed_loss.samples

    n = x.shape[0]
    rows = []
    in_shape = tuple(x.shape[1:])
    for i, layer in enumerate(layers):
        out_shape = rows_info[i]
        f = _flops(layer, in_shape, out_shape)
        f = None if f is None else f * n
        if i < stop:
            b = 0
        elif isinstance(layer, L._Container):
            b = _container_backward_flops(layer, in_shape, n, i > stop)
        else:
            b = _backward_flops(layer, f, (n,) + out_shape, i > stop)
        fm, bm = _median_ms(fwd[i]), _median_ms(bwd[i])
        work = None if f is None or b is None else f + b
        rows.append(
            {
                "index": i,
                "layer": _label(layer),
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
