"""The base of every layer: Parameter, Layer, the layer registry and the helpers the layers share.

``Layer`` declares parameters and buffers, names its state as torch does,
switches modes and registers every public subclass under its class name for
``layer_from_config``. The argument checks the constructors use are those of
``striate._args`` (bound here under short names); ``_ops`` picks the op module
for a dtype.

``spec_state`` validates one ``{"type", "config"}`` entry of an architecture
(recursively, for containers) and returns the state it implies without
allocating anything; ``striate.io`` checks files with it.

Not here: any concrete layer (see the family modules beside this one), the
containers (``striate.layers.container``) or the chaining of layers
(``striate.model.Sequential``, ``striate.layers.chain``).
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from .. import _args, _config, _core, functional, reference

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest integer hyper-parameter accepted (channels, features, kernel sizes ...).
_INT_MAX = _args.INT32_MAX

# ----------------------------------------------------------------------------
# argument checking shared by the constructors (and so by io's schema check)

_float = _args.real_in
_bool = _args.boolean


def _int(value, name, lo=1, hi=_INT_MAX):
    """An int in [lo, hi]; bools and floats are refused."""
    return _args.int_in(value, name, lo, hi)


def _pair(value, name, lo=1, hi=_INT_MAX):
    """An int or an (h, w) pair of ints in [lo, hi], returned as a tuple."""
    return _args.int_or_pair(value, name, lo, hi)


def _pair_out(p):
    """A normalised pair as it appears in ``config()``: an int when h == w."""
    return p[0] if p[0] == p[1] else [p[0], p[1]]


def _conv_out(size, k, s, p, d):
    """Convolution output size along one axis: the core's one formula (shape.hpp),
    or 0 when the kernel does not fit (callers report that with the layer's name)."""
    try:
        return int(_core.conv_out_size(size, k, s, p, p, d))
    except (ValueError, OverflowError, TypeError):
        return 0


def _pool_out(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size, ceil_mode rule included: the core's one
    formula (shape.hpp), or 0 when the window does not fit."""
    try:
        return int(_core.pool_out_size(size, k, s, p, d, bool(ceil_mode)))
    except (ValueError, OverflowError, TypeError):
        return 0


def _check_input(x, layer, ndim=None):
    """The input must be a float32/float64 ndarray (of rank ``ndim``)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: input must be a numpy.ndarray, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{layer}: input is a numpy.ma.MaskedArray, whose mask would be ignored; pass a plain array")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{layer}: input must be float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer}: input must be {ndim}-D, got shape {x.shape}")


def _as(a, dtype):
    return a if a.dtype == dtype else a.astype(dtype)


def _ops(dtype):
    """The op module for ``dtype``: ``functional`` (float32, honours the backend
    switch) or ``reference`` (the only float64 implementation, for gradient checks)."""
    return reference if dtype == np.float64 else functional


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
        # Where the layer sits in a model ("3.body.0"); set by the container holding it.
        self._path = ""

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

    @classmethod
    def _config_state(cls, config, where, budget):
        """``state_spec`` of an architecture entry at ``where``; containers override it to recurse."""
        if not isinstance(config, dict) or not all(_json_value_ok(v) for v in config.values()):
            raise ValueError(
                f"layer {where} ({cls.__name__}): config must map names to numbers, bools, strings or pairs"
            )
        try:
            return cls.state_spec(config)
        except (TypeError, ValueError) as exc:
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"layer {where} ({cls.__name__}): {exc}") from None

    @classmethod
    def _build_from_config(cls, config):
        """A layer from its ``config()`` dict; containers override it to build their children."""
        params = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(config) - set(params) - {"self"})
        if unknown:
            raise TypeError(f"`config` of {cls.__name__} has unknown keys {unknown}")
        return cls(**config)

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
    return cls._build_from_config(config)


# ----------------------------------------------------------------------------
# architecture entries: the schema a file's layers are checked against

MAX_SPEC_DEPTH = 32


def _json_value_ok(v, depth=0):
    """A config value a leaf layer accepts: None, a bool, str, int, finite float or a short list of them."""
    if v is None or isinstance(v, (bool, str)) or (isinstance(v, int) and not isinstance(v, bool)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list) and depth == 0:
        return len(v) <= 4 and all(_json_value_ok(e, 1) for e in v)
    return False


def spec_state(spec, where, budget):
    """Validate one architecture entry ``{"type": name, "config": {...}}``; return its state.

    Parameters
    ----------
    spec : object
        The entry as parsed from JSON.
    where : str
        Its position in the model (``"3"``, ``"3.body.0"``), for the messages;
        its dots count the nesting depth (at most ``MAX_SPEC_DEPTH``).
    budget : list of one int
        How many more entries may follow (decremented here), so that a file
        cannot describe an unbounded number of layers.

    Returns
    -------
    dict
        ``{local state name: (shape, dtype)}``, names relative to the entry
        (``"weight"``, ``"body.0.weight"``). Nothing is allocated.

    Raises
    ------
    ValueError or TypeError
        The message starts with ``layer <where>`` and says what is wrong.
    """
    if where.count(".") > MAX_SPEC_DEPTH:
        raise ValueError(f"layer {where}: containers are nested more than {MAX_SPEC_DEPTH} deep")
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"layer {where}: the architecture holds too many layers")
    if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
        raise ValueError(f"layer {where} must be an object with 'type' and 'config'")
    t, c = spec["type"], spec["config"]
    if not isinstance(t, str) or t not in Layer._registry:
        raise ValueError(f"layer {where}: unknown layer type {t!r}")
    return Layer._registry[t]._config_state(c, where, budget)
