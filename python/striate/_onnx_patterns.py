"""Multi-node ONNX activation patterns that ``striate.onnx_io.import_model`` reads as one layer.

ONNX before opset 20 has no GELU op and none for SiLU, so exporters (striate's
and ``torch.onnx.export``) write them as small compositions:

- SiLU: ``Mul(x, Sigmoid(x))``;
- GELU exact: ``Mul(Mul(x, Add(Erf(Div(x, sqrt(2))), 1)), 0.5)``;
- GELU tanh: ``Mul(Mul(x, Add(Tanh(Mul(Add(x, Mul(Mul(x, Mul(x, x)), 0.044715)), sqrt(2/pi))), 1)), 0.5)``
  (the operands of each Add and Mul in either order).

``fuse(nodes, scalar)`` replaces each run of nodes that forms one of them by a
``Fused`` item holding the layer. Constants must be single-value initializers
(or Constant nodes, which the importer turns into initializers). Not here: the
single-node ops and anything that branches beyond these patterns.
"""

from __future__ import annotations

import math

from . import layers as L

__all__ = ["Fused", "fuse"]


class Fused:
    """A layer standing for ``count`` ONNX nodes: it reads ``input`` and writes ``output``."""

    def __init__(self, layer, input, output, name, count):
        self.layer, self.input, self.output, self.name, self.count = layer, input, output, name, count


def _other(node, x):
    """The input of a two-input node that is not ``x`` (None unless ``x`` is exactly one of them)."""
    ins = list(node.input)
    if len(ins) != 2 or ins.count(x) != 1:
        return None
    return ins[1] if ins[0] == x else ins[0]


def _close(value, want):
    return value is not None and math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-7)


def _silu(nodes, j, scalar):
    a, b = nodes[j], nodes[j + 1]
    if a.op_type != "Sigmoid" or b.op_type != "Mul" or len(a.input) != 1:
        return None
    x = a.input[0]
    return L.SiLU() if _other(b, x) == a.output[0] else None


def _gelu_tail(nodes, j, x, scalar):
    """``Add(., 1)``, ``Mul(x, .)``, ``Mul(., 0.5)`` starting at ``nodes[j]``, continuing ``nodes[j - 1]``."""
    add, mul, half = nodes[j : j + 3]
    prev = nodes[j - 1].output[0]
    return (add.op_type == "Add" and _close(scalar(_other(add, prev)), 1.0)
            and mul.op_type == "Mul" and _other(mul, x) == add.output[0]
            and half.op_type == "Mul" and _close(scalar(_other(half, mul.output[0])), 0.5))


def _chain(nodes, j, ops):
    """True when ``nodes[j:]`` starts with ``ops`` (op types) and each feeds the next."""
    run = nodes[j : j + len(ops)]
    if [n.op_type for n in run] != list(ops):
        return False
    return all(run[k].output[0] in run[k + 1].input for k in range(len(run) - 1))


def _gelu_erf(nodes, j, scalar):
    if not _chain(nodes, j, ("Div", "Erf", "Add", "Mul", "Mul")):
        return None
    div = nodes[j]
    x = div.input[0]
    if len(div.input) != 2 or not _close(scalar(div.input[1]), math.sqrt(2.0)):
        return None
    return L.GELU() if _gelu_tail(nodes, j + 2, x, scalar) else None


def _gelu_tanh(nodes, j, scalar):
    if not _chain(nodes, j, ("Mul", "Mul", "Mul", "Add", "Mul", "Tanh", "Add", "Mul", "Mul")):
        return None
    sq, cube, kappa, add, beta = nodes[j : j + 5]
    x = sq.input[0]
    ok = (list(sq.input) == [x, x] and _other(cube, x) == sq.output[0]
          and _close(scalar(_other(kappa, cube.output[0])), 0.044715)
          and _other(add, kappa.output[0]) == x
          and _close(scalar(_other(beta, add.output[0])), math.sqrt(2.0 / math.pi)))
    return L.GELU("tanh") if ok and _gelu_tail(nodes, j + 6, x, scalar) else None


_PATTERNS = ((_gelu_tanh, 9), (_gelu_erf, 5), (_silu, 2))


def fuse(nodes, scalar):
    """``nodes`` with each activation pattern replaced by a ``Fused`` item.

    ``scalar(name)`` gives the float held by a single-value constant, else None.
    """
    out, j = [], 0
    while j < len(nodes):
        for match, count in _PATTERNS:
            layer = match(nodes, j, scalar) if j + count <= len(nodes) else None
            if layer is not None:
                first, last = nodes[j], nodes[j + count - 1]
                out.append(Fused(layer, first.input[0], last.output[0], first.name or first.op_type, count))
                j += count
                break
        else:
            out.append(nodes[j])
            j += 1
    return out
