"""Residual: a skip connection, ``y = body(x) + (x if shortcut is None else shortcut(x))``.

``Residual(body, shortcut=None)`` holds its branches as the children
``body`` and ``shortcut``, so its state is named exactly as torch names the
module of the same attributes (``"body.0.weight"``, ``"shortcut.weight"``).
Forward runs both branches on the same input and adds them; backward sends
the output gradient down both and adds their input gradients. A body whose
output shape differs from the shortcut's raises ValueError at the first
forward, naming the block's place in the model and both shapes.

Not here: the ReLU that usually follows the sum (a separate layer of the
enclosing ``Sequential``, as in torchvision's ResNets), or branches that
concatenate instead of adding.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from .._config import get_backend
from .base import _check_input, layer_from_config
from .chain import located
from .container import _Container, backward_into, child_spec


def _shape_text(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _sum(a, b):
    """``a + b`` as a new array (a branch may return its input, which must not be written).

    Float32 operands of one shape run on the core's threaded kernel
    (csrc/elementwise.cpp), which gives NumPy's bits.
    """
    if (get_backend() != "numpy" and a.dtype == b.dtype == np.float32 and a.shape == b.shape
            and all(v.flags.c_contiguous and v.flags.aligned for v in (a, b))):
        out = np.empty_like(a)
        _core.add(a, b, out)
        return out
    return a + b


class Residual(_Container):
    """``body(x) + x``, or ``body(x) + shortcut(x)`` with a projection shortcut.

    Parameters
    ----------
    body : Layer or Sequential
    shortcut : Layer or Sequential, optional
        None is the identity; it must then keep the body's input shape.

    Examples
    --------
    >>> import numpy as np, striate as st
    >>> from striate import layers as L
    >>> block = L.Residual(st.Sequential([L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4)]))
    >>> list(block.state_dict())[:2]
    ['body.0.weight', 'body.1.weight']
    >>> block(np.zeros((2, 4, 5, 5), np.float32)).shape
    (2, 4, 5, 5)
    """

    _fresh_output = True  # y + shortcut: a new array it does not keep (see layers.chain)
    _fresh_grad = True

    def __init__(self, body, shortcut=None):
        super().__init__()
        self._body = self._check_child(body, "body")
        self._shortcut = None if shortcut is None else self._check_child(shortcut, "shortcut", [self._body])
        self._out_shape = None
        self._adopt()

    @property
    def body(self):
        return self._body

    @property
    def shortcut(self):
        return self._shortcut

    def named_children(self):
        kids = [("body", self._body)]
        if self._shortcut is not None:
            kids.append(("shortcut", self._shortcut))
        return kids

    # -- computation -------------------------------------------------------------

    def _mismatch(self, body_shape, short_shape):
        where = f"Residual block {self._path}" if self._path else "Residual block"
        what = "the identity shortcut" if self._shortcut is None else "its shortcut"
        return ValueError(
            f"{where}: its body gives shape {_shape_text(body_shape)} but {what} gives {_shape_text(short_shape)}; "
            "the two branches must give the same shape (a shortcut such as Conv2d(c_in, c_out, 1, stride) "
            "with BatchNorm2d maps the input to the body's shape)"
        )

    def forward(self, x):
        _check_input(x, "Residual")
        try:
            y = self._body(x)
        except ValueError as e:
            raise located(e, "body", self._body) from None
        try:
            s = x if self._shortcut is None else self._shortcut(x)
        except ValueError as e:
            raise located(e, "shortcut", self._shortcut) from None
        if y.shape != s.shape:
            raise self._mismatch(y.shape, s.shape)
        self._out_shape = y.shape
        return _sum(y, s)

    def backward(self, dy):
        shape = self._saved("_out_shape")
        self._check_dy(dy, shape)
        need = self.needs_input_grad
        dbody = backward_into(self._body, dy, need)
        dshort = (dy if need else None) if self._shortcut is None else backward_into(self._shortcut, dy, need)
        return _sum(dbody, dshort) if need else None

    def output_shape(self, input_shape):
        body = tuple(int(s) for s in self._body.output_shape(input_shape))
        short = tuple(input_shape) if self._shortcut is None else tuple(self._shortcut.output_shape(input_shape))
        if body != tuple(int(s) for s in short):
            raise self._mismatch(body, short)
        return body

    # -- description -------------------------------------------------------------

    def config(self):
        return {
            "body": child_spec(self._body),
            "shortcut": None if self._shortcut is None else child_spec(self._shortcut),
        }

    @classmethod
    def _check_config(cls, config, where):
        if not isinstance(config, dict) or set(config) != {"body", "shortcut"}:
            raise ValueError(f"layer {where} (Residual): config must be an object with 'body' and 'shortcut'")

    @classmethod
    def _config_state(cls, config, where, budget):
        cls._check_config(config, where)
        state = cls._child_state(config["body"], f"{where}.body", budget, "body")
        if config["shortcut"] is not None:
            state.update(cls._child_state(config["shortcut"], f"{where}.shortcut", budget, "shortcut"))
        return state

    @classmethod
    def _build_from_config(cls, config):
        if set(config) != {"body", "shortcut"}:
            raise TypeError(f"`config` of Residual must have the keys 'body' and 'shortcut', got {sorted(config)}")

        def build(spec, what):
            if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
                raise ValueError(f"`config['{what}']` of Residual must have 'type' and 'config'")
            return layer_from_config(spec["type"], spec["config"])

        short = config["shortcut"]
        return cls(build(config["body"], "body"), None if short is None else build(short, "shortcut"))
