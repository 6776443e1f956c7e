"""Tests for striate.metrics against values computed by hand (scikit-learn is not a dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from striate import metrics

# 6 samples, 3 classes. Confusion matrix (rows true, columns predicted):
#   true 0: predicted 0, 1         -> [1, 1, 0]
#   true 1: predicted 1            -> [0, 1, 0]
#   true 2: predicted 2, 2, 0      -> [1, 0, 2]
Y_TRUE = [0, 0, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 2, 2, 0]


def test_accuracy():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert metrics.accuracy(np.array([3, 3], np.uint8), np.array([3, 3])) == 1.0
    assert metrics.accuracy([1], [0]) == 0.0


def test_confusion_matrix_orientation_rows_true():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    # Asymmetric case: one sample, true 0 predicted 2, lands in row 0, column 2.
    np.testing.assert_array_equal(metrics.confusion_matrix([0], [2]), [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_confusion_matrix_num_classes():
    cm = metrics.confusion_matrix([0, 1], [1, 1], num_classes=4)
    assert cm.shape == (4, 4) and cm.sum() == 2 and cm[0, 1] == 1 and cm[1, 1] == 1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\).*got 2"):
        metrics.confusion_matrix([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="`num_classes` must be positive"):
        metrics.confusion_matrix([0], [0], num_classes=0)
    with pytest.raises(TypeError, match="`num_classes` must be an int"):
        metrics.confusion_matrix([0], [0], num_classes=2.0)


def test_top_k_accuracy_hand_computed():
    scores = np.array([
        [0.1, 0.7, 0.2],  # true 0: rank 2 (0.7 and 0.2 above)
        [0.1, 0.7, 0.2],  # true 1: rank 0
        [0.5, 0.1, 0.4],  # true 2: rank 1
        [0.3, 0.3, 0.4],  # true 1: rank 2 (0.4 above; the tie with class 0 goes to the smaller index)
    ])
    y = [0, 1, 2, 1]
    assert metrics.top_k_accuracy(y, scores, k=1) == pytest.approx(1 / 4)
    assert metrics.top_k_accuracy(y, scores, k=2) == pytest.approx(2 / 4)
    assert metrics.top_k_accuracy(y, scores, k=3) == 1.0
    assert metrics.top_k_accuracy(y, scores) == 1.0  # k=5 >= 3 classes


def test_top_1_equals_accuracy_of_argmax_with_ties(rng):
    scores = rng.integers(0, 3, (200, 6)).astype(np.float32)  # many ties
    y = rng.integers(0, 6, 200)
    assert metrics.top_k_accuracy(y, scores, k=1) == metrics.accuracy(y, scores.argmax(axis=1))


def test_classification_report_layout_and_values():
    report = metrics.classification_report(Y_TRUE, Y_PRED, class_names=["cat", "dog", "bird"])
    # precision = diag / column sums = 1/2, 1/2, 2/2; recall = diag / row sums = 1/2, 1/1, 2/3
    # f1: 0.5, 2*0.5*1/1.5 = 0.667, 2*1*(2/3)/(5/3) = 0.8
    # macro: (0.5+0.5+1)/3 = 0.667, (0.5+1+0.667)/3 = 0.722, (0.5+0.667+0.8)/3 = 0.656
    # weighted (2, 1, 3 / 6): 0.75, 0.667, (1 + 0.667 + 2.4)/6 = 0.678
    expected = (
        "              precision    recall  f1-score   support\n"
        "\n"
        "         cat       0.50      0.50      0.50         2\n"
        "         dog       0.50      1.00      0.67         1\n"
        "        bird       1.00      0.67      0.80         3\n"
        "\n"
        "    accuracy                           0.67         6\n"
        "   macro avg       0.67      0.72      0.66         6\n"
        "weighted avg       0.75      0.67      0.68         6\n"
    )
    assert report == expected


def test_classification_report_default_names_and_absent_classes():
    # Without names: only labels present (0 and 2), named by number.
    report = metrics.classification_report([0, 2, 2], [0, 2, 0])
    lines = report.splitlines()
    assert lines[2].split() == ["0", "0.50", "1.00", "0.67", "1"]
    assert lines[3].split() == ["2", "1.00", "0.50", "0.67", "2"]
    assert lines[5].split() == ["accuracy", "0.67", "3"]
    # With names every class gets a row; a never-predicted, never-true class scores 0.
    named = metrics.classification_report([0, 2, 2], [0, 2, 0], class_names=["a", "b", "c"])
    assert named.splitlines()[3].split() == ["b", "0.00", "0.00", "0.00", "0"]
    assert named.splitlines()[7].split() == ["macro", "avg", "0.50", "0.50", "0.44", "3"]


def test_long_class_names_widen_the_first_column():
    report = metrics.classification_report([0, 1], [0, 1], class_names=["a", "a rather long class name"])
    assert report.splitlines()[3] == "a rather long class name       1.00      1.00      1.00         1"


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: metrics.accuracy([0, 1], [0]), ValueError, "same length, got 2 and 1"),
        (lambda: metrics.accuracy([], []), ValueError, "`y_true` is empty"),
        (lambda: metrics.accuracy([0.0, 1.0], [0, 1]), TypeError, "`y_true` must hold integer class labels"),
        (lambda: metrics.accuracy([0, 1], np.zeros((2, 3))), TypeError, "argmax"),
        (lambda: metrics.accuracy([[0, 1]], [[0, 1]]), ValueError, r"`y_true` must have shape \(N,\)"),
        (lambda: metrics.accuracy([-1], [0]), ValueError, "non-negative, got -1"),
        (lambda: metrics.accuracy([True], [0]), TypeError, "integer class labels"),
        (lambda: metrics.top_k_accuracy([0], [[0.1, 0.2]], k=0), ValueError, "`k` must be positive"),
        (lambda: metrics.top_k_accuracy([0], [[0.1, 0.2]], k=1.5), TypeError, "`k` must be an int"),
        (lambda: metrics.top_k_accuracy([0], [0.1, 0.2]), ValueError, r"`scores` must have shape \(N, classes\)"),
        (lambda: metrics.top_k_accuracy([0, 1], [[0.1, 0.2]]), ValueError, "same length, got 2 and 1"),
        (lambda: metrics.top_k_accuracy([2], [[0.1, 0.2]]), ValueError, "label 2 but `scores` has only 2"),
        (lambda: metrics.top_k_accuracy([0], [[np.nan, 0.2]]), ValueError, "`scores` must be finite"),
        (lambda: metrics.top_k_accuracy([0], [["a", "b"]]), TypeError, "`scores` must be numeric"),
        (lambda: metrics.classification_report([0, 2], [0, 1], class_names=["a", "b"]), ValueError,
         "label 2 has no name"),
        (lambda: metrics.classification_report([0], [0], class_names="ab"), TypeError, "`class_names` must be"),
        (lambda: metrics.classification_report([0], [0], class_names=[0]), TypeError, r"`class_names\[0\]`"),
        (lambda: metrics.classification_report([0], [0], class_names=[]), ValueError, "`class_names` is empty"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
