"""ONNX export and import for ``Sequential`` models.

``export(model, path, input_shape)`` writes an ONNX graph (opset 17 by
default) that onnxruntime runs with the same results as striate, with a
dynamic batch dimension. ``import_model(path)`` reads a chain of the same ops
back into a ``Sequential`` -- for example a ``torch.nn.Sequential`` exported by
``torch.onnx.export`` -- so that striate can fine-tune models trained
elsewhere.

The ``onnx`` package is the optional extra ``[onnx]``. Reading a model parses
protobuf only: no code in the file is ever run. Deliberately not here: graphs
that branch, and ops outside the layer set of ``striate.layers``.
"""

from __future__ import annotations

import os

import numpy as np

from . import layers as L
from .model import Sequential

__all__ = ["export", "import_model", "OnnxExportError", "DEFAULT_OPSET"]

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


def _export_layer(g, i, layer, shape):
    """Append the nodes for `layer` (index i) whose input has per-sample `shape`."""
    name = f"layer {i} ({type(layer).__name__})"
    if isinstance(layer, L.Conv2d):
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
        oh, ow = layer.output_size
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
    elif isinstance(layer, L.Tanh):
        g.add("Tanh")
    elif isinstance(layer, L.Sigmoid):
        g.add("Sigmoid")
    elif isinstance(layer, L.Softmax):
        g.add("Softmax", axis=int(layer.axis))
    elif isinstance(layer, L.Dropout):
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
    if not isinstance(model, Sequential):
        raise TypeError(f"`model` must be a striate.Sequential, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"`opset` must be an int >= {MIN_OPSET}, got {opset!r}")

    g = _Graph(helper, numpy_helper)
    cur = shape
    for i, layer in enumerate(model):
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

    from .io import _atomic_write

    _atomic_write(os.fspath(path), proto.SerializeToString())
    return path


# ----------------------------------------------------------------------------
# import


def _attrs(node, helper):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pair_from(values, what, name):
    if len(values) != 2:
        raise ValueError(f"{name}: `{what}` must have 2 values for a 2-D op, got {list(values)}")
    return tuple(int(v) for v in values)


def _sym_pads(pads, name):
    pads = [int(p) for p in pads] if pads else [0, 0, 0, 0]
    if len(pads) != 4:
        raise ValueError(f"{name}: `pads` must have 4 values, got {pads}")
    t, l, b, r = pads
    if (t, l) != (b, r):
        raise ValueError(f"{name}: asymmetric `pads` {pads} are not supported")
    return (t, l)


def import_model(path, *, max_bytes=1 << 30):
    """Read an ONNX file holding a chain of supported ops into a ``Sequential``.

    Supported: Conv, MaxPool, AveragePool, LpPool, GlobalAveragePool,
    BatchNormalization, Relu, Tanh, Sigmoid, Softmax, Flatten, Gemm (transB=1
    or 0), Identity and Dropout (dropped). Any other op, or a graph that
    branches, raises ``ValueError`` naming the node.
    """
    onnx, helper, numpy_helper = _onnx()
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path}: file is {size} bytes, more than `max_bytes`={max_bytes}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}

    def tensor(name, node_name):
        if name not in inits:
            raise ValueError(f"{path}: node {node_name}: input {name!r} is not a constant initializer")
        t = inits[name]
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"{path}: tensor {name!r} uses external data, which is not read")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is refused just below
                arr = numpy_helper.to_array(t).astype(np.float32)
        except Exception as e:  # a data_type, dims or payload that onnx cannot decode
            raise ValueError(f"{path}: tensor {name!r} cannot be decoded ({type(e).__name__}: {e})") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: tensor {name!r} holds non-finite values")
        return arr

    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{path}: expected one graph input, got {[v.name for v in inputs]}")
    current = inputs[0].name
    layers, loads = [], []
    nname = None
    try:
        for node in graph.node:
            nname = node.name or node.op_type
            data_inputs = [n for n in node.input if n and n not in inits]
            if data_inputs != [current]:
                raise ValueError(f"{path}: node {nname} ({node.op_type}) does not continue a single chain")
            a = _attrs(node, helper)
            op = node.op_type
            if op == "Conv":
                w = tensor(node.input[1], nname)
                b = tensor(node.input[2], nname) if len(node.input) > 2 and node.input[2] else None
                if w.ndim != 4:
                    raise ValueError(f"{path}: node {nname}: Conv weight must be 4-D, got shape {w.shape}")
                groups = int(a.get("group", 1))
                k = _pair_from(a.get("kernel_shape", w.shape[2:]), "kernel_shape", nname)
                if k != tuple(w.shape[2:]):  # checked before the layer allocates a weight of that size
                    raise ValueError(f"{path}: node {nname}: kernel_shape {list(k)} does not match the weight "
                                     f"shape {list(w.shape)}")
                if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise ValueError(f"{path}: node {nname}: auto_pad is not supported")
                layer = L.Conv2d(w.shape[1] * groups, w.shape[0], k,
                                 stride=_pair_from(a.get("strides", [1, 1]), "strides", nname),
                                 padding=_sym_pads(a.get("pads"), nname),
                                 dilation=_pair_from(a.get("dilations", [1, 1]), "dilations", nname),
                                 groups=groups, bias=b is not None)
                loads.append((layer.weight, w))
                if b is not None:
                    loads.append((layer.bias, b))
            elif op in ("MaxPool", "AveragePool", "LpPool"):
                k = _pair_from(a["kernel_shape"], "kernel_shape", nname)
                s = _pair_from(a.get("strides", [1, 1]), "strides", nname)
                pads = _sym_pads(a.get("pads"), nname)
                ceil = bool(a.get("ceil_mode", 0))
                if op == "MaxPool":
                    dil = _pair_from(a.get("dilations", [1, 1]), "dilations", nname)
                    layer = L.MaxPool2d(k, s, pads, ceil, dilation=dil)
                elif op == "AveragePool":
                    layer = L.AvgPool2d(k, s, pads, ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
                else:
                    if pads != (0, 0):
                        raise ValueError(f"{path}: node {nname}: LpPool with padding is not supported")
                    layer = L.LPPool2d(float(a.get("p", 2)), k, s, ceil)
            elif op == "GlobalAveragePool":
                layer = L.GlobalAvgPool2d()
            elif op == "BatchNormalization":
                scale, bias, mean, var = (tensor(n, nname) for n in node.input[1:5])
                layer = L.BatchNorm2d(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
                loads += [(layer.weight, scale), (layer.bias, bias)]
                loads += [(layer.running_mean, mean), (layer.running_var, var)]
            elif op in ("Relu", "Tanh", "Sigmoid"):
                layer = {"Relu": L.ReLU, "Tanh": L.Tanh, "Sigmoid": L.Sigmoid}[op]()
            elif op == "Softmax":
                layer = L.Softmax(int(a.get("axis", -1)))
            elif op == "Flatten":
                if int(a.get("axis", 1)) != 1:
                    raise ValueError(f"{path}: node {nname}: Flatten axis must be 1")
                layer = L.Flatten()
            elif op == "Gemm":
                w = tensor(node.input[1], nname)
                if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 or a.get("transA", 0):
                    raise ValueError(f"{path}: node {nname}: Gemm with alpha/beta != 1 or transA is not supported")
                if not a.get("transB", 0):
                    w = w.T
                b = tensor(node.input[2], nname) if len(node.input) > 2 and node.input[2] else None
                layer = L.Linear(w.shape[1], w.shape[0], bias=b is not None)
                loads.append((layer.weight, w))
                if b is not None:
                    loads.append((layer.bias, b.reshape(-1)))
            elif op in ("Identity", "Dropout"):
                current = node.output[0]
                continue
            else:
                raise ValueError(f"{path}: node {nname}: op {op} has no striate layer")
            layers.append(layer)
            current = node.output[0]
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # attributes of the wrong type, missing attributes, inputs or outputs
        raise ValueError(f"{path}: node {nname}: malformed ({type(e).__name__}: {e})") from None
    for target, value in loads:
        arr = target.data if isinstance(target, L.Parameter) else target
        if arr.shape != value.shape:
            raise ValueError(f"{path}: tensor shape {value.shape} does not fit {arr.shape}")
        arr[...] = value
    if not layers:
        raise ValueError(f"{path}: the graph holds no layers")
    return Sequential(layers)

