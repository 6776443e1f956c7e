# Type stub of the compiled extension striate._core (C++ kernels behind pybind11).
# It declares the signatures of the optimizer kernels (csrc/bind_optim.cpp)
# only; everything else goes through __getattr__: the Python layers above
# (striate.functional and the layers) check every argument and carry the
# public types. Not a description of the kernels.
from typing import Any, Optional

import numpy as np

def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: Optional[np.ndarray], *, lr: float,
             weight_decay: Optional[float], momentum: float, dampening: Optional[float], nesterov: bool,
             first: bool) -> bool: ...
def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, *,
              step_size: float, weight_decay: Optional[float], decoupled: Optional[float], one_minus_beta1: float,
              beta2: float, one_minus_beta2: float, bias_correction2: float, eps: float) -> bool: ...
def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray, grad_avg: Optional[np.ndarray],
                 momentum_buffer: Optional[np.ndarray], *, lr: float, alpha: float, one_minus_alpha: float,
                 eps: float, weight_decay: Optional[float], momentum: float) -> bool: ...
def all_finite(a: np.ndarray) -> bool: ...
def __getattr__(name: str) -> Any: ...
