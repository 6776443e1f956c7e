"""The optimizers (SGD, Adam, AdamW, RMSprop) and gradient clipping; see ``striate.optim``."""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, List, Tuple, Union

import numpy as np

from .. import _core
from .._config import get_backend
from ..layers import Parameter

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "clip_grad_norm",
]

Params = Union[Iterable[Parameter], Iterable[Dict[str, Any]], Any]


# ----------------------------------------------------------------------------
# argument checks (errors name the argument and what was received)


def _number(value, name, lo=0.0, hi=math.inf, lo_open=False, hi_open=False, allow_inf=False):
    """A float in the given range; bools, strings and NaN are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    finite = math.isfinite(value) or (allow_inf and value == math.inf)
    if not finite or value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        what = "" if allow_inf else "finite and "
        raise ValueError(f"`{name}` must be {what}in {left}{lo}, {hi}{right}, got {value!r}")
    return value


def _count(value, name, lo=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"`{name}` must be >= {lo}, got {int(value)}")
    return int(value)


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _plain(value):
    """A 0-d array or numpy scalar (as a checkpoint gives back) as a Python number."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value.item() if isinstance(value, np.generic) else value


class _Scratch:
    """Two reusable work arrays per dtype, sized to the largest parameter seen.

    The updates write their temporaries into views of these instead of
    allocating new arrays at every step; they never hold state between calls.
    """

    def __init__(self):
        self._bufs = {}

    def get(self, like):
        """Two arrays shaped and typed like ``like`` (views into the shared buffers)."""
        key = like.dtype.str
        bufs = self._bufs.get(key)
        if bufs is None or bufs[0].size < like.size:
            bufs = (np.empty(like.size, like.dtype), np.empty(like.size, like.dtype))
            self._bufs[key] = bufs
        return bufs[0][: like.size].reshape(like.shape), bufs[1][: like.size].reshape(like.shape)


# ----------------------------------------------------------------------------
# the fused updates

# False: every update takes the NumPy path (the tests compare the two paths).
_FUSED = True
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _fusable(data, grad, *state):
    """Whether ``_core``'s one-pass update may replace the NumPy code for these arrays (None in ``state``: unused).

    That is: the C++ backend; plain ndarrays of one dtype, float32 or float64,
    and one shape; C-contiguous and aligned, and writable but for ``grad``.
    The kernels give the NumPy code's results bit for bit (csrc/optim.hpp);
    anything else, or arrays that share memory (the kernel then returns
    False and changes nothing), takes the NumPy code.
    """
    if not _FUSED or get_backend() == "numpy":
        return False
    dt = data.dtype
    if (dt != _F32 and dt != _F64) or type(data) is not np.ndarray or not data.flags.carray:
        return False
    shape = data.shape
    if type(grad) is not np.ndarray or grad.dtype != dt or grad.shape != shape:
        return False
    flags = grad.flags  # grad may be read-only
    if not (flags.c_contiguous and flags.aligned):
        return False
    for a in state:
        if a is None:
            continue
        if type(a) is not np.ndarray or a.dtype != dt or a.shape != shape or not a.flags.carray:
            return False
    return True


def _decayed(grad, p, wd, out):
    """``grad + wd * p`` (L2 weight decay on the gradient) written into ``out``."""
    np.multiply(p, p.dtype.type(wd), out=out)
    np.add(grad, out, out=out)
    return out


def _param_list(obj, where):
    """The Parameters in ``obj``: a Parameter, a model (``.parameters()``) or an iterable."""
    if isinstance(obj, Parameter):
        return [obj]
    if hasattr(obj, "parameters") and callable(obj.parameters):
        obj = obj.parameters()
    if isinstance(obj, (str, bytes, dict)) or not hasattr(obj, "__iter__"):
        raise TypeError(f"`{where}` must be an iterable of striate Parameters, got {type(obj).__name__}")
    out = list(obj)
    for i, p in enumerate(out):
        if not isinstance(p, Parameter):
            raise TypeError(f"`{where}[{i}]` must be a striate Parameter, got {type(p).__name__}")
    if len({id(p) for p in out}) != len(out):
        raise ValueError(f"`{where}` holds the same Parameter more than once")
    return out


def _split_groups(params):
    """``[(where, group dict)]`` for a list of Parameters or of parameter-group dicts."""
    if isinstance(params, Parameter):
        raise TypeError("`params` must be an iterable of Parameters or of dicts (parameter groups), "
                        "got a single Parameter; pass [param]")
    if isinstance(params, dict):
        raise TypeError("`params` must be an iterable of Parameters or of dicts (parameter groups), "
                        "got a dict; pass [group]")
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"`params` must be an iterable of Parameters or of dicts, got {type(params).__name__}")
    items = list(params)
    if not items:
        raise ValueError("`params` must hold at least one Parameter, got an empty list")
    kinds = {isinstance(x, dict) for x in items}
    if kinds == {True}:
        return [(f"params[{i}]", g) for i, g in enumerate(items)]
    if kinds == {True, False}:
        raise TypeError("`params` mixes Parameters and dicts: pass a list of Parameters or a list of parameter groups")
    return [(None, {"params": items})]


# ----------------------------------------------------------------------------
# the base class


class Optimizer:
    """Base class: parameter groups, ``step()``, ``zero_grad()``, ``lr`` and ``state_dict()``.

    Subclasses list their group options in ``_option_names`` (``"lr"`` first),
    check them in ``_check``, name their per-parameter state in ``_slots`` and
    say which of it must be present in ``_required``.
    """

    _option_names: Tuple[str, ...] = ("lr",)
    _split_options: Dict[str, Tuple[str, ...]] = {}  # an option stored as several flat state_dict keys
    _legacy: Dict[str, Any] = {}  # value assumed when a state_dict of an older striate lacks the key
    _slots: Tuple[str, ...] = ()  # per-parameter state; "step" is an int, the others arrays

    def __init__(self, params: Params, defaults: Dict[str, Any]) -> None:
        self.defaults = self._check_options(defaults, lambda k: k, construct=True)
        self.param_groups: List[Dict[str, Any]] = []
        self.params: List[Parameter] = []
        self.state: List[Dict[str, Any]] = []
        self._index: Dict[int, int] = {}
        self._scratch = _Scratch()
        for where, group in _split_groups(params):
            self._add_group(group, where)
        if not self.params:
            raise ValueError("`params` must hold at least one Parameter, got only empty parameter groups")

    # -- groups ----------------------------------------------------------------

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a parameter group (a dict as in ``params``), as ``torch.optim.Optimizer.add_param_group``.

        Raises
        ------
        TypeError, ValueError
            Not a dict, an unknown key, a bad option, or a Parameter that is
            already in a group; the optimizer is then unchanged.
        """
        self._add_group(param_group, "param_group")

    def _add_group(self, group, where):
        if not isinstance(group, dict):
            raise TypeError(f"`{where}` must be a dict (a parameter group), got {type(group).__name__}")
        label = where or "params"
        if "params" not in group:
            raise ValueError(f"`{label}` lacks the key 'params'")
        unknown = sorted(set(group) - {"params"} - set(self._option_names), key=str)
        if unknown:
            allowed = ", ".join(repr(k) for k in ("params",) + self._option_names)
            raise ValueError(f"`{label}` has unknown keys {unknown}; a {type(self).__name__} group takes {allowed}")
        plist = _param_list(group["params"], f"{where}['params']" if where else "params")
        for j, p in enumerate(plist):
            if id(p) in self._index:
                raise ValueError(
                    f"`{where}['params'][{j}]` ({p.name!r}) is already in another parameter group; "
                    "a Parameter may be in only one group"
                )
        opts = {k: group.get(k, self.defaults[k]) for k in self._option_names}
        opts = self._check_options(opts, (lambda k: f"{where}['{k}']") if where else (lambda k: k), construct=True)
        for p in plist:
            self._index[id(p)] = len(self.params)
            self.params.append(p)
            self.state.append({})
        self.param_groups.append({"params": plist, **opts})

    def _check_options(self, opts, name, construct=False):
        """Validated options (``name(key)`` names them in errors). ``lr`` may be 0 except at construction."""
        out = {"lr": _number(opts["lr"], name("lr"), lo_open=construct)}
        out.update(self._check(opts, name))
        return out

    def _check(self, opts, name):  # pragma: no cover - abstract
        raise NotImplementedError

    def _required(self, opts):
        """The state slots a parameter of a group with ``opts`` must have once it has any state."""
        return self._slots

    def _group_options(self, gi):
        """Group ``gi``'s options, checked (the dicts are public and may have been edited)."""
        group = self.param_groups[gi]
        missing = [k for k in self._option_names if k not in group]
        if missing:
            raise ValueError(f"`param_groups[{gi}]` lacks {', '.join(map(repr, missing))}")
        return self._check_options(group, lambda k: f"param_groups[{gi}]['{k}']")

    @property
    def lr(self) -> float:
        """Group 0's learning rate. Setting it sets every group's (finite, >= 0)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = _number(value, "lr")
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for p in self.params:
            p.grad = None

    def _active(self):
        """``(options, i, param, grad)`` for each trainable parameter with a gradient, group by group."""
        for gi, group in enumerate(self.param_groups):
            opts = self._group_options(gi)
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None:
                    raise ValueError(f"`param_groups[{gi}]['params']` holds a Parameter the optimizer was not given; "
                                     "use add_param_group")
                if not p.trainable or p.grad is None:
                    continue
                g = p.grad
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"gradient of {p.name!r} must be a numpy.ndarray, got {type(g).__name__}")
                if g.shape != p.data.shape:
                    raise ValueError(f"gradient of {p.name!r} has shape {g.shape}, the parameter {p.data.shape}")
                yield opts, i, p, g if g.dtype == p.data.dtype else g.astype(p.data.dtype)

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state -----------------------------------------------------------------

    def _flat(self, opts):
        out = {}
        for k in self._option_names:
            parts = self._split_options.get(k)
            if parts:
                out.update(zip(parts, opts[k]))
            else:
                out[k] = opts[k]
        return out

    def _flat_keys(self):
        return [p for k in self._option_names for p in self._split_options.get(k, (k,))]

    def _unflat(self, flat):
        return {k: tuple(flat[p] for p in self._split_options[k]) if k in self._split_options else flat[k]
                for k in self._option_names}

    def state_dict(self) -> Dict[str, Any]:
        """The options and per-parameter state as flat keys (arrays are copies); see the module notes."""
        d: Dict[str, Any] = {"type": type(self).__name__}
        n = len(self.param_groups)
        d.update(self._flat(self._group_options(0)))
        if n > 1:
            d["groups"] = n
            for gi, group in enumerate(self.param_groups):
                d[f"group.{gi}.size"] = len(group["params"])
            for gi in range(1, n):
                for k, v in self._flat(self._group_options(gi)).items():
                    d[f"group.{gi}.{k}"] = v
        for i, st in enumerate(self.state):
            for k, v in st.items():
                d[f"state.{i}.{k}"] = v.copy() if isinstance(v, np.ndarray) else v
        return d

    def _read_groups(self, d):
        """The group options held in ``d`` (checked), and the keys that are not state."""
        n = len(self.param_groups)
        got = _count(_plain(d.get("groups", 1)), "d['groups']")
        if got != n:
            raise ValueError(f"`d` holds {got} parameter groups, the optimizer has {n}")
        known = {"type", "groups"}
        if n > 1:
            for gi, group in enumerate(self.param_groups):
                key = f"group.{gi}.size"
                known.add(key)
                if key not in d:
                    raise ValueError(f"`d` lacks {key!r}")
                size = _count(_plain(d[key]), f"d[{key!r}]", lo=0)
                if size != len(group["params"]):
                    raise ValueError(f"`d` has {size} parameters in group {gi}, the optimizer {len(group['params'])}")
        options = []
        for gi in range(n):
            prefix = "" if gi == 0 else f"group.{gi}."
            flat = {}
            for k in self._flat_keys():
                known.add(prefix + k)
                if prefix + k in d:
                    flat[k] = _plain(d[prefix + k])
                elif k in self._legacy:
                    flat[k] = self._legacy[k]
                else:
                    raise ValueError(f"`d` lacks the hyper-parameter {prefix + k!r}")
            options.append(self._check_options(self._unflat(flat), lambda k, p=prefix: f"d['{p}{k}']"))
        return options, known

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output. All or nothing: everything is checked first."""
        if not isinstance(d, dict):
            raise TypeError(f"`d` must be a dict, got {type(d).__name__}")
        if d.get("type") != type(self).__name__:
            raise ValueError(f"`d` is the state of a {d.get('type')!r} optimizer, not {type(self).__name__}")
        options, known = self._read_groups(d)
        owner = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        new_state: List[Dict[str, Any]] = [dict() for _ in self.params]
        for key, v in d.items():
            if not isinstance(key, str):
                raise ValueError(f"`d` keys must be strings, got {key!r}")
            if not key.startswith("state."):
                if key not in known:
                    raise ValueError(f"`d` has an unknown entry {key!r}")
                continue
            parts = key.split(".")
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(self.params):
                raise ValueError(f"`d` has a state entry {key!r} for no parameter (there are {len(self.params)})")
            i, slot = int(parts[1]), parts[2]
            p = self.params[i]
            if slot == "step" and "step" in self._slots:
                new_state[i]["step"] = _count(_plain(v), key, lo=0)
            elif slot in self._slots and slot != "step":
                if not isinstance(v, np.ndarray) or v.shape != p.data.shape or v.dtype != p.data.dtype:
                    got = (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v).__name__
                    raise ValueError(f"`d[{key!r}]` must be an array of shape {p.data.shape} {p.data.dtype}, got {got}")
                new_state[i][slot] = v.copy()
            else:
                raise ValueError(f"`d` has an unknown state slot {key!r}")
        for i, st in enumerate(new_state):
            missing = sorted(set(self._required(options[owner[i]])) - set(st))
            if st and missing:
                raise ValueError(f"`d` holds state for parameter {i} without {', '.join(missing)}")
        for group, opts in zip(self.param_groups, options):
            group.update(opts)
        self.state = new_state

    def __repr__(self) -> str:
        if len(self.param_groups) > 1:
            lrs = [g["lr"] for g in self.param_groups]
            return f"{type(self).__name__}({len(self.param_groups)} parameter groups, lr={lrs!r})"
        g = self.param_groups[0]
        return f"{type(self).__name__}(" + ", ".join(f"{k}={g[k]!r}" for k in self._option_names) + ")"


# ----------------------------------------------------------------------------
# the optimizers


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly ``torch.optim.SGD``.

    ``g = grad + weight_decay * p``; with momentum, ``buf = g`` on the first
    step and ``buf = momentum * buf + (1 - dampening) * g`` after;
    ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; then ``p -= lr * g``.

    Parameters
    ----------
    params : list of Parameter, list of dict, or a model
        The parameters, or parameter groups (see the module notes).
    lr : float, default 0.01
        The learning rate, > 0.
    momentum, dampening : float, default 0.0
        ``momentum`` >= 0; ``dampening`` in [0, 1].
    nesterov : bool, default False
        Needs ``momentum`` > 0 and ``dampening`` = 0 (as torch).
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import Parameter
    >>> p = Parameter(np.array([1.0, 2.0]), "w")
    >>> opt = SGD([p], lr=0.1)
    >>> p.grad = np.array([1.0, -1.0])
    >>> opt.step()
    >>> p.data
    array([0.9, 2.1])
    """

    _option_names = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _legacy = {"dampening": 0.0}
    _slots = ("momentum_buffer",)

    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _check(self, o, name):
        m = _number(o["momentum"], name("momentum"))
        d = _number(o["dampening"], name("dampening"), hi=1.0)
        nesterov = _flag(o["nesterov"], name("nesterov"))
        wd = _number(o["weight_decay"], name("weight_decay"))
        if nesterov and not (m > 0 and d == 0):
            raise ValueError(f"`{name('nesterov')}`=True requires momentum > 0 and dampening = 0, "
                             f"got momentum={m}, dampening={d}")
        return {"momentum": m, "dampening": d, "nesterov": nesterov, "weight_decay": wd}

    def step(self) -> None:
        """Update every trainable parameter that has a gradient, in place."""
        for o, i, p, grad in self._active():
            if self._fused(o, i, p, grad):
                continue
            dt = p.data.dtype.type
            m, wd = o["momentum"], o["weight_decay"]
            t1, t2 = self._scratch.get(p.data)
            g = _decayed(grad, p.data, wd, t1) if wd else grad  # grad itself is never modified
            if m:
                buf = self.state[i].get("momentum_buffer")
                if buf is None:
                    buf = np.array(g, copy=True)
                    self.state[i]["momentum_buffer"] = buf
                else:
                    buf *= dt(m)
                    if o["dampening"]:
                        np.multiply(g, dt(1 - o["dampening"]), out=t2)
                        buf += t2
                    else:
                        buf += g
                if o["nesterov"]:
                    np.multiply(buf, dt(m), out=t2)
                    g = np.add(g, t2, out=t2)
                else:
                    g = buf
            step = g if (g is t1 or g is t2) else t1  # a scratch array g may be overwritten
            np.multiply(g, dt(o["lr"]), out=step)
            p.data -= step

    def _fused(self, o, i, p, grad):
        """The update of ``step()`` in one C++ pass; False when it does not apply (nothing changed)."""
        m, d, wd = o["momentum"], o["dampening"], o["weight_decay"]
        buf = self.state[i].get("momentum_buffer") if m else None
        if not _fusable(p.data, grad, buf):
            return False
        first = bool(m) and buf is None
        if first:
            buf = np.empty_like(p.data)  # the kernel writes g into it, as np.array(g, copy=True)
        if not _core.sgd_step(p.data, grad, buf, lr=o["lr"], weight_decay=wd if wd else None, momentum=m,
                              dampening=1 - d if d else None, nesterov=o["nesterov"], first=first):
            return False
        if first:
            self.state[i]["momentum_buffer"] = buf
        return True


class Adam(Optimizer):
    """Adam, exactly ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient; no amsgrad).

    Parameters
    ----------
    params : list of Parameter, list of dict, or a model
        The parameters, or parameter groups (see the module notes).
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
    weight_decay : float, default 0.0
    """

    _option_names = ("lr", "betas", "eps", "weight_decay")
    _split_options = {"betas": ("beta1", "beta2")}
    _slots = ("step", "exp_avg", "exp_avg_sq")
    _decoupled = False  # AdamW: decay the weights, not the gradient

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check(self, o, name):
        betas = o["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"`{name('betas')}` must be a pair (beta1, beta2), got {betas!r}")
        b1 = _number(betas[0], name("betas") + "[0]", hi=1.0, hi_open=True)
        b2 = _number(betas[1], name("betas") + "[1]", hi=1.0, hi_open=True)
        return {"betas": (b1, b2), "eps": _number(o["eps"], name("eps")),
                "weight_decay": _number(o["weight_decay"], name("weight_decay"))}

    def step(self) -> None:
        """Update every trainable parameter that has a gradient, in place."""
        for o, i, p, grad in self._active():
            dt = p.data.dtype.type
            lr, (b1, b2), wd = o["lr"], o["betas"], o["weight_decay"]
            st = self.state[i]
            if "step" not in st:
                st["step"] = 0
                st["exp_avg"] = np.zeros_like(p.data)
                st["exp_avg_sq"] = np.zeros_like(p.data)
            st["step"] += 1
            t = st["step"]
            if _fusable(p.data, grad, st["exp_avg"], st["exp_avg_sq"]) and _core.adam_step(
                p.data, grad, st["exp_avg"], st["exp_avg_sq"], step_size=lr / (1 - b1**t),
                weight_decay=wd if wd and not self._decoupled else None,
                decoupled=1 - lr * wd if wd and self._decoupled else None, one_minus_beta1=1 - b1, beta2=b2,
                one_minus_beta2=1 - b2, bias_correction2=math.sqrt(1 - b2**t), eps=o["eps"]):
                continue
            t1, t2 = self._scratch.get(p.data)
            g = grad
            if wd and self._decoupled:
                p.data *= dt(1 - lr * wd)
            elif wd:
                g = _decayed(grad, p.data, wd, t1)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            np.subtract(g, m, out=t2)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            t2 *= dt(1 - b1)
            m += t2
            np.multiply(g, g, out=t2)  # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
            t2 *= dt(1 - b2)
            v *= dt(b2)
            v += t2
            denom = np.sqrt(v, out=t2)
            denom /= dt(math.sqrt(1 - b2**t))
            denom += dt(o["eps"])
            step = np.divide(m, denom, out=t2)  # torch: param.addcdiv_(exp_avg, denom, value=-step_size)
            step *= dt(lr / (1 - b1**t))
            p.data -= step


class AdamW(Adam):
    """AdamW, exactly ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Before the Adam update, ``p *= 1 - lr * weight_decay``; the gradient is
    left alone. Arguments as ``Adam``, but ``weight_decay`` defaults to 1e-2.

    Examples
    --------
    >>> import numpy as np
    >>> from striate import Parameter
    >>> p = Parameter(np.array([1.0]), "w")
    >>> opt = AdamW([p], lr=0.1, weight_decay=0.5)
    >>> p.grad = np.array([2.0])
    >>> opt.step()  # p * (1 - 0.05), then the first Adam step moves it by lr
    >>> p.data.round(6)
    array([0.85])
    """

    _decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop, exactly ``torch.optim.RMSprop`` (with momentum and the centered variant).

    ``g = grad + weight_decay * p``; ``sq = alpha * sq + (1 - alpha) * g**2``;
    centered: ``ga = lerp(ga, g, 1 - alpha)``, ``avg = sqrt(sq - ga**2) + eps``,
    else ``avg = sqrt(sq) + eps``; with momentum ``buf = momentum * buf + g / avg``
    and ``p -= lr * buf``, else ``p -= lr * g / avg``.

    Parameters
    ----------
    params : list of Parameter, list of dict, or a model
        The parameters, or parameter groups (see the module notes).
    lr : float, default 1e-2
    alpha : float, default 0.99
        The smoothing constant, in [0, 1].
    eps : float, default 1e-8
    weight_decay, momentum : float, default 0.0
    centered : bool, default False
    """

    _option_names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _slots = ("step", "square_avg", "momentum_buffer", "grad_avg")

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered))

    def _check(self, o, name):
        return {
            "alpha": _number(o["alpha"], name("alpha"), hi=1.0),
            "eps": _number(o["eps"], name("eps")),
            "weight_decay": _number(o["weight_decay"], name("weight_decay")),
            "momentum": _number(o["momentum"], name("momentum")),
            "centered": _flag(o["centered"], name("centered")),
        }

    def _required(self, o):
        return ("step", "square_avg") + ("momentum_buffer",) * (o["momentum"] > 0) + ("grad_avg",) * o["centered"]

    def step(self) -> None:
        """Update every trainable parameter that has a gradient, in place."""
        for o, i, p, grad in self._active():
            dt = p.data.dtype.type
            a, m, wd = o["alpha"], o["momentum"], o["weight_decay"]
            st = self.state[i]
            if "step" not in st:
                st["step"] = 0
                st["square_avg"] = np.zeros_like(p.data)
            for slot, wanted in (("momentum_buffer", m > 0), ("grad_avg", o["centered"])):
                if wanted and slot not in st:  # zeros, as torch's first step (or an option turned on since)
                    st[slot] = np.zeros_like(p.data)
            st["step"] += 1
            ga = st["grad_avg"] if o["centered"] else None
            mb = st["momentum_buffer"] if m > 0 else None
            if _fusable(p.data, grad, st["square_avg"], ga, mb) and _core.rmsprop_step(
                p.data, grad, st["square_avg"], ga, mb, lr=o["lr"], alpha=a, one_minus_alpha=1 - a, eps=o["eps"],
                weight_decay=wd if wd else None, momentum=m):
                continue
            t1, t2 = self._scratch.get(p.data)
            g = _decayed(grad, p.data, wd, t1) if wd else grad
            sq = st["square_avg"]
            np.multiply(g, g, out=t2)  # torch: square_avg.mul_(alpha).addcmul_(grad, grad, 1 - alpha)
            t2 *= dt(1 - a)
            sq *= dt(a)
            sq += t2
            if o["centered"]:
                ga = st["grad_avg"]
                np.subtract(g, ga, out=t2)  # torch: grad_avg.lerp_(grad, 1 - alpha)
                t2 *= dt(1 - a)
                ga += t2
                np.multiply(ga, ga, out=t2)
                np.subtract(sq, t2, out=t2)
                with np.errstate(invalid="ignore"):  # as torch: a rounding below zero gives NaN
                    avg = np.sqrt(t2, out=t2)
            else:
                avg = np.sqrt(sq, out=t2)
            avg += dt(o["eps"])
            step = np.divide(g, avg, out=t2)
            if m > 0:
                buf = st["momentum_buffer"]
                buf *= dt(m)
                buf += step
                step = np.multiply(buf, dt(o["lr"]), out=t2)
            else:
                step *= dt(o["lr"])  # torch: param.addcdiv_(grad, avg, value=-lr)
            p.data -= step


# ----------------------------------------------------------------------------
# gradient clipping


def _norm(g, norm_type):
    """The ``norm_type``-norm of one gradient, in float64."""
    if g.size == 0:
        return 0.0
    a = np.abs(g.astype(np.float64, copy=False))
    if norm_type == math.inf:
        return float(a.max())
    if norm_type == 2.0:
        return float(np.sqrt(np.square(a).sum()))
    if norm_type == 1.0:
        return float(a.sum())
    return float((a**norm_type).sum() ** (1.0 / norm_type))


def clip_grad_norm(params: Any, max_norm: float, norm_type: Union[float, str] = 2.0) -> float:
    """Scale the gradients in place so that their total norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_`` (with ``error_if_nonfinite=False``):
    the total norm is the ``norm_type``-norm of the per-gradient norms, and
    every gradient is multiplied by ``min(1, max_norm / (total_norm + 1e-6))``.
    A non-finite total norm is returned as it is and the gradients are scaled
    all the same (to zeros and NaNs), as torch does. Parameters with no
    gradient, or with ``.trainable`` False, are left out.

    Parameters
    ----------
    params : Parameter, iterable of Parameter, or a model
    max_norm : float
        >= 0.
    norm_type : float or "inf", default 2.0
        > 0; ``math.inf`` (or ``"inf"``) for the largest absolute value.

    Returns
    -------
    float
        The total norm of the gradients before clipping (0.0 when there are none).

    Examples
    --------
    >>> import numpy as np
    >>> from striate import Parameter
    >>> p = Parameter(np.zeros(2), "w")
    >>> p.grad = np.array([3.0, 4.0])
    >>> clip_grad_norm([p], max_norm=1.0)
    5.0
    >>> p.grad.round(6)
    array([0.6, 0.8])
    """
    plist = _param_list(params, "params")
    max_norm = _number(max_norm, "max_norm")
    if isinstance(norm_type, str) and norm_type.strip().lower() == "inf":
        norm_type = math.inf
    norm_type = _number(norm_type, "norm_type", lo_open=True, allow_inf=True)
    grads = []
    for p in plist:
        if p.grad is None or not p.trainable:
            continue
        g = p.grad
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            got = g.dtype if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(f"gradient of {p.name!r} must be a float numpy.ndarray, got {got}")
        grads.append(p)
    if not grads:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        norms = [_norm(p.grad, norm_type) for p in grads]
        if norm_type == math.inf:
            total = max(norms)
            if any(n != n for n in norms):
                total = math.nan
        else:
            total = _norm(np.asarray(norms), norm_type)
        coef = max_norm / (total + 1e-6)
        if coef > 1.0:
            return total
        for p in grads:
            c = p.grad.dtype.type(coef)
            if p.grad.flags.writeable:
                p.grad *= c
            else:
                p.grad = p.grad * c
    return total
