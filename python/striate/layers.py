"""Layers: Parameter, the Layer base class and the layers of API.md.

Each layer runs ``forward`` on NumPy arrays (NCHW, float32; float64 works with
the NumPy backend for gradient checks), keeps only what ``backward`` needs, and
``backward(dy) -> dx`` overwrites ``param.grad``. Convolution, pooling and
Linear call ``striate.functional``, so the backend switch applies to them; the
element-wise layers and BatchNorm2d are plain NumPy.

This is deliberately not an autograd engine: there is no graph, a layer
remembers exactly one forward call, and layers are chained by ``Sequential``.
Initialisation follows PyTorch (kaiming-uniform with a=sqrt(5) on the weight,
bias uniform in +-1/sqrt(fan_in)), drawn from ``striate._config.rng()``.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from . import _config

__all__ = [
    "Parameter",
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "LPPool2d",
    "AdaptiveAvgPool2d",
    "GlobalAvgPool2d",
    "BatchNorm2d",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "Dropout",
    "Flatten",
    "Linear",
    "layer_from_config",
    "layer_types",
]

# Largest integer hyper-parameter accepted (channels, features, kernel sizes ...).
_INT_MAX = 2**31 - 1
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------
# argument checking shared by the constructors (and so by io's schema check)


def _int(value, name, lo=1, hi=_INT_MAX):
    """An int in [lo, hi]; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or value > hi:
        if hi == _INT_MAX:
            raise ValueError(f"`{name}` must be >= {lo}, got {value}")
        raise ValueError(f"`{name}` must be in [{lo}, {hi}], got {value}")
    return value


def _pair(value, name, lo=1, hi=_INT_MAX):
    """An int or an (h, w) pair of ints in [lo, hi], returned as a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"`{name}` must be an int or an (h, w) pair, got {value!r}")
        return (_int(value[0], name, lo, hi), _int(value[1], name, lo, hi))
    v = _int(value, name, lo, hi)
    return (v, v)


def _float(value, name, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = (
        not math.isfinite(value)
        or value < lo
        or value > hi
        or (lo_open and value == lo)
        or (hi_open and value == hi)
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"`{name}` must be finite and in {left}{lo}, {hi}{right}, got {value!r}")
    return value


def _bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _pair_out(p):
    """A normalised pair as it appears in ``config()``: an int when h == w."""
    return p[0] if p[0] == p[1] else [p[0], p[1]]


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_out(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size, including the ceil_mode rule."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_input(x, layer, ndim=None):
    """The input must be a float32/float64 ndarray (of rank ``ndim``)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: input must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{layer}: input must be float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer}: input must be {ndim}-D, got shape {x.shape}")


def _as(a, dtype):
    return a if a.dtype == dtype else a.astype(dtype)


def _ops(dtype):
    """The op module for ``dtype``: ``functional`` (float32, honours the backend
    switch) or ``reference`` (the only float64 implementation, for gradient checks)."""
    if dtype == np.float64:
        from . import reference

        return reference
    from . import functional

    return functional


# ----------------------------------------------------------------------------


class Parameter:
    """A trainable array: ``.data``, ``.grad`` (None until backward), ``.trainable``, ``.name``.

    Parameters
    ----------
    data : np.ndarray
        The values; updated in place by the optimizers.
    name : str
        ``"weight"`` or ``"bias"`` inside a layer; ``Sequential`` renames it to
        its state_dict key (``"0.weight"``).
    trainable : bool, default True
        Optimizers skip the parameter when False.
    """

    __slots__ = ("data", "grad", "trainable", "name")

    def __init__(self, data, name, trainable=True):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"`data` must be a numpy.ndarray, got {type(data).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a str, got {type(name).__name__}")
        self.data = data
        self.grad = None
        self.trainable = _bool(trainable, "trainable")
        self.name = name

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        flag = "" if self.trainable else ", trainable=False"
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype}{flag})"


class Layer:
    """Base class of every layer.

    Subclasses implement ``forward(x)`` and ``backward(dy)``, declare their
    parameters with ``_add_param`` (weight before bias) and their buffers with
    ``_add_buffer``, and return their constructor arguments from ``config()``.
    Every subclass is registered under its class name for ``layer_from_config``.
    """

    _registry: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            Layer._registry[cls.__name__] = cls

    def __init__(self):
        self.training = True
        self.needs_input_grad = True
        self._params = {}
        self._buffers = {}
        # Filled instead of allocating when the layer is built by ``state_spec``.
        self._spec = {}

    # -- parameters and buffers ------------------------------------------------

    def _add_param(self, name, shape, bound=None, fill=None):
        """Declare a float32 parameter: uniform in +-bound, or filled with ``fill``."""
        shape = tuple(int(s) for s in shape)
        self._spec[name] = (shape, np.dtype(np.float32))
        if getattr(self, "_spec_only", False):
            return None
        if bound is not None:
            data = _config.rng().uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            data = np.full(shape, fill, dtype=np.float32)
        p = Parameter(data, name)
        self._params[name] = p
        return p

    def _add_buffer(self, name, shape, dtype, fill):
        shape = tuple(int(s) for s in shape)
        self._spec[name] = (shape, np.dtype(dtype))
        if getattr(self, "_spec_only", False):
            return None
        self._buffers[name] = np.full(shape, fill, dtype=dtype)
        return self._buffers[name]

    def parameters(self):
        """The parameters, weight before bias."""
        return list(self._params.values())

    def named_parameters(self):
        """``[(name, Parameter), ...]`` with local names (``"weight"``, ``"bias"``)."""
        return list(self._params.items())

    def buffers(self):
        """Non-trainable state saved with the weights (BatchNorm's running statistics)."""
        return dict(self._buffers)

    def state_dict(self):
        """Parameters then buffers, by local name, as copies."""
        d = {name: p.data.copy() for name, p in self._params.items()}
        d.update({name: b.copy() for name, b in self._buffers.items()})
        return d

    @classmethod
    def state_spec(cls, config):
        """``{name: (shape, dtype)}`` of the state a layer built from ``config`` has.

        Validates ``config`` exactly like the constructor but allocates nothing,
        so a file's architecture can be checked before any tensor is read.
        """
        if not isinstance(config, dict):
            raise TypeError(f"`config` of {cls.__name__} must be a dict, got {type(config).__name__}")
        obj = cls.__new__(cls)
        obj._spec_only = True
        try:
            obj.__init__(**config)
        except TypeError as exc:
            if "argument" in str(exc):
                raise TypeError(f"bad `config` for {cls.__name__}: {exc}") from None
            raise
        return dict(obj._spec)

    def astype(self, dtype):
        """Convert the float parameters and buffers to ``dtype`` (float32 or float64), in place."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
        for p in self._params.values():
            p.data = p.data.astype(dtype)
            p.grad = None
        for name, b in self._buffers.items():
            if b.dtype.kind == "f":
                self._buffers[name] = b.astype(dtype)
        return self

    def _weights(self, dtype):
        """``(weight, bias or None)`` as ``dtype`` arrays (no copy when they already are)."""
        bias = self._params.get("bias")
        return _as(self._params["weight"].data, dtype), None if bias is None else _as(bias.data, dtype)

    def _needs(self):
        """What backward computes: ``"x"`` unless ``needs_input_grad`` is off, and each trainable parameter."""
        return (("x",) if self.needs_input_grad else ()) + tuple(n for n, p in self._params.items() if p.trainable)

    def _store_grads(self, dx, dw, db):
        """Overwrite the parameter gradients from an op's ``(dx, dweight, dbias)``; return dx or None."""
        self._store_grad(self._params["weight"], dw)
        self._store_grad(self._params.get("bias"), db)
        return dx if self.needs_input_grad else None

    def _store_grad(self, param, g):
        """Overwrite ``param.grad`` (in the parameter's dtype)."""
        if param is None:
            return
        param.grad = None if g is None else _as(g, param.data.dtype)

    # -- modes -----------------------------------------------------------------

    def train(self, mode=True):
        """Switch to training mode (``mode=True``) or evaluation mode."""
        self.training = _bool(mode, "mode")
        return self

    def eval(self):
        """Switch to evaluation mode."""
        return self.train(False)

    # -- computation -----------------------------------------------------------

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (without the batch dimension)."""
        return tuple(input_shape)

    def _saved(self, name):
        v = getattr(self, name, None)
        if v is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return v

    def _check_dy(self, dy, shape):
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{type(self).__name__}: `dy` must be a numpy.ndarray, got {type(dy).__name__}")
        if dy.shape != tuple(shape):
            raise ValueError(f"{type(self).__name__}: `dy` has shape {dy.shape}, the output had {tuple(shape)}")

    # -- description -----------------------------------------------------------

    def config(self):
        """The constructor arguments as a JSON-serialisable dict."""
        return {}

    def __repr__(self):
        # Required arguments always, the others only when they differ from the default.
        sig = inspect.signature(type(self).__init__).parameters
        parts = []
        for k, v in self.config().items():
            default = sig[k].default if k in sig else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                parts.append(repr(v))
            elif v != default and not (isinstance(default, (int, float)) and [v] == [default, default]):
                parts.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def layer_types():
    """The registered layer type names."""
    return sorted(Layer._registry)


def layer_from_config(type_name, config):
    """Build a layer from its type name and ``config()`` dict.

    Raises
    ------
    ValueError
        Unknown ``type_name`` or an out-of-range argument.
    TypeError
        ``config`` is not a dict, has unknown keys or a value of the wrong type.
    """
    cls = Layer._registry.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ValueError(f"`type_name` must be one of {layer_types()}, got {type_name!r}")
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict, got {type(config).__name__}")
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(config) - set(params) - {"self"})
    if unknown:
        raise TypeError(f"`config` of {type_name} has unknown keys {unknown}")
    return cls(**config)


# ----------------------------------------------------------------------------
# convolution


class Conv2d(Layer):
    """2-D convolution, ``torch.nn.Conv2d`` semantics; weight (out, in/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        self.in_channels = _int(in_channels, "in_channels")
        self.out_channels = _int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"`padding` must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"`padding`='same' needs stride 1, got stride {self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", lo=0)
        self.dilation = _pair(dilation, "dilation")
        self.groups = _int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"`groups` ({self.groups}) must divide in_channels ({self.in_channels}) "
                f"and out_channels ({self.out_channels})"
            )
        has_bias = _bool(bias, "bias")
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
        self.weight = self._add_param("weight", (self.out_channels, self.in_channels // self.groups, kh, kw), bound)
        self.bias = self._add_param("bias", (self.out_channels,), bound) if has_bias else None
        self._x = None

    def _conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, x):
        _check_input(x, "Conv2d", 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: input has {x.shape[1]} channels, expected in_channels={self.in_channels}")
        y = _ops(x.dtype).conv2d(x, *self._weights(x.dtype), **self._conv_args())
        self._x = x
        self._y_shape = y.shape
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, self._y_shape)
        needs = self._needs()
        if not needs:
            return self._store_grads(None, None, None)
        w, _ = self._weights(x.dtype)
        return self._store_grads(*_ops(x.dtype).conv2d_backward(_as(dy, x.dtype), x, w, **self._conv_args(), needs=needs))

    def output_shape(self, input_shape):
        c, h, w = input_shape
        if self.padding == "same":
            return (self.out_channels, h, w)
        ph, pw = (0, 0) if self.padding == "valid" else self.padding
        return (
            self.out_channels,
            _conv_out(h, self.kernel_size[0], self.stride[0], ph, self.dilation[0]),
            _conv_out(w, self.kernel_size[1], self.stride[1], pw, self.dilation[1]),
        )

    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else _pair_out(self.padding),
            "dilation": _pair_out(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None or "bias" in self._spec,
        }


# ----------------------------------------------------------------------------
# pooling


class _Pool(Layer):
    def _window(self, kernel_size, stride, padding, dilation=(1, 1)):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding", lo=0)
        self.dilation = dilation
        for i in range(2):
            eff = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            if 2 * self.padding[i] > eff:
                raise ValueError(
                    f"`padding` must be at most half the (effective) kernel size, got padding "
                    f"{self.padding} for kernel_size {self.kernel_size}"
                )
        self._xshape = None

    def output_shape(self, input_shape):
        c, h, w = input_shape
        return (
            c,
            _pool_out(h, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode),
            _pool_out(w, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode),
        )

    def _shape_op_forward(self, x, op, *args):
        """Run ``op(x, *args)``, remembering what ``op_backward(dy, x_shape, *args)`` needs."""
        _check_input(x, type(self).__name__, 4)
        y = getattr(_ops(x.dtype), op)(x, *args)
        self._xshape, self._y_shape, self._dtype = x.shape, y.shape, x.dtype
        return y

    def _shape_op_backward(self, dy, op, *args):
        xshape = self._saved("_xshape")
        self._check_dy(dy, self._y_shape)
        if not self.needs_input_grad:
            return None
        return getattr(_ops(self._dtype), op + "_backward")(_as(dy, self._dtype), xshape, *args)

    def _window_config(self):
        return {
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "padding": _pair_out(self.padding),
        }


class MaxPool2d(_Pool):
    """Max pooling (``torch.nn.MaxPool2d``); ``dilation`` is an addition, keyword only."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, dilation=1):
        super().__init__()
        self._window(kernel_size, stride, padding, _pair(dilation, "dilation"))
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        _check_input(x, "MaxPool2d", 4)
        y, idx = _ops(x.dtype).max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        self._xshape, self._idx, self._y_shape, self._dtype = x.shape, idx, y.shape, x.dtype
        return y

    def backward(self, dy):
        xshape = self._saved("_xshape")
        self._check_dy(dy, self._y_shape)
        if not self.needs_input_grad:
            return None
        return _ops(self._dtype).max_pool2d_backward(_as(dy, self._dtype), self._idx, xshape)

    def config(self):
        c = self._window_config()
        c["ceil_mode"] = self.ceil_mode
        if self.dilation != (1, 1):
            c["dilation"] = _pair_out(self.dilation)
        return c


class AvgPool2d(_Pool):
    """Average pooling (``torch.nn.AvgPool2d``)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self._window(kernel_size, stride, padding)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")
        self.count_include_pad = _bool(count_include_pad, "count_include_pad")

    def _args(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def forward(self, x):
        return self._shape_op_forward(x, "avg_pool2d", *self._args())

    def backward(self, dy):
        return self._shape_op_backward(dy, "avg_pool2d", *self._args())

    def config(self):
        c = self._window_config()
        c["ceil_mode"] = self.ceil_mode
        c["count_include_pad"] = self.count_include_pad
        return c


class LPPool2d(_Pool):
    """Power-average pooling: ``(sum over window of x**p) ** (1/p)`` (``torch.nn.LPPool2d``)."""

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        super().__init__()
        self.norm_type = _float(norm_type, "norm_type", lo=0.0, lo_open=True)
        self._window(kernel_size, stride, 0)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        _check_input(x, "LPPool2d", 4)
        y = _ops(x.dtype).lp_pool2d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)
        self._x, self._y = x, y
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, self._y.shape)
        if not self.needs_input_grad:
            return None
        return _ops(x.dtype).lp_pool2d_backward(_as(dy, x.dtype), x, self._y, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)

    def config(self):
        return {
            "norm_type": self.norm_type,
            "kernel_size": _pair_out(self.kernel_size),
            "stride": _pair_out(self.stride),
            "ceil_mode": self.ceil_mode,
        }


class AdaptiveAvgPool2d(_Pool):
    """Adaptive average pooling to ``output_size`` (an int or an (h, w) pair)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _pair(output_size, "output_size")
        self._xshape = None

    def forward(self, x):
        return self._shape_op_forward(x, "adaptive_avg_pool2d", self.output_size)

    def backward(self, dy):
        return self._shape_op_backward(dy, "adaptive_avg_pool2d", self.output_size)

    def output_shape(self, input_shape):
        return (input_shape[0],) + self.output_size

    def config(self):
        return {"output_size": _pair_out(self.output_size)}


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """``AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self):
        super().__init__(1)

    def config(self):
        return {}


# ----------------------------------------------------------------------------
# normalisation


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, ``torch.nn.BatchNorm2d`` semantics.

    Training mode normalises with the batch mean and the biased variance and
    updates ``running_mean`` / ``running_var`` (unbiased) with
    ``r = (1 - momentum) * r + momentum * batch_stat``. Evaluation mode, and a
    frozen layer (weight and bias not trainable), use the running statistics.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = _int(num_features, "num_features")
        self.eps = _float(eps, "eps", lo=0.0, lo_open=True)
        self.momentum = _float(momentum, "momentum", lo=0.0, hi=1.0)
        c = self.num_features
        self.weight = self._add_param("weight", (c,), fill=1.0)
        self.bias = self._add_param("bias", (c,), fill=0.0)
        self._add_buffer("running_mean", (c,), np.float32, 0.0)
        self._add_buffer("running_var", (c,), np.float32, 1.0)
        self._add_buffer("num_batches_tracked", (), np.int64, 0)
        self._cache = None

    @property
    def running_mean(self):
        return self._buffers["running_mean"]

    @property
    def running_var(self):
        return self._buffers["running_var"]

    @property
    def num_batches_tracked(self):
        return self._buffers["num_batches_tracked"]

    def _uses_batch_stats(self):
        return self.training and (self.weight.trainable or self.bias.trainable)

    def forward(self, x):
        _check_input(x, "BatchNorm2d", 4)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: input has {x.shape[1]} channels, expected num_features={self.num_features}")
        # NumPy's reductions sum in an order that depends on the memory layout:
        # an explicit C-contiguous copy makes the result layout-independent.
        x = np.ascontiguousarray(x)
        dt = x.dtype
        shape = (1, -1, 1, 1)
        # An empty batch has no statistics: it takes the running-stats path (empty output, zero grads).
        if self._uses_batch_stats() and x.size:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            if n <= 1:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel when training, got input {x.shape}")
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            xc = x - mean.astype(dt).reshape(shape)
            var = np.mean(np.square(xc, dtype=np.float64), axis=(0, 2, 3))
            m = self.momentum
            rm, rv = self.running_mean, self.running_var
            rm[...] = (1.0 - m) * rm + m * mean
            rv[...] = (1.0 - m) * rv + m * var * (n / (n - 1))
            self.num_batches_tracked[...] += 1
            invstd = (1.0 / np.sqrt(var + self.eps)).astype(dt)
            batch = True
        else:
            xc = x - _as(self.running_mean, dt).reshape(shape)
            invstd = (1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)).astype(dt)
            batch = False
        xhat = xc * invstd.reshape(shape)
        y = xhat * _as(self.weight.data, dt).reshape(shape) + _as(self.bias.data, dt).reshape(shape)
        self._cache = (xhat, invstd, batch)
        return y

    def backward(self, dy):
        xhat, invstd, batch = self._saved("_cache")
        self._check_dy(dy, xhat.shape)
        dt = xhat.dtype
        dy = np.ascontiguousarray(dy, dtype=dt)
        axes = (0, 2, 3)
        shape = (1, -1, 1, 1)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        self._store_grad(self.weight, dgamma if self.weight.trainable else None)
        self._store_grad(self.bias, dbeta if self.bias.trainable else None)
        if not self.needs_input_grad:
            return None
        g = _as(self.weight.data, dt).reshape(shape)
        if not batch:
            return dy * (g * invstd.reshape(shape))
        n = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        # dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        return (g * invstd.reshape(shape)) * (
            dy - (dbeta / n).reshape(shape) - xhat * (dgamma / n).reshape(shape)
        )

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}


# ----------------------------------------------------------------------------
# element-wise


class _Elementwise(Layer):
    """``y = f(x)`` element by element, with ``dx = dy * f'`` written in terms of ``y``."""

    def _f(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _df(self, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        _check_input(x, type(self).__name__)
        self._y = self._f(x)
        return self._y

    def backward(self, dy):
        y = self._saved("_y")
        self._check_dy(dy, y.shape)
        if not self.needs_input_grad:
            return None
        return _as(dy, y.dtype) * self._df(y)


class ReLU(_Elementwise):
    """``max(x, 0)``; NaN propagates."""

    def _f(self, x):
        return np.maximum(x, 0)

    def _df(self, y):
        # Multiplying by the mask is ~30x faster than np.where here; a non-finite dy
        # where y <= 0 becomes NaN instead of 0 (fit stops on non-finite gradients anyway).
        return y > 0


class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    def _f(self, x):
        return np.tanh(x)

    def _df(self, y):
        return 1 - y * y


class Sigmoid(_Elementwise):
    """Logistic sigmoid, computed without overflow for large |x|."""

    def _f(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def _df(self, y):
        return y * (1 - y)


class Softmax(Layer):
    """Softmax along ``axis`` (max-shifted, so large inputs do not overflow)."""

    def __init__(self, axis=-1):
        super().__init__()
        self.axis = _int(axis, "axis", lo=-64, hi=63)

    def forward(self, x):
        _check_input(x, "Softmax")
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Softmax: `axis` {self.axis} is out of range for input of shape {x.shape}")
        z = x - x.max(axis=self.axis, keepdims=True)
        e = np.exp(z)
        y = e / e.sum(axis=self.axis, keepdims=True)
        self._y = y
        return y

    def backward(self, dy):
        y = self._saved("_y")
        self._check_dy(dy, y.shape)
        if not self.needs_input_grad:
            return None
        dy = _as(dy, y.dtype)
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))

    def config(self):
        return {"axis": self.axis}


class Dropout(Layer):
    """Inverted dropout: in training mode zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; the identity in evaluation mode.

    The mask is drawn from ``self.rng`` (``set_rng``); when that is None, from
    ``striate._config.rng()`` at call time.
    """

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _float(p, "p", lo=0.0, hi=1.0, hi_open=True)
        self.rng = None
        self._mask = None

    def set_rng(self, gen):
        """Draw masks from ``gen`` (a ``numpy.random.Generator``, or None for the global RNG)."""
        if gen is not None and not isinstance(gen, np.random.Generator):
            raise TypeError(f"`gen` must be a numpy.random.Generator or None, got {type(gen).__name__}")
        self.rng = gen

    def forward(self, x):
        _check_input(x, "Dropout")
        if not self.training or self.p == 0.0:
            self._mask = False
            return x  # the identity, as torch returns its input
        gen = self.rng if self.rng is not None else _config.rng()
        keep = gen.random(x.shape) >= self.p
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._mask = mask
        return x * mask

    def backward(self, dy):
        mask = self._mask
        if mask is None:
            raise RuntimeError("Dropout.backward called before forward")
        if not self.needs_input_grad:
            return None
        if mask is False:
            return dy
        self._check_dy(dy, mask.shape)
        return _as(dy, mask.dtype) * mask

    def config(self):
        return {"p": self.p}


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C order as ``torch.nn.Flatten``."""

    def forward(self, x):
        _check_input(x, "Flatten")
        if x.ndim < 2:
            raise ValueError(f"Flatten: input must have a batch dimension, got shape {x.shape}")
        self._xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        xshape = self._saved("_xshape")
        n = xshape[0]
        self._check_dy(dy, (n, int(np.prod(xshape[1:], dtype=np.int64))))
        if not self.needs_input_grad:
            return None
        return dy.reshape(xshape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)


# ----------------------------------------------------------------------------
# fully connected


class Linear(Layer):
    """``y = x @ W.T + b`` with weight (out_features, in_features), as ``torch.nn.Linear``.

    Examples
    --------
    >>> import numpy as np
    >>> lin = Linear(3, 2)
    >>> lin(np.ones((4, 3), np.float32)).shape
    (4, 2)
    >>> lin.backward(np.ones((4, 2), np.float32)).shape
    (4, 3)
    >>> [(name, p.grad.shape) for name, p in lin.named_parameters()]
    [('weight', (2, 3)), ('bias', (2,))]
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _int(in_features, "in_features")
        self.out_features = _int(out_features, "out_features")
        has_bias = _bool(bias, "bias")
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = self._add_param("weight", (self.out_features, self.in_features), bound)
        self.bias = self._add_param("bias", (self.out_features,), bound) if has_bias else None
        self._x = None

    def forward(self, x):
        _check_input(x, "Linear", 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: input has shape {x.shape}, expected (N, {self.in_features})")
        y = _ops(x.dtype).linear(x, *self._weights(x.dtype))
        self._x = x
        return y

    def backward(self, dy):
        x = self._saved("_x")
        self._check_dy(dy, (x.shape[0], self.out_features))
        needs = self._needs()
        if not needs:
            return self._store_grads(None, None, None)
        w, _ = self._weights(x.dtype)
        return self._store_grads(*_ops(x.dtype).linear_backward(_as(dy, x.dtype), x, w, needs=needs))

    def output_shape(self, input_shape):
        return (self.out_features,)

    def config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None or "bias" in self._spec,
        }
