"""ONNX export of a chain of layers: ``export(model, path, input_shape)``.

Writes an ONNX graph (opset 17 by default) that onnxruntime runs with the
same results as striate, with a dynamic batch dimension. It reads the model
by duck typing (its layers, in order), so it sits below ``Sequential``, whose
``to_onnx`` calls it; ``striate.onnx_io`` re-exports it beside ``import_model``.

Nested containers are written inline: a nested ``Sequential`` as its layers,
a ``Residual`` as its two branches from the same tensor joined by an ``Add``
(the body's output first). Initializers are named as the model's state
(``"3.body.0.weight"``), so the file's weights read like a torch state_dict.

The ``onnx`` package is the optional extra ``[onnx]``. Deliberately not here:
reading ONNX files (``striate.onnx_io``), branches other than ``Residual``'s,
and ops outside the layer set of ``striate.layers``.
"""

from __future__ import annotations

import os

import numpy as np

from . import layers as L
from .io import _atomic_write
from .layers.chain import layers_of

__all__ = ["export", "OnnxExportError", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
MIN_OPSET = 13


class OnnxExportError(ValueError):
    """A layer configuration that ONNX cannot express; the message names the layer."""


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ONNX support needs the optional extra: pip install 'striate[onnx]'"
        ) from None
    return onnx, helper, numpy_helper


def _same_pads(kernel, dilation):
    """PyTorch's padding='same' for stride 1: total d*(k-1), the smaller half first."""
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def _conv_pads(layer):
    if layer.padding == "same":
        (t, b), (l, r) = _same_pads(layer.kernel_size, layer.dilation)
        return [t, l, b, r]
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    ph, pw = layer.padding
    return [ph, pw, ph, pw]


def _pool_ceil_changes_size(layer, shape):
    """True when ceil_mode gives a different output size than floor mode for `shape`."""
    _, h, w = shape
    dil = getattr(layer, "dilation", (1, 1))
    for size, k, s, p, d in zip((h, w), layer.kernel_size, layer.stride, layer.padding, dil):
        eff = d * (k - 1) + 1
        floor_out = (size + 2 * p - eff) // s + 1
        ceil_out = -(-(size + 2 * p - eff) // s) + 1
        if (ceil_out - 1) * s >= size + p:
            ceil_out -= 1
        if ceil_out != floor_out:
            return True
    return False


class _Graph:
    """Accumulates nodes and initializers for a chain of layers."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.current = "input"
        self.count = 0

    def tensor(self, name, array):
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op, extra_inputs=(), **attrs):
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(
            self.helper.make_node(op, [self.current, *extra_inputs], [out], name=f"{op}_{self.count}", **attrs)
        )
        self.current = out
        return out


def _export_residual(g, i, layer, shape):
    """Both branches of a Residual from the current tensor, then ``Add(body, shortcut)``."""
    start = g.current
    _export_layer(g, f"{i}.body", layer.body, shape)
    body = g.current
    short = start
    if layer.shortcut is not None:
        g.current = start
        _export_layer(g, f"{i}.shortcut", layer.shortcut, shape)
        short = g.current
    g.current = body
    g.add("Add", [short])


def _export_gelu(g, i, layer):
    """GELU: the opset-20 ``Gelu`` op, else the composition torch exports (Erf, or Tanh for "tanh")."""
    if g.opset >= 20:
        g.add("Gelu", approximate=layer.approximate)
        return
    x = g.current
    half, one = g.tensor(f"{i}.half", np.float32(0.5)), g.tensor(f"{i}.one", np.float32(1.0))
    if layer.approximate == "none":  # 0.5 * (x * (1 + erf(x / sqrt(2))))
        g.add("Div", [g.tensor(f"{i}.sqrt2", np.float32(np.sqrt(2.0)))])
        g.add("Erf")
    else:  # 0.5 * (x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * (x * (x * x))))))
        g.add("Mul", [x])
        g.add("Mul", [x])
        g.add("Mul", [g.tensor(f"{i}.kappa", np.float32(0.044715))])
        g.add("Add", [x])
        g.add("Mul", [g.tensor(f"{i}.beta", np.float32(np.sqrt(2.0 / np.pi)))])
        g.add("Tanh")
    g.add("Add", [one])
    g.add("Mul", [x])
    g.add("Mul", [half])


def _export_layer(g, i, layer, shape):
    """Append the nodes for `layer` (named i: "3", "3.body.0") whose input has per-sample `shape`."""
    name = f"layer {i} ({type(layer).__name__})"
    if isinstance(layer, L.Residual):
        layer.output_shape(shape)  # a body and a shortcut of different shapes raise here, naming the block
        _export_residual(g, i, layer, shape)
    elif isinstance(layer, L._Container) and layer._sequence() is not None:
        for j, child in enumerate(layer._sequence()):
            _export_layer(g, f"{i}.{j}", child, shape)
            shape = tuple(child.output_shape(shape))
    elif isinstance(layer, L.Conv2d):
        ins = [g.tensor(f"{i}.weight", layer.weight.data.astype(np.float32))]
        if layer.bias is not None:
            ins.append(g.tensor(f"{i}.bias", layer.bias.data.astype(np.float32)))
        g.add("Conv", ins, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
              pads=_conv_pads(layer), dilations=list(layer.dilation), group=layer.groups)
    elif isinstance(layer, L.MaxPool2d):
        ph, pw = layer.padding
        g.add("MaxPool", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
              pads=[ph, pw, ph, pw], dilations=list(layer.dilation),
              ceil_mode=int(layer.ceil_mode and _pool_ceil_changes_size(layer, shape)))
    elif isinstance(layer, L.AvgPool2d):
        ph, pw = layer.padding
        ceil = layer.ceil_mode and _pool_ceil_changes_size(layer, shape)
        if ceil and (ph or pw) and layer.count_include_pad:
            raise OnnxExportError(
                f"{name}: AvgPool2d with ceil_mode, padding and count_include_pad has no exact ONNX form"
            )
        g.add("AveragePool", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
              pads=[ph, pw, ph, pw], ceil_mode=int(ceil), count_include_pad=int(layer.count_include_pad))
    elif isinstance(layer, L.LPPool2d):
        p = layer.norm_type
        if p != int(p):
            raise OnnxExportError(f"{name}: ONNX LpPool needs an integer norm_type, got {p}")
        if layer.ceil_mode and _pool_ceil_changes_size(layer, shape):
            raise OnnxExportError(f"{name}: LPPool2d with ceil_mode and a partial last window has no ONNX form")
        g.add("LpPool", kernel_shape=list(layer.kernel_size), strides=list(layer.stride), p=int(p))
    elif isinstance(layer, L.AdaptiveAvgPool2d):
        _, h, w = shape
        oh, ow = layer.resolved_size((h, w))
        if (oh, ow) == (1, 1):
            g.add("GlobalAveragePool")
        elif h % oh == 0 and w % ow == 0:
            g.add("AveragePool", kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
        else:
            raise OnnxExportError(
                f"{name}: AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} has uneven windows, which ONNX cannot express"
            )
    elif isinstance(layer, L.BatchNorm2d):
        ins = [
            g.tensor(f"{i}.weight", layer.weight.data.astype(np.float32)),
            g.tensor(f"{i}.bias", layer.bias.data.astype(np.float32)),
            g.tensor(f"{i}.running_mean", layer.running_mean.astype(np.float32)),
            g.tensor(f"{i}.running_var", layer.running_var.astype(np.float32)),
        ]
        g.add("BatchNormalization", ins, epsilon=float(layer.eps))
    elif isinstance(layer, L.ReLU):
        g.add("Relu")
    elif isinstance(layer, L.LeakyReLU):
        g.add("LeakyRelu", alpha=float(layer.negative_slope))
    elif isinstance(layer, L.GELU):
        _export_gelu(g, i, layer)
    elif isinstance(layer, L.SiLU):
        x = g.current
        g.add("Sigmoid")
        g.add("Mul", [x])  # x * sigmoid(x), the form onnxruntime fuses
    elif isinstance(layer, L.Tanh):
        g.add("Tanh")
    elif isinstance(layer, L.Sigmoid):
        g.add("Sigmoid")
    elif isinstance(layer, L.Softmax):
        g.add("Softmax", axis=int(layer.axis))
    elif isinstance(layer, (L.Dropout, L.Identity)):
        g.add("Identity")
    elif isinstance(layer, L.Flatten):
        g.add("Flatten", axis=1)
    elif isinstance(layer, L.Linear):
        ins = [g.tensor(f"{i}.weight", layer.weight.data.astype(np.float32))]
        if layer.bias is not None:
            ins.append(g.tensor(f"{i}.bias", layer.bias.data.astype(np.float32)))
        g.add("Gemm", ins, transB=1)
    else:
        raise OnnxExportError(f"{name}: no ONNX export for this layer type")


def _check_input_shape(input_shape):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (C, H, W), got {input_shape!r}")
    for v in input_shape:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`input_shape` must hold positive ints, got {input_shape!r}")
    return tuple(int(v) for v in input_shape)


def export(model, path, input_shape, *, opset=DEFAULT_OPSET):
    """Write `model` as an ONNX file runnable in onnxruntime.

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike
        Written atomically (temp file, fsync, rename).
    input_shape : (C, H, W)
        One sample's shape; the batch dimension stays dynamic (``"N"``).
    opset : int, default 17
        At least 13.

    Dropout becomes Identity and BatchNorm its inference form. A layer ONNX
    cannot express raises ``OnnxExportError`` (a ``ValueError``) naming it.
    """
    onnx, helper, numpy_helper = _onnx()
    if not (hasattr(model, "layers") and callable(getattr(model, "to_config", None))):
        raise TypeError(f"`model` must be a striate.Sequential, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"`opset` must be an int >= {MIN_OPSET}, got {opset!r}")

    g = _Graph(helper, numpy_helper)
    g.opset = opset
    cur = shape
    for i, layer in enumerate(layers_of(model)):
        _export_layer(g, i, layer, cur)
        cur = tuple(layer.output_shape(cur)) if hasattr(layer, "output_shape") else cur
    g.add("Identity")  # a stable output name
    g.nodes[-1].output[0] = "output"

    inp = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", *shape])
    out = helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", *cur])
    graph = helper.make_graph(g.nodes, "striate_sequential", [inp], [out], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="striate")
    proto.ir_version = min(proto.ir_version, 8)
    onnx.checker.check_model(proto, full_check=True)

    _atomic_write(os.fspath(path), proto.SerializeToString())
    return path
