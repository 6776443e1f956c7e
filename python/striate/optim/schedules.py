"""Learning-rate schedules for striate.optim: StepLR, CosineAnnealingLR, OneCycleLR.

Each schedule gives every parameter group's rate in closed form and sets it on
the optimizer, as the torch schedules of the same names do (per-group base
rates). Import them from ``striate.optim``. Not here: the optimizers, warm
restarts, ReduceLROnPlateau, momentum cycling.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from .optimizers import Optimizer, _count, _number, _plain

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR"]



class LRScheduler:
    """Base class of the schedules: each group's rate in closed form.

    ``step()`` advances by one (epoch or batch, as the caller decides) and sets
    every group's ``lr``; ``sched(t)`` jumps to ``t``, sets the rates and
    returns group 0's. ``get_last_lr()`` returns one rate per group, as torch.
    ``base_lrs`` are the groups' rates when the schedule was made.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"`optimizer` must be a striate Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [optimizer._group_options(gi)["lr"] for gi in range(len(optimizer.param_groups))]
        self.last_epoch = 0
        self._apply(0)

    @property
    def base_lr(self) -> float:
        """Group 0's base rate."""
        return self.base_lrs[0]

    def _lr(self, g, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        """Group 0's rate at step ``t``."""
        return self._lr(0, t)

    def lrs_at(self, t: int) -> List[float]:
        """Every group's rate at step ``t``."""
        return [self._lr(g, t) for g in range(len(self.base_lrs))]

    def _apply(self, t):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise ValueError(f"the optimizer has {len(groups)} parameter groups, the schedule was made for "
                             f"{len(self.base_lrs)}")
        lrs = [_number(lr, "lr") for lr in self.lrs_at(t)]
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self.last_epoch = t
        self._last_lrs = lrs
        return lrs[0]

    def step(self) -> float:
        """Advance one step and set the groups' learning rates; returns group 0's."""
        return self._apply(self.last_epoch + 1)

    def __call__(self, t: int) -> float:
        """Set the groups' learning rates for step/epoch ``t`` and return group 0's."""
        return self._apply(_count(t, "t", lo=0))

    def get_last_lr(self) -> List[float]:
        return list(self._last_lrs)

    def state_dict(self) -> Dict[str, Any]:
        return {"type": type(self).__name__, "last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (all or nothing)."""
        if not isinstance(d, dict) or d.get("type") != type(self).__name__:
            got = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"`d` must be the state of a {type(self).__name__}, got {got!r}")
        last = _count(_plain(d.get("last_epoch")), "last_epoch", lo=0)
        bases = d.get("base_lrs", [d["base_lr"]] if "base_lr" in d else None)  # "base_lr": striate 0.1
        if isinstance(bases, np.ndarray):
            bases = bases.tolist()
        if not isinstance(bases, (list, tuple)) or len(bases) != len(self.base_lrs):
            raise ValueError(f"`d['base_lrs']` must hold {len(self.base_lrs)} rates, got {bases!r}")
        bases = [_number(_plain(b), f"base_lrs[{i}]", lo_open=True) for i, b in enumerate(bases)]
        old = self.base_lrs
        self.base_lrs = bases
        try:
            self._apply(last)
        except BaseException:
            self.base_lrs = old
            raise


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _count(step_size, "step_size")
        self.gamma = _number(gamma, "gamma", lo_open=True)
        super().__init__(optimizer)

    def _lr(self, g, t):
        return self.base_lrs[g] * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _count(T_max, "T_max")
        self.eta_min = _number(eta_min, "eta_min")
        super().__init__(optimizer)

    def _lr(self, g, t):
        return self.eta_min + (self.base_lrs[g] - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class OneCycleLR(LRScheduler):
    """The 1cycle policy of ``torch.optim.lr_scheduler.OneCycleLR`` (two phases, no momentum cycling).

    Warm up from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then anneal to
    ``max_lr / (div_factor * final_div_factor)`` at step ``total_steps - 1``.
    ``max_lr`` is one rate for every group or a sequence with one per group.

    Step ``total_steps``, which a torch-style loop (``opt.step();
    sched.step()`` ``total_steps`` times) reaches after its last update, holds
    the final rate; torch extrapolates there (below zero for ``"linear"``).
    Stepping further raises ValueError, as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: Union[float, Sequence[float]],
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"`optimizer` must be a striate Optimizer, got {type(optimizer).__name__}")
        n = len(optimizer.param_groups)
        if isinstance(max_lr, (list, tuple)):
            if len(max_lr) != n:
                raise ValueError(f"`max_lr` must be one rate or {n} (one per parameter group), got {len(max_lr)}")
            self.max_lrs = [_number(v, f"max_lr[{i}]", lo_open=True) for i, v in enumerate(max_lr)]
        else:
            self.max_lrs = [_number(max_lr, "max_lr", lo_open=True)] * n
        self.total_steps = _count(total_steps, "total_steps")
        self.pct_start = _number(pct_start, "pct_start", hi=1.0, lo_open=True, hi_open=True)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"`anneal_strategy` must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _number(div_factor, "div_factor", lo_open=True)
        self.final_div_factor = _number(final_div_factor, "final_div_factor", lo_open=True)
        self._phase1_end = float(self.pct_start * self.total_steps) - 1
        super().__init__(optimizer)
        self.base_lrs = [m / self.div_factor for m in self.max_lrs]

    @property
    def max_lr(self) -> float:
        return self.max_lrs[0]

    @property
    def initial_lr(self) -> float:
        return self.max_lrs[0] / self.div_factor

    @property
    def min_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr(self, g, t):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times, more than `total_steps`={self.total_steps}")
        peak = self.max_lrs[g]
        start = peak / self.div_factor
        end1 = self._phase1_end
        if t <= end1:
            return self._anneal(start, peak, t / end1 if end1 > 0 else 1.0)
        end2 = float(self.total_steps - 1)
        pct = min((t - end1) / (end2 - end1), 1.0)  # t = total_steps holds the final rate
        return self._anneal(peak, start / self.final_div_factor, pct)
