"""GLUE metrics (UniPELT §4.1) from model outputs, with scikit-learn and scipy.

Scores are fractions in [0, 1] (Spearman and Matthews in [-1, 1]); the report shows them ×100
as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRIC_LABELS = {"accuracy": "acc", "f1": "F1", "matthews": "Matthews corr.", "spearman": "Spearman"}


def _spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    if np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return 0.0  # constant predictions (an untrained head): undefined, scored as no correlation
    return float(spearmanr(pred, gold).statistic)


_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, g: float(accuracy_score(g, p)),
    # F1 of label 1; labels=[1] (not pos_label) also accepts -1, an unmatched generated answer
    "f1": lambda p, g: float(f1_score(g, p, labels=[1], average="micro", zero_division=0.0)),
    "matthews": lambda p, g: float(matthews_corrcoef(g, p)),
    "spearman": _spearman,
}


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids (argmax) or, for a regression head, the single output per example."""
    logits = np.asarray(logits)
    return logits.reshape(len(logits)) if regression else logits.argmax(axis=-1)


def score_predictions(metric: str, predicted: np.ndarray, labels: np.ndarray) -> float:
    """The task metric of predicted class ids (or values) against gold ``labels``."""
    return _SCORERS[metric](np.asarray(predicted), np.asarray(labels))


def score(metric: str, logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """The task metric of ``logits`` against gold ``labels``."""
    return score_predictions(metric, predictions(logits, regression), labels)
