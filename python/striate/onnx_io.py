"""ONNX export and import for ``Sequential`` models.

``export(model, path, input_shape)`` writes an ONNX graph (opset 17 by
default) that onnxruntime runs with the same results as striate, with a
dynamic batch dimension (it lives in ``striate._onnx_export``, below
``Sequential``, and is re-exported here). ``import_model(path)`` reads a chain
of the same ops back into a ``Sequential`` -- for example a
``torch.nn.Sequential`` or a torch ResNet exported by ``torch.onnx.export`` --
so that striate can fine-tune models trained elsewhere. A fork whose two
branches meet in an ``Add`` comes back as a ``Residual``.

The ``onnx`` package is the optional extra ``[onnx]``. Reading a model parses
protobuf only: no code in the file is ever run. Deliberately not here: graphs
that branch other than into a residual ``Add``, and ops outside the layer set
of ``striate.layers``.
"""

from __future__ import annotations

import os

import numpy as np

from . import _files, io, layers as L
from ._onnx_patterns import Fused, fuse
from ._onnx_export import DEFAULT_OPSET, MIN_OPSET, OnnxExportError, _onnx, export  # noqa: F401  (re-exported)
from .model import Sequential

__all__ = ["export", "import_model", "OnnxExportError", "DEFAULT_OPSET"]


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


def _convert(node, a, tensor, path, nname):
    """The striate layer for one single-input node and its ``[(target, array)]`` loads.

    ``(None, [])`` for Identity and Dropout, which import drops.
    """
    op = node.op_type
    loads = []
    if isinstance(node, _FusedNode):
        return node.layer, []
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
        if var.size and not (var >= 0).all():
            raise io.FormatError(path, node.input[4], f"node {nname}: a variance must be non-negative, "
                                 f"got {float(var[~(var >= 0)].reshape(-1)[0])!r}")
        layer = L.BatchNorm2d(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
        loads += [(layer.weight, scale), (layer.bias, bias)]
        loads += [(layer.running_mean, mean), (layer.running_var, var)]
    elif op == "LeakyRelu":
        # ONNX stores alpha as float32: the shortest decimal that rounds to it (0.01, not 0.0099999998)
        layer = L.LeakyReLU(float(str(np.float32(a.get("alpha", 0.01)))))
    elif op == "Gelu":
        approx = a.get("approximate", b"none")
        layer = L.GELU(approx.decode() if isinstance(approx, bytes) else approx)
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
        return None, []
    else:
        raise ValueError(f"{path}: node {nname}: op {op} has no striate layer")
    return layer, loads


class _FusedNode:
    """A node-shaped view of a ``Fused`` pattern (several ONNX nodes read as one layer)."""

    op_type = "Fused"
    attribute = ()

    def __init__(self, fused):
        self.layer, self.name = fused.layer, fused.name
        self.input, self.output = [fused.input], [fused.output]


def _branch_layer(layers, empty):
    """One layer for a branch: the layer itself, a Sequential of several, ``empty`` for none."""
    if not layers:
        return empty
    return layers[0] if len(layers) == 1 else Sequential(layers)


class _Reader:
    """Walks an ONNX graph from its input along the data flow, into layers.

    A tensor read by one node continues the chain; a tensor read by two
    nodes opens a ``Residual``: each branch is walked until it reaches an
    ``Add``, which must be the same node for both and add exactly their two
    ends (with the identity shortcut, one of the two readers is that
    ``Add``). The branch that gives the ``Add``'s first input is the body.
    """

    def __init__(self, path, nodes, inits, tensor, helper):
        self.path, self.tensor, self.helper = path, tensor, helper
        self.inits = set(inits)
        self.readers = {}
        for node in nodes:
            for name in dict.fromkeys(n for n in node.input if n and n not in inits):
                self.readers.setdefault(name, []).append(node)
        self.done = set()
        self.loads = []

    def _name(self, node):
        return node.name or node.op_type

    def _take(self, node, current):
        """Convert a single-input node that reads ``current``; return its layer or None."""
        nname = self._name(node)
        if node.op_type == "Add" or [n for n in node.input if n and n not in self.inits] != [current]:
            raise ValueError(f"{self.path}: node {nname} ({node.op_type}) does not continue a single chain")
        if id(node) in self.done:  # pragma: no cover - a node is reached once through its one data input
            raise ValueError(f"{self.path}: node {nname} is reached twice")
        self.done.add(id(node))
        try:
            layer, loads = _convert(node, _attrs(node, self.helper), self.tensor, self.path, nname)
        except (TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # attributes of the wrong type, missing attributes, inputs or outputs
            raise ValueError(f"{self.path}: node {nname}: malformed ({type(e).__name__}: {e})") from None
        except ValueError as e:  # a layer constructor's check: say which file and node it is about
            if str(e).startswith(self.path):
                raise
            raise ValueError(f"{self.path}: node {nname} ({node.op_type}): {e}") from None
        self.loads += loads
        return layer

    def chain(self, current, in_branch):
        """Layers from ``current`` on; returns ``(layers, last tensor)``.

        In a branch the walk stops before the ``Add`` that joins it; at the top
        level it stops where nothing reads the tensor.
        """
        layers = []
        while True:
            readers = self.readers.get(current, [])
            if not readers:
                return layers, current
            if len(readers) == 1:
                node = readers[0]
                if node.op_type == "Add":
                    if in_branch:
                        return layers, current
                    raise ValueError(
                        f"{self.path}: node {self._name(node)} (Add) does not join the two branches of one fork"
                    )
                layer = self._take(node, current)
                if layer is not None:
                    layers.append(layer)
                current = node.output[0]
            elif len(readers) == 2:
                block, current = self.residual(current, readers)
                layers.append(block)
            else:
                raise ValueError(
                    f"{self.path}: tensor {current!r} is read by {len(readers)} nodes; only the two branches "
                    "of a residual block (joined by one Add) are supported"
                )

    def _branch(self, start, node):
        """Walk one branch that begins with ``node`` (reading ``start``); ``(layers, end, join)``."""
        first = self._take(node, start)
        layers, end = self.chain(node.output[0], True)
        readers = self.readers.get(end, [])
        if not readers:
            raise ValueError(f"{self.path}: a branch from tensor {start!r} ends at {end!r} without joining an Add")
        return ([first] if first is not None else []) + layers, end, readers[0]

    def residual(self, start, readers):
        """The Residual that forks at ``start``; returns ``(block, the Add's output)``."""
        adds = [n for n in readers if n.op_type == "Add"]
        if len(adds) == 1:
            join = adds[0]
            other = readers[0] if readers[1] is join else readers[1]
            body, body_end, join_b = self._branch(start, other)
            short, short_end = None, start
        elif not adds:
            b0, e0, j0 = self._branch(start, readers[0])
            b1, e1, join_b = self._branch(start, readers[1])
            join = j0
            if j0 is not join_b:
                raise ValueError(f"{self.path}: the branches from tensor {start!r} end in different nodes")
            first = [n for n in join.input if n]
            (body, body_end), (short, short_end) = ((b0, e0), (b1, e1)) if first[:1] == [e0] else ((b1, e1), (b0, e0))
        else:
            raise ValueError(f"{self.path}: tensor {start!r} is read by two Add nodes")
        jname = self._name(join)
        if join_b is not join or sorted(n for n in join.input if n) != sorted([body_end, short_end]):
            raise ValueError(f"{self.path}: node {jname} (Add) does not add the two branches from tensor {start!r}")
        if body_end == short_end:
            raise ValueError(f"{self.path}: node {jname} (Add) adds a tensor to itself")
        self.done.add(id(join))
        block = L.Residual(_branch_layer(body, Sequential([])), _branch_layer(short or [], None))
        return block, join.output[0]


def import_model(path, *, max_bytes=1 << 30):
    """Read an ONNX file holding a chain of supported ops into a ``Sequential``.

    Supported: Conv, MaxPool, AveragePool, LpPool, GlobalAveragePool,
    BatchNormalization, Relu, LeakyRelu, Gelu, Tanh, Sigmoid, Softmax,
    Flatten, Gemm (transB=1 or 0), Identity and Dropout (dropped), the
    compositions exporters write for GELU and SiLU (see
    ``striate._onnx_patterns``), and ``Add`` joining the two branches of a
    fork, which becomes a ``Residual`` (a torch ResNet exported by
    ``torch.onnx.export`` reads back this way). Constant nodes are read as
    initializers. Any other op, or a graph that branches otherwise, raises
    ``ValueError`` naming the node.
    """
    onnx, helper, numpy_helper = _onnx()
    path = os.fspath(path)
    blob = _files.read_bounded(path, max_bytes)  # regular files only, at most the size checked
    try:
        proto = onnx.load_model_from_string(blob)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    plain = []
    for node in graph.node:  # Constant nodes hold values as initializers do
        if node.op_type == "Constant" and len(node.output) == 1 and [a.name for a in node.attribute] == ["value"]:
            inits[node.output[0]] = node.attribute[0].t
        else:
            plain.append(node)

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
    def scalar(name):
        t = inits.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        try:
            arr = numpy_helper.to_array(t)
        except Exception:  # undecodable: not a constant of a known pattern
            return None
        return float(arr.reshape(-1)[0]) if arr.size == 1 and arr.dtype.kind == "f" else None

    try:
        nodes = [_FusedNode(n) if isinstance(n, Fused) else n for n in fuse(plain, scalar)]
        reader = _Reader(path, nodes, inits, tensor, helper)
        layers, last = reader.chain(inputs[0].name, False)
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # attributes of the wrong type, missing attributes, inputs or outputs
        raise ValueError(f"{path}: a node is malformed ({type(e).__name__}: {e})") from None
    except RecursionError:
        raise ValueError(f"{path}: residual blocks are nested too deeply") from None
    left = [node.name or node.op_type for node in nodes if id(node) not in reader.done]
    if left:
        raise ValueError(f"{path}: node {left[0]} is not on the path from the input to the output")
    if [o.name for o in graph.output] != [last]:
        raise ValueError(f"{path}: the graph output {[o.name for o in graph.output]} is not the end of the chain {last!r}")
    for target, value in reader.loads:
        arr = target.data if isinstance(target, L.Parameter) else target
        if arr.shape != value.shape:
            raise ValueError(f"{path}: tensor shape {value.shape} does not fit {arr.shape}")
        arr[...] = value
    if not layers:
        raise ValueError(f"{path}: the graph holds no layers")
    return Sequential(layers)

