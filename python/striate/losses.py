"""Losses: CrossEntropy (softmax fused in) and SquaredError, each with its gradient.

``loss(outputs, targets) -> float`` computes the loss and keeps what
``loss.backward() -> doutputs`` needs. Outputs are (N, C) float arrays; the
gradient has their dtype. ``CrossEntropy(label_smoothing=)`` follows
``torch.nn.functional.cross_entropy``. Not here: reductions other than the batch
mean, class weights, ``ignore_index``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["Loss", "CrossEntropy", "SquaredError", "get_loss"]


def _check_outputs(outputs, who):
    if not isinstance(outputs, np.ndarray):
        raise TypeError(f"{who}: `outputs` must be a numpy.ndarray, got {type(outputs).__name__}")
    if outputs.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: `outputs` must be float32 or float64, got {outputs.dtype}")
    if outputs.ndim != 2:
        raise ValueError(f"{who}: `outputs` must be 2-D (N, C), got shape {outputs.shape}")
    # Reductions then sum in the same order whatever the caller's memory layout.
    return np.ascontiguousarray(outputs)


def _targets(targets, outputs, who):
    """``("labels", int64 (N,))`` or ``("dense", (N, C) array in the outputs' dtype)``."""
    t = np.asarray(targets)
    n, c = outputs.shape
    if t.ndim == 0 or t.shape[0] != n:
        raise ValueError(f"{who}: `targets` has shape {t.shape}, but `outputs` has {n} rows (shape {outputs.shape})")
    if t.ndim == 1:
        if t.dtype.kind not in "iu":
            raise TypeError(f"{who}: 1-D `targets` must hold integer class labels, got dtype {t.dtype}")
        if n and (t.min() < 0 or t.max() >= c):
            bad = t[(t < 0) | (t >= c)][0]
            raise ValueError(f"{who}: `targets` holds label {int(bad)}, outside [0, {c}) for {c} classes")
        return "labels", t.astype(np.int64, copy=False)
    if t.shape != outputs.shape:
        raise ValueError(f"{who}: `targets` has shape {t.shape}, `outputs` has shape {outputs.shape}")
    if t.dtype.kind not in "fiub":
        raise TypeError(f"{who}: `targets` must be numeric, got dtype {t.dtype}")
    return "dense", t.astype(outputs.dtype, copy=False)


class Loss:
    """Base class: ``loss(outputs, targets) -> float``, then ``loss.backward() -> doutputs``."""

    name = ""

    def __init__(self):
        self._grad = None

    def __call__(self, outputs, targets):
        return self.forward(outputs, targets)

    def forward(self, outputs, targets):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self):
        """The gradient of the last loss with respect to its ``outputs``."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._grad.copy()

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropy(Loss):
    """Softmax cross-entropy, averaged over the batch (``torch.nn.CrossEntropyLoss``).

    Targets are int class labels ``(N,)`` or one-hot / probability rows ``(N, C)``.
    Uses the max-shifted log-sum-exp, so large logits do not overflow.

    Parameters
    ----------
    label_smoothing : float, default 0.0
        In [0, 1]. As torch: the target row ``q`` becomes
        ``(1 - label_smoothing) * q + label_smoothing / C`` (for labels, ``q``
        is their one-hot row), and the loss is ``-sum(q * log_softmax(o))``
        averaged over the batch.

    Examples
    --------
    >>> import numpy as np
    >>> ce = CrossEntropy()
    >>> round(ce(np.zeros((2, 4), np.float32), np.array([0, 3])), 6)
    1.386294
    >>> ce.backward().shape
    (2, 4)
    >>> smooth = CrossEntropy(label_smoothing=0.1)
    >>> round(smooth(np.array([[2.0, 0.0]]), np.array([0])), 6)
    0.226928
    """

    name = "cross_entropy"
    label_smoothing: float

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        ls = label_smoothing
        if isinstance(ls, (bool, np.bool_)) or not isinstance(ls, numbers.Real):
            raise TypeError(f"`label_smoothing` must be a number, got {type(ls).__name__} {ls!r}")
        if not 0.0 <= float(ls) <= 1.0:  # NaN fails too
            raise ValueError(f"`label_smoothing` must be in [0, 1], got {float(ls)!r}")
        self.label_smoothing = float(ls)

    def forward(self, outputs: np.ndarray, targets: Any) -> float:
        outputs = _check_outputs(outputs, "CrossEntropy")
        kind, t = _targets(targets, outputs, "CrossEntropy")
        n, c = outputs.shape
        if n == 0:
            self._grad = np.zeros_like(outputs)
            return 0.0
        eps = self.label_smoothing
        rows = np.arange(n)
        # Non-finite logits give a NaN loss (fit reports it), not a warning.
        with np.errstate(invalid="ignore", over="ignore"):
            z = outputs - outputs.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            p = np.exp(logp)
            if kind == "labels":
                nll = -float(logp[rows, t].sum(dtype=np.float64))
                if eps:
                    uniform = -float(logp.sum(dtype=np.float64)) / c
                    loss = ((1 - eps) * nll + eps * uniform) / n
                    grad = p - outputs.dtype.type(eps / c)
                    grad[rows, t] -= outputs.dtype.type(1 - eps)
                else:
                    loss = nll / n
                    grad = p
                    grad[rows, t] -= 1
            else:
                if eps:
                    t = t * outputs.dtype.type(1 - eps) + outputs.dtype.type(eps / c)
                loss = -float((t * logp).sum(dtype=np.float64)) / n
                grad = p * t.sum(axis=1, keepdims=True) - t
            grad /= outputs.dtype.type(n)
        self._grad = grad
        return loss

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing!r})" if self.label_smoothing else "CrossEntropy()"


class SquaredError(Loss):
    """``E = 1/2 * sum((t - o)**2)`` over the outputs, averaged over the batch.

    Targets are (N, C) (one-hot for classification) or int labels, which are
    one-hot encoded.
    """

    name = "squared_error"

    def forward(self, outputs, targets):
        outputs = _check_outputs(outputs, "SquaredError")
        kind, t = _targets(targets, outputs, "SquaredError")
        n = outputs.shape[0]
        if kind == "labels":
            dense = np.zeros_like(outputs)
            dense[np.arange(n), t] = 1
            t = dense
        if n == 0:
            self._grad = np.zeros_like(outputs)
            return 0.0
        diff = outputs - t
        loss = 0.5 * float(np.square(diff, dtype=np.float64).sum()) / n
        self._grad = diff / outputs.dtype.type(n)
        return loss


_BY_NAME = {"cross_entropy": CrossEntropy, "squared_error": SquaredError}


def get_loss(loss):
    """A loss from its name (``"cross_entropy"``, ``"squared_error"``) or a ``Loss`` instance.

    Raises
    ------
    ValueError
        An unknown name.
    TypeError
        Neither a string nor a ``Loss``.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, str):
        if loss in _BY_NAME:
            return _BY_NAME[loss]()
        raise ValueError(f"`loss` must be one of {sorted(_BY_NAME)} or a Loss, got {loss!r}")
    raise TypeError(f"`loss` must be a name or a striate.losses.Loss, got {type(loss).__name__}")
