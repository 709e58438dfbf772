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
    "f1": lambda p, g: float(f1_score(g, p, labels=[1], average="micro", zero_division=0.0)),  # of label 1
    "matthews": lambda p, g: float(matthews_corrcoef(g, p)),
    "spearman": _spearman,
}
UNMATCHED = -1  # a generated answer that is no label word (generative.py)


def _as_wrong(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Each UNMATCHED answer as a class other than its gold one: an answer that is no label word is
    wrong under every metric. As a third class, Matthews read it as information (a model right on
    CoLA's unacceptable sentences and answering nothing on the others scored 0.50, not 0)."""
    if not (predicted == UNMATCHED).any():
        return predicted
    classes = max(2, int(gold.max()) + 1)
    return np.where(predicted == UNMATCHED, (gold + 1) % classes, predicted)


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids (argmax) or, for a regression head, the single output per example."""
    logits = np.asarray(logits)
    return logits.reshape(len(logits)) if regression else logits.argmax(axis=-1)


def score_predictions(metric: str, predicted: np.ndarray, labels: np.ndarray) -> float:
    """The task metric of predicted class ids (or values) against gold ``labels``."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if metric != "spearman":
        predicted = _as_wrong(predicted, labels)
    return _SCORERS[metric](predicted, labels)


def score(metric: str, logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """The task metric of ``logits`` against gold ``labels``."""
    return score_predictions(metric, predictions(logits, regression), labels)
