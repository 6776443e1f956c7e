"""The planned inference forward: a chain of layers turned, once per input shape, into one core program.

``build(layers, x)`` walks a chain for one float32 input, checks every
geometry once (with the same functions the layers use) and returns a
``Plan``: a ``_core.Program``, whose steps the core walks in one call
(csrc/bind_program.cpp): convolution, the fully-connected product and max
pooling as core ops, Python callables for the rest, with a
ReLU that follows a Conv2d, Linear, BatchNorm2d or Residual (through
Identity layers) applied in place on that layer's fresh output (the conv's
bias + ReLU epilogue). A BatchNorm2d in evaluation mode right after a Conv2d
is folded into it on every call, from the live weights and statistics, as
``fuse()`` folds it (so the plan gives ``fuse()``'s bits, and the layers'
own to float32 rounding); any other one becomes one call of the core's
affine kernel with its running statistics read live; a nested
``Sequential`` runs its own plan, and a ``Residual`` the plans of its
branches, so a ResNet is planned through. A call
then costs one core call, plus one Python call per step the core does not
know, without the per-layer argument checks, copies and saved state of
``Layer.forward``. Layers the planner does
not know run their own ``forward``. Weights are read from the layers on every
call, so a plan never holds stale weights. Outputs are bit-identical to the
layers' own forward (the same kernels, in the same order), BatchNorm folding
aside.

Not here: deciding when a plan may be used (``Sequential.forward``: fused
models and ``predict`` only, since a planned forward saves nothing for
``backward``), BatchNorm folding (``layers.container.fuse_conv_bn``).
"""

from __future__ import annotations

import numpy as np

from . import _args, _core
from ._config import get_backend
from .layers.activation import ReLU
from .layers.container import folded_conv_bn
from .layers.conv import Conv2d
from .layers.core import Dropout, Flatten, Identity, Linear
from .layers.normalization import BatchNorm2d
from .layers.pool import MaxPool2d
from .layers.residual import Residual

__all__ = ["Plan", "build", "plannable"]


class Plan:
    """A planned forward for one input shape: ``plan(x)`` runs ``program`` (a ``_core.Program``) in one call.

    ``row_bytes`` is the size of the largest activation per input row (one
    image), twice that when the chain has a ``Residual`` (a block keeps its
    input beside its body's activations): the caller may run a large batch
    as smaller ones that keep the activations in cache (``Sequential.forward``).
    """

    __slots__ = ("program", "shape", "row_bytes", "out_row_bytes")

    def __init__(self, program, shape, row_bytes=0, out_row_bytes=()):
        self.program = program
        self.shape = shape
        self.row_bytes = row_bytes
        self.out_row_bytes = out_row_bytes  # per layer: the bytes of one row of its output

    def __call__(self, x):
        return self.program.run(x)

    def parts(self, n, limit):
        """How many equal batches ``n`` rows run as, for at most ``limit`` bytes of the largest activation each."""
        return -(-n * self.row_bytes // limit) if n > 1 else 1

    def cut(self, limit):
        """How many leading layers to run as smaller batches: through the last whose output rows pass ``limit`` bytes."""
        big = [i for i, b in enumerate(self.out_row_bytes) if b > limit]
        return big[-1] + 1 if big else 0


def plannable(x):
    """Whether ``x`` can go through a plan: a C-contiguous, aligned float32 array on the C++ backend."""
    return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned
            and get_backend() != "numpy" and hasattr(_core, "conv2d_forward"))


def _relu_follows(layers, i):
    """The index of a ReLU after ``layers[i]`` with only Identity layers between, or None."""
    j = i + 1
    while j < len(layers) and type(layers[j]) is Identity:
        j += 1
    return j if j < len(layers) and type(layers[j]) is ReLU else None


def _conv_args(conv, shape):
    """``conv``'s geometry on inputs of ``shape``, checked once: the trailing arguments of ``_core.conv2d_forward``."""
    b = conv.bias
    return _args.conv_spec(shape, conv.weight.data.shape, None if b is None else b.data.shape, conv.stride,
                           conv.padding, conv.dilation, conv.groups).core_args()


def _conv_step(conv, shape, weights):
    """``conv`` as one core call with ``weights()``, its ``(weight, bias)`` computed on every call."""
    args, fwd = _conv_args(conv, shape), _core.conv2d_forward

    def step(x):
        w, b = weights()
        if not (_flat32(w) and (b is None or _flat32(b))):
            raise _core.StalePlan("a parameter is no longer a C-contiguous float32 array")
        return fwd(x, w, b, *args)
    return step


def _conv_bn_step(conv, bn, shape, relu):
    """``conv`` then ``bn`` as one convolution with the folded weights (computed per call)."""
    folded = _conv_step(conv, shape, lambda: folded_conv_bn(conv, bn))
    plain = _conv_step(conv, shape, lambda: (conv.weight.data, None if conv.bias is None else conv.bias.data))

    def step(x):
        # bn switched to training after planning: batch statistics, tracked
        y = bn.forward(plain(x)) if bn._uses_batch_stats() else folded(x)
        if relu:
            _relu_inplace(y)
        return y
    return step


def _folds(layers, i, shape, fast):
    """Whether ``layers[i]`` is a Conv2d the BatchNorm2d after it (evaluation mode) folds into."""
    if i + 1 >= len(layers) or not fast or not _exact(layers[i], Conv2d) or len(shape) != 4:
        return False
    bn = layers[i + 1]
    return (_exact(bn, BatchNorm2d) and bn.num_features == layers[i].out_channels and not bn._uses_batch_stats()
            and all(p.data.dtype == np.float32 for p in bn.parameters()))


def _batchnorm_step(bn, relu):
    apply = _core.batch_norm_forward_apply

    def step(x):
        if bn._uses_batch_stats():  # switched to training after planning: batch statistics, tracked
            y = bn.forward(x)
        else:  # as BatchNorm2d.forward in evaluation mode, from the live statistics and weights
            mean, scale, _ = bn._running_affine()
            if bn.bias.data.dtype != np.float32 or scale.dtype != np.float32:
                raise _core.StalePlan("a parameter is no longer float32")
            y = apply(x, mean, scale, _contiguous(bn.bias.data))
        if relu:
            _relu_inplace(y)
        return y
    return step


def _planned_child(layer):
    """The planned forward of a nested ``Sequential`` (not a subclass), else None."""
    return layer._planned_forward if "_planned_forward" in type(layer).__dict__ else None


def _residual_step(res, relu):
    body = _planned_child(res.body) or res.body.forward
    short = None if res.shortcut is None else (_planned_child(res.shortcut) or res.shortcut.forward)

    def step(x):
        y = body(x)
        s = x if short is None else short(x)
        if _flat32(y, s):
            out = np.empty_like(y)  # a new array: a branch may return its input
            _core.add(y, s, out, relu)  # the sum, then the ReLU, in one pass
            return out
        y = y + s
        if relu:
            _relu_inplace(y)
        return y
    return step


def _exact(layer, cls):
    """``layer`` is a ``cls`` itself, not a subclass (which may change what forward does)."""
    return type(layer) is cls


def _contiguous(v):
    return v if v.flags.c_contiguous and v.flags.aligned else np.ascontiguousarray(v)


def _flat32(*arrays):
    """Whether every array is float32, C-contiguous and aligned: what the core's element-wise kernels take."""
    return all(a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned for a in arrays)


def _relu_inplace(v):
    """``np.maximum(v, 0, out=v)``, on the core's threaded kernel for a contiguous float32 ``v``."""
    if _flat32(v):
        _core.relu(v, v)
        return v
    return np.maximum(v, 0, out=v)


def _pool_args(pool, shape):
    """``pool``'s geometry on inputs of ``shape``, checked once: ``(kh, kw, sh, sw, ph, pw, dh, dw), ceil_mode``."""
    s = _args.pool_spec(shape, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    return (s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw), s.ceil_mode


def build(layers, x, out_shapes):
    """A ``Plan`` for ``layers`` on inputs shaped like ``x``.

    ``out_shapes[i]`` is the output shape of ``layers[i]`` on ``x`` (from a
    checked run of the layers themselves). A step that would need a copy or a
    cast (an input that is not contiguous float32, float64 weights) is left to
    the layer's own forward.
    """
    prog, i, shape = _core.Program(), 0, tuple(x.shape)
    fresh = False  # the value at this point is a new array of the plan's own (may be overwritten)
    generic = False  # ... came out of a layer's own forward (may be a view of anything)
    while i < len(layers):
        layer = layers[i]
        relu = _relu_follows(layers, i)
        fast = all(p.data.dtype == np.float32 and p.data.flags.c_contiguous for p in layer.parameters())
        bn = fast and _exact(layer, BatchNorm2d) and len(shape) == 4 and not layer._uses_batch_stats()
        kernel = (fast and (_exact(layer, Conv2d) or (_exact(layer, Linear) and len(shape) == 2))
                  or _exact(layer, MaxPool2d) or bn)
        if generic and kernel:
            prog.contiguous()  # the core takes C-contiguous arrays only
        if kernel:
            generic = False
        if _folds(layers, i, shape, fast):
            relu = _relu_follows(layers, i + 1)
            prog.call(_conv_bn_step(layer, layers[i + 1], shape, relu is not None))
            if relu is None:
                i += 1  # past the BatchNorm
        elif _exact(layer, Conv2d) and fast:
            prog.conv(layer.weight, layer.bias, _conv_args(layer, shape), relu is not None)
        elif _exact(layer, Linear) and fast and len(shape) == 2:
            # as functional.linear: the row-invariant GEMM, then the bias
            prog.linear(layer.weight, layer.bias, relu is not None)
        elif _exact(layer, MaxPool2d):
            prog.max_pool(*_pool_args(layer, shape))
            relu = None
        elif bn:
            prog.call(_batchnorm_step(layer, relu is not None))
        elif _exact(layer, Residual):
            prog.call(_residual_step(layer, relu is not None))
            generic = True  # the sum of two branches' arrays, whatever their layout
        elif _planned_child(layer) is not None:
            prog.call(_planned_child(layer))
            relu, generic = None, True  # its output may be its input (a chain of Identity layers)
        elif _exact(layer, Identity):
            relu = None
        elif _exact(layer, Flatten):
            prog.flatten(shape[0])
            relu = None
        elif _exact(layer, Dropout):
            prog.dropout(layer)  # its input in eval mode, else a fresh array: as Identity
            relu = None
        elif _exact(layer, ReLU) and fresh:
            prog.relu()
        else:
            prog.call(layer.forward)
            relu, generic = None, True
        fresh = kernel or _exact(layer, Residual) or (
            fresh and any(_exact(layer, c) for c in (Identity, Flatten, ReLU, Dropout)))
        if relu is not None:
            i = relu  # the ReLU ran in place on this layer's output
        shape = tuple(out_shapes[i])
        i += 1
    n = max(1, int(x.shape[0]))
    sizes = [int(np.prod(s, dtype=np.int64)) for s in out_shapes if len(s) >= 1] + [int(x.size)]
    per_layer = tuple(int(np.prod(s, dtype=np.int64)) * 4 // n if len(s) >= 1 else 0 for s in out_shapes)
    live = 2 if any(_exact(layer, Residual) for layer in layers) else 1
    return Plan(prog, tuple(x.shape), live * max(sizes) * 4 // n, per_layer)
