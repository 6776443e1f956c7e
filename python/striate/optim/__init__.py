"""Optimizers (SGD, Adam, AdamW, RMSprop), gradient clipping and learning-rate schedules.

Each update rule is exactly that of its ``torch.optim`` namesake (the
single-tensor CPU path; no amsgrad, maximize or sparse gradients), applied in
place so that ``param.data`` is never reallocated. Parameters whose
``.trainable`` is False or whose ``.grad`` is None are skipped.

``params`` is a list of Parameters, or a list of parameter groups as in torch:
dicts ``{"params": [...], "lr": ..., ...}`` whose missing options come from the
constructor's arguments. ``opt.param_groups`` is that list of dicts (read at
every step, so editing ``opt.param_groups[1]["lr"]`` works as in torch).
``opt.lr`` reads group 0's rate; setting it sets every group's rate. The
schedules set each group from its own base rate, as torch's do.

``state_dict()`` holds only numpy arrays and plain numbers under flat keys, so
it can be written to safetensors as it is: group 0's options at the top
(``"lr"``, ``"momentum"``, ...), the other groups' under ``"group.<g>."`` with
``"groups"`` and ``"group.<g>.size"`` when there are several, and the state of
parameter ``i`` (counted through the groups in order) under ``"state.<i>."``.

The updates run in the parameter's own dtype, in place, with no per-step
allocations. A float32 or float64 parameter whose arrays are C-contiguous is
updated in one C++ pass (``_core.sgd_step``, ``adam_step``,
``rmsprop_step``) that gives the NumPy code's results bit for bit; any other,
and every one under ``set_backend("numpy")``, by the NumPy code, whose
temporaries go to work arrays the optimizer reuses. In float32
each product and sum is rounded on its own, where torch's CPU kernels fuse
some multiply-adds, so trajectories agree with torch to a few ulps (1e-6
relative over the tests' runs), not bit for bit. The optimizers
live in ``optimizers.py`` and the schedules in ``schedules.py``; both are
exported from here. Not here: closures,
amsgrad, ``maximize``, sparse gradients.
"""

from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm
from .schedules import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "clip_grad_norm",
    "LRScheduler",
    "StepLR",
    "CosineAnnealingLR",
    "OneCycleLR",
]

for _obj in (Optimizer, SGD, Adam, AdamW, RMSprop, clip_grad_norm, LRScheduler, StepLR, CosineAnnealingLR, OneCycleLR):
    _obj.__module__ = __name__  # help(), pickle and doctest name them striate.optim.<name>
del _obj
