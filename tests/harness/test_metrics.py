"""Each GLUE metric against a value computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unipelt.harness.metrics import score


def _logits(classes: list[int], n: int = 2) -> np.ndarray:
    return np.eye(n)[classes] * 3.0 - 1.0  # argmax = the given class


GOLD = [1, 0, 0, 1]


def test_accuracy():
    assert score("accuracy", _logits([1, 0, 1, 1]), GOLD, False) == 0.75  # 3 of 4


def test_f1_of_the_positive_class():
    # tp=2 fp=1 fn=0: precision 2/3, recall 1, F1 = 2·(2/3)/(5/3) = 0.8
    assert score("f1", _logits([1, 1, 0, 1]), GOLD, False) == pytest.approx(0.8)


def test_matthews_correlation():
    # gold [1,0,0,0], pred [1,1,0,0]: tp=1 fp=1 tn=2 fn=0 -> (1·2 − 1·0)/sqrt(2·1·3·2) = 2/sqrt(12)
    assert score("matthews", _logits([1, 1, 0, 0]), [1, 0, 0, 0], False) == pytest.approx(2 / math.sqrt(12))


def test_three_class_accuracy_uses_argmax():
    assert score("accuracy", _logits([2, 0, 1], n=3), [2, 1, 1], False) == pytest.approx(2 / 3)


def test_spearman_on_regression_outputs():
    gold = [1.0, 3.0, 2.0, 4.0]
    assert score("spearman", np.array([[0.1], [0.4], [0.2], [0.9]]), gold, True) == pytest.approx(1.0)
    # ranks [1,2,3,4] vs [1,3,2,4]: sum d² = 2, rho = 1 − 6·2/(4·15) = 0.8
    assert score("spearman", np.array([[0.1], [0.2], [0.3], [0.4]]), gold, True) == pytest.approx(0.8)


def test_constant_predictions_have_zero_correlation():
    assert score("spearman", np.zeros((4, 1)), [1.0, 3.0, 2.0, 4.0], True) == 0.0
    assert score("matthews", _logits([1, 1, 1, 1]), GOLD, False) == 0.0
