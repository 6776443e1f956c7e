"""Classification metrics on label arrays: accuracy, top-k, confusion matrix, per-class report.

Plain NumPy on integer class labels ``0..K-1``. The confusion matrix follows
scikit-learn's orientation (rows are the true class, columns the predicted
one) and ``classification_report`` its text layout. A precision or recall
whose denominator is zero counts as 0.0, as scikit-learn's default does
(without its warning).

Not here: multi-label or regression metrics, probability calibration, ROC or
precision-recall curves, plotting (see ``striate.viz``).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["accuracy", "classification_report", "confusion_matrix", "top_k_accuracy"]


def _labels(y, name: str) -> np.ndarray:
    """``y`` as a non-empty 1-D int64 array of non-negative labels."""
    a = np.asarray(y)
    if a.size == 0:
        raise ValueError(f"`{name}` is empty")
    if a.dtype == np.bool_ or a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.ndim == 2:
            raise TypeError(f"`{name}` must be integer class labels of shape (N,), got float scores of shape "
                            f"{a.shape}; take scores.argmax(axis=1) first")
        raise TypeError(f"`{name}` must hold integer class labels, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"`{name}` must have shape (N,), got {a.shape}")
    if a.min() < 0:
        raise ValueError(f"`{name}` labels must be non-negative, got {int(a.min())}")
    return a.astype(np.int64)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"`y_true` and `y_pred` must have the same length, got {t.size} and {p.size}")
    return t, p


def accuracy(y_true, y_pred) -> float:
    """The fraction of samples whose predicted label equals the true one.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (N,)

    Examples
    --------
    >>> accuracy([0, 1, 2, 2], [0, 2, 2, 2])
    0.75
    """
    t, p = _pair(y_true, y_pred)
    return float(np.count_nonzero(t == p)) / t.size


def top_k_accuracy(y_true, scores, k=5) -> float:
    """The fraction of samples whose true class is among the ``k`` highest scores.

    Classes are ranked by descending score, equal scores by increasing class
    index (the order ``argmax`` uses), so ``k=1`` equals
    ``accuracy(y_true, scores.argmax(axis=1))``. A ``k`` of at least the
    number of classes gives 1.0.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
    scores : array-like of float, shape (N, K)
        Logits or probabilities, one column per class.
    k : int, default 5

    Examples
    --------
    >>> top_k_accuracy([0, 1], [[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]], k=2)
    0.5
    """
    t = _labels(y_true, "y_true")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"`k` must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"`k` must be positive, got {k}")
    s = np.asarray(scores)
    if s.dtype == np.bool_ or s.dtype.kind not in "fiu":
        raise TypeError(f"`scores` must be numeric, got dtype {s.dtype}")
    if s.ndim != 2:
        raise ValueError(f"`scores` must have shape (N, classes), got {s.shape}")
    if s.shape[0] != t.size:
        raise ValueError(f"`y_true` and `scores` must have the same length, got {t.size} and {s.shape[0]}")
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        raise ValueError("`scores` must be finite (it holds NaN or infinity)")
    n_classes = s.shape[1]
    if t.max() >= n_classes:
        raise ValueError(f"`y_true` holds label {int(t.max())} but `scores` has only {n_classes} columns")
    true_score = s[np.arange(t.size), t][:, None]
    cols = np.arange(n_classes)[None, :]
    # The rank of the true class: classes scored higher, plus equal ones with a smaller index.
    rank = np.count_nonzero((s > true_score) | ((s == true_score) & (cols < t[:, None])), axis=1)
    return float(np.count_nonzero(rank < int(k))) / t.size


def confusion_matrix(y_true, y_pred, num_classes=None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, as an int64 ``(K, K)`` array.

    Row ``i`` is the true class ``i`` and column ``j`` the predicted class
    ``j`` (scikit-learn's orientation); the diagonal holds the hits.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (N,)
    num_classes : int, optional
        ``K``; default one more than the largest label seen.

    Examples
    --------
    >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2])
    array([[1, 0, 0],
           [0, 1, 1],
           [0, 0, 1]])
    """
    t, p = _pair(y_true, y_pred)
    top = int(max(t.max(), p.max())) + 1
    if num_classes is None:
        k = top
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"`num_classes` must be an int, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be positive, got {num_classes}")
        k = int(num_classes)
        if top > k:
            raise ValueError(f"labels must lie in [0, {k}) for num_classes={k}, got {top - 1}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(y_true, y_pred, class_names=None) -> str:
    """Per-class precision, recall, F1 and support, then accuracy and averages, as text.

    The layout is scikit-learn's: one row per class, then ``accuracy``,
    ``macro avg`` (the unweighted mean over classes) and ``weighted avg``
    (weighted by support), with two decimals.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (N,)
    class_names : sequence of str, optional
        Names of classes ``0..K-1``; every one of them gets a row. Default:
        one row per label present in ``y_true`` or ``y_pred``, named by its
        number.

    Examples
    --------
    >>> print(classification_report([0, 0, 1], [0, 1, 1], class_names=["cat", "dog"]))
                  precision    recall  f1-score   support
    <BLANKLINE>
             cat       1.00      0.50      0.67         2
             dog       0.50      1.00      0.67         1
    <BLANKLINE>
        accuracy                           0.67         3
       macro avg       0.75      0.75      0.67         3
    weighted avg       0.83      0.67      0.67         3
    <BLANKLINE>
    """
    t, p = _pair(y_true, y_pred)
    if class_names is None:
        labels = np.union1d(t, p)
        names = [str(int(v)) for v in labels]
    else:
        if isinstance(class_names, str) or not hasattr(class_names, "__len__"):
            raise TypeError(f"`class_names` must be a sequence of str, got {type(class_names).__name__}")
        names = list(class_names)
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"`class_names[{i}]` must be a str, got {type(name).__name__}")
        if not names:
            raise ValueError("`class_names` is empty")
        top = int(max(t.max(), p.max()))
        if top >= len(names):
            raise ValueError(f"label {top} has no name: `class_names` names only {len(names)} classes")
        labels = np.arange(len(names))
    cm = confusion_matrix(t, p, num_classes=int(labels.max()) + 1)[np.ix_(labels, labels)]
    hits = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _ratio(hits, cm.sum(axis=0).astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = int(t.size)
    weights = support / total

    width = max(len("weighted avg"), *(len(n) for n in names))
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support"))

    def row(name, pr, rc, f, n):
        return f"{name:>{width}s} " + f" {pr:>9.2f} {rc:>9.2f} {f:>9.2f} {n:>9}"

    lines = [head, ""]
    lines += [row(n, precision[i], recall[i], f1[i], int(support[i])) for i, n in enumerate(names)]
    lines.append("")
    acc = float(np.count_nonzero(t == p)) / total
    lines.append(f"{'accuracy':>{width}s} " + f" {'':>9} {'':>9} {acc:>9.2f} {total:>9}")
    lines.append(row("macro avg", precision.mean(), recall.mean(), f1.mean(), total))
    lines.append(row("weighted avg", precision @ weights, recall @ weights, f1 @ weights, total))
    return "\n".join(lines) + "\n"
