"""Optimizers (SGD, Adam) and learning-rate schedules (StepLR, CosineAnnealingLR, OneCycleLR).

The update rules are exactly those of ``torch.optim.SGD`` (dampening 0) and
``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, no amsgrad),
applied in place so that ``param.data`` is never reallocated. Parameters whose
``.trainable`` is False or whose ``.grad`` is None are skipped.

``state_dict()`` holds only numpy arrays and plain numbers (flat keys such as
``"state.3.exp_avg"``), so it can be written to safetensors as it is. Not here:
parameter groups, closures, sparse gradients.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .layers import Parameter, _bool, _float, _int

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR"]


def _lr(value, name="lr", allow_zero=False):
    return _float(value, name, lo=0.0, lo_open=not allow_zero)


class Optimizer:
    """Base class: ``step()``, ``zero_grad()``, a settable ``lr`` and ``state_dict()``."""

    _hyper: tuple = ()  # names of the plain-number hyper-parameters saved in state_dict
    _slots: tuple = ()  # names of the per-parameter arrays
    _required_state: tuple = ()  # what a parameter's state must hold once it has any

    def __init__(self, params, lr):
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        params = list(params)
        if not params:
            raise ValueError("`params` must hold at least one Parameter, got an empty list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"`params[{i}]` must be a striate Parameter, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("`params` holds the same Parameter more than once")
        self.params = params
        self._lr = _lr(lr)
        self.state = [dict() for _ in params]

    @property
    def lr(self):
        """The learning rate; schedules set it. Must be finite and >= 0."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _lr(value, allow_zero=True)

    def zero_grad(self):
        """Set every parameter's ``.grad`` to None."""
        for p in self.params:
            p.grad = None

    def _active(self):
        for i, p in enumerate(self.params):
            if not p.trainable or p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"gradient of {p.name!r} has shape {p.grad.shape}, the parameter {p.data.shape}")
            yield i, p, p.grad if p.grad.dtype == p.data.dtype else p.grad.astype(p.data.dtype)

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state -----------------------------------------------------------------

    def state_dict(self):
        """``{"type", "lr", <hyper-parameters>, "state.<i>.<slot>": array | int}`` (copies)."""
        d = {"type": type(self).__name__, "lr": self.lr}
        for h in self._hyper:
            d[h] = getattr(self, h)
        for i, st in enumerate(self.state):
            for k, v in st.items():
                d[f"state.{i}.{k}"] = v.copy() if isinstance(v, np.ndarray) else v
        return d

    def load_state_dict(self, d):
        """Restore ``state_dict()`` output. All or nothing: checks everything first."""
        if not isinstance(d, dict):
            raise TypeError(f"`d` must be a dict, got {type(d).__name__}")
        if d.get("type") != type(self).__name__:
            raise ValueError(f"`d` is the state of a {d.get('type')!r} optimizer, not {type(self).__name__}")
        lr = _lr(d.get("lr"), "lr", allow_zero=True)
        hyper = {}
        for h in self._hyper:
            if h not in d:
                raise ValueError(f"`d` lacks the hyper-parameter {h!r}")
            v = d[h]
            if isinstance(v, np.ndarray) and v.ndim == 0:
                v = v.item()
            hyper[h] = v
        new_state = [dict() for _ in self.params]
        for key, v in d.items():
            if not isinstance(key, str):
                raise ValueError(f"`d` keys must be strings, got {key!r}")
            if not key.startswith("state."):
                if key not in ("type", "lr") + self._hyper:
                    raise ValueError(f"`d` has an unknown entry {key!r}")
                continue
            parts = key.split(".")
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(self.params):
                raise ValueError(f"`d` has a state entry {key!r} for no parameter (there are {len(self.params)})")
            i, slot = int(parts[1]), parts[2]
            p = self.params[i]
            if slot == "step":
                if isinstance(v, np.ndarray):
                    v = v.item()
                new_state[i]["step"] = _int(v, key, lo=0)
            elif slot in self._slots:
                if not isinstance(v, np.ndarray) or v.shape != p.data.shape or v.dtype != p.data.dtype:
                    got = (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v).__name__
                    raise ValueError(f"`d[{key!r}]` must be an array of shape {p.data.shape} {p.data.dtype}, got {got}")
                new_state[i][slot] = v.copy()
            else:
                raise ValueError(f"`d` has an unknown state slot {key!r}")
        for i, st in enumerate(new_state):
            missing = sorted(set(self._required_state) - set(st))
            if st and missing:
                raise ValueError(f"`d` holds state for parameter {i} without {', '.join(missing)}")
        self._check_hyper(hyper)
        self._lr = lr
        for h, v in hyper.items():
            setattr(self, h, v)
        self.state = new_state

    def _check_hyper(self, hyper):
        """Validate hyper-parameters read from a state dict (subclasses re-run their checks)."""

    def __repr__(self):
        hp = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hyper)
        return f"{type(self).__name__}(lr={self.lr!r}, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly ``torch.optim.SGD`` (dampening 0).

    ``g = grad + weight_decay * p``; with momentum, ``buf = g`` on the first step
    and ``buf = momentum * buf + g`` after; ``g = g + momentum * buf`` (Nesterov)
    or ``g = buf``; then ``p -= lr * g``.

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

    _hyper = ("momentum", "nesterov", "weight_decay")
    _slots = ("momentum_buffer",)
    _required_state = ("momentum_buffer",)

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self._check_hyper({"momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def _check_hyper(self, h):
        _float(h["momentum"], "momentum", lo=0.0)
        _bool(h["nesterov"], "nesterov")
        _float(h["weight_decay"], "weight_decay", lo=0.0)
        if h["nesterov"] and not h["momentum"] > 0:
            raise ValueError(f"`nesterov`=True requires `momentum` > 0, got momentum={h['momentum']}")

    def step(self):
        """Update every trainable parameter that has a gradient, in place."""
        for i, p, grad in self._active():
            dt = p.data.dtype.type
            g = grad + dt(self.weight_decay) * p.data if self.weight_decay else grad  # never modified in place
            if self.momentum:
                buf = self.state[i].get("momentum_buffer")
                if buf is None:
                    buf = np.array(g, copy=True)
                    self.state[i]["momentum_buffer"] = buf
                else:
                    buf *= dt(self.momentum)
                    buf += g
                g = g + dt(self.momentum) * buf if self.nesterov else buf
            p.data -= dt(self.lr) * g


class Adam(Optimizer):
    """Adam, exactly ``torch.optim.Adam`` (L2 weight decay added to the gradient, no amsgrad)."""

    _hyper = ("beta1", "beta2", "eps", "weight_decay")
    _slots = ("exp_avg", "exp_avg_sq")
    _required_state = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"`betas` must be a pair (beta1, beta2), got {betas!r}")
        h = {"beta1": betas[0], "beta2": betas[1], "eps": eps, "weight_decay": weight_decay}
        self._check_hyper(h)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _check_hyper(self, h):
        _float(h["beta1"], "betas[0]", lo=0.0, hi=1.0, hi_open=True)
        _float(h["beta2"], "betas[1]", lo=0.0, hi=1.0, hi_open=True)
        _float(h["eps"], "eps", lo=0.0)
        _float(h["weight_decay"], "weight_decay", lo=0.0)

    def step(self):
        """Update every trainable parameter that has a gradient, in place."""
        b1, b2 = self.beta1, self.beta2
        for i, p, grad in self._active():
            dt = p.data.dtype.type
            st = self.state[i]
            if "step" not in st:
                st["step"] = 0
                st["exp_avg"] = np.zeros_like(p.data)
                st["exp_avg_sq"] = np.zeros_like(p.data)
            st["step"] += 1
            t = st["step"]
            g = grad + dt(self.weight_decay) * p.data if self.weight_decay else grad
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m += dt(1 - b1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v *= dt(b2)
            v += dt(1 - b2) * (g * g)
            step_size = self.lr / (1 - b1**t)
            denom = np.sqrt(v) / dt(math.sqrt(1 - b2**t))
            denom += dt(self.eps)
            p.data -= dt(step_size) * (m / denom)


# ----------------------------------------------------------------------------
# schedules


class LRScheduler:
    """Base class of the schedules: ``lr_at(t)`` in closed form.

    ``step()`` advances by one (epoch or batch, as the caller decides) and sets
    ``optimizer.lr``; ``sched(t)`` jumps to ``t``, sets ``optimizer.lr`` and
    returns it. ``get_last_lr()`` returns ``[lr]`` like torch.
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"`optimizer` must be a striate Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._apply(0)

    def lr_at(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, t):
        self.last_epoch = t
        lr = self.lr_at(t)
        self.optimizer.lr = lr
        self._last_lr = lr
        return lr

    def step(self):
        """Advance one step and set the optimizer's learning rate."""
        return self._apply(self.last_epoch + 1)

    def __call__(self, t):
        """Set the optimizer's learning rate for step/epoch ``t`` and return it."""
        return self._apply(_int(t, "t", lo=0))

    def get_last_lr(self):
        return [self._last_lr]

    def state_dict(self):
        return {"type": type(self).__name__, "last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, d):
        if not isinstance(d, dict) or d.get("type") != type(self).__name__:
            got = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"`d` must be the state of a {type(self).__name__}, got {got!r}")
        last = d.get("last_epoch")
        base = d.get("base_lr")
        last = _int(last.item() if isinstance(last, np.ndarray) else last, "last_epoch", lo=0)
        base = _lr(base.item() if isinstance(base, np.ndarray) else base, "base_lr")
        self.base_lr = base
        self._apply(last)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _int(step_size, "step_size")
        self.gamma = _float(gamma, "gamma", lo=0.0, lo_open=True)
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _int(T_max, "T_max")
        self.eta_min = _float(eta_min, "eta_min", lo=0.0)
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class OneCycleLR(LRScheduler):
    """The 1cycle policy of ``torch.optim.lr_scheduler.OneCycleLR`` (two phases, no momentum cycling).

    Warm up from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then anneal to
    ``max_lr / (div_factor * final_div_factor)`` at step ``total_steps - 1``.
    Stepping past ``total_steps`` raises ValueError, as in torch.
    """

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps,
        pct_start=0.3,
        anneal_strategy="cos",
        div_factor=25.0,
        final_div_factor=1e4,
    ):
        self.max_lr = _lr(max_lr, "max_lr")
        self.total_steps = _int(total_steps, "total_steps")
        self.pct_start = _float(pct_start, "pct_start", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"`anneal_strategy` must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _float(div_factor, "div_factor", lo=0.0, lo_open=True)
        self.final_div_factor = _float(final_div_factor, "final_div_factor", lo=0.0, lo_open=True)
        self.initial_lr = self.max_lr / self.div_factor
        self.min_lr = self.initial_lr / self.final_div_factor
        self._phase1_end = float(self.pct_start * self.total_steps) - 1
        super().__init__(optimizer)
        self.base_lr = self.initial_lr

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr_at(self, t):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times, more than `total_steps`={self.total_steps}")
        end1 = self._phase1_end
        if t <= end1:
            return self._anneal(self.initial_lr, self.max_lr, t / end1 if end1 > 0 else 1.0)
        end2 = float(self.total_steps - 1)
        return self._anneal(self.max_lr, self.min_lr, (t - end1) / (end2 - end1))
