"""Looking inside a model: a summary table, a per-layer profile, the zoo benchmark and a layer-health callback.

``summary`` / ``summary_rows`` describe a ``Sequential`` for one input shape:
per layer the output shape, parameters (trainable and frozen), forward FLOPs,
activation memory and the receptive field with its jump (product of strides);
the FLOP conventions are listed in ``striate._summary``. ``profile`` times each
layer's forward and backward in one training step on real data (the step of
``fit``), and ``bench_zoo`` does so for the zoo models (next to PyTorch when
it is importable, ``torch_layer_times``). ``LayerHealth`` is a ``fit``
callback recording gradient norms and dead ReLUs per epoch.

This module is the public face: ``summary`` lives in ``striate._summary`` and
``profile`` in ``striate._profile`` (below ``Sequential``, whose ``summary`` and
``profile`` methods delegate there), ``LayerHealth`` in
``striate.training.callbacks``; the zoo benchmark, which builds zoo models,
lives here, above ``Sequential``.

Deliberately not here: pictures (``striate.viz``), gradient checking
(``striate.gradcheck``), command-line parsing (``striate._cli_introspect``), and
any change to a model: every function here leaves the model's parameters,
gradients and modes as it found them (``profile`` overwrites ``.grad``, as a
training step would).
"""

from __future__ import annotations

import time

import numpy as np

from . import _args, _config, zoo
from . import layers as L
from ._profile import ProfileResult, _Preserved, profile  # noqa: F401  (re-exported)
from ._summary import infer_input_shape, summary, summary_rows  # noqa: F401  (re-exported)
from .layers.chain import first_trainable, layers_of
from .training.callbacks import LayerHealth, LayerHealthWarning  # noqa: F401  (re-exported)

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


ZOO_INPUTS = {"lenet5": (1, 32, 32), "typical_cnn": (3, 32, 32), "resnet20": (3, 32, 32)}


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
    elif isinstance(layer, L.LeakyReLU):
        return nn.LeakyReLU(layer.negative_slope)
    elif isinstance(layer, L.GELU):
        return nn.GELU(approximate=layer.approximate)
    else:
        simple = {L.ReLU: nn.ReLU, L.Tanh: nn.Tanh, L.Sigmoid: nn.Sigmoid, L.SiLU: nn.SiLU, L.Flatten: nn.Flatten}
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
    layers = layers_of(model)
    stop = first_trainable(layers)
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
    if torch not in ("auto", False):
        raise ValueError(f"`torch` must be 'auto' or False, got {torch!r}")
    _args.int_at_least(batch_size, "batch_size", 1)
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
            model = zoo.lenet5() if name == "lenet5" else zoo.MODELS[name](in_channels=shape[0])
            x = gen.random((batch_size,) + shape, dtype=np.float32)
            y = gen.integers(0, 10, size=batch_size)
            prof = profile(model, x, y, repeat=repeat)
            torch_ms = torch_layer_times(model, x, repeat=repeat) if torch_version is not None else None
            results[name] = (prof, torch_ms)
    finally:
        _config._rng = saved_rng
    return BenchReport(results, torch_version, note)
