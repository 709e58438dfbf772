"""Chance floors and training fit: whether a score, or a training loss, says a run learned.

The floor of a task (SPEC §4) is the one-sided 95% threshold over the constant predictor on the
test set (GLUE dev): a score at or below it is what a run that learned nothing can score. For
accuracy that is the majority class's rate plus 1.645 binomial standard errors (``accuracy_floor``
reproduces SST-2's 53.7 and RTE's 57.6 from their dev labels); for a correlation it is 1.645 /
√n (CoLA's 5.1, STS-B's 4.25); MRPC's F1 floor is the SPEC's number. QNLI and MNLI are computed
here from their dev sets' label counts with the accuracy rule; QQP (F1 on a carved test split)
has no floor yet, since no rule stated from data gives MRPC's.

A run *fits* when its lowest per-epoch training loss is below ``FIT`` × the constant predictor's
loss on its own K training rows: the entropy of those labels (cross-entropy, nats) for
classification, their variance for regression (mean squared error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from .data import DEV_SIZE, load_splits
from .errors import HarnessError
from .locate import locate_glue
from .tasks import get_task

Z95 = 1.645  # one-sided 95%
FIT = 0.9  # a run fits when its lowest training loss is below FIT × the constant predictor's
MAJORITY = (2, 3)  # a cell is read when at least 2 in 3 of its runs are above the floor (integer: exact)


def accuracy_floor(counts: Sequence[int]) -> float:
    """Accuracy ×100 that a constant predictor exceeds with probability 5%, from the test
    labels' class counts: the majority rate plus ``Z95`` binomial standard errors."""
    n = sum(counts)
    p = max(counts) / n
    return 100 * (p + Z95 * math.sqrt(p * (1 - p) / n))


def correlation_floor(n: int) -> float:
    """A correlation ×100 (MCC, Spearman) over ``n`` test rows that chance exceeds with probability 5%."""
    return 100 * Z95 / math.sqrt(n)


# Per task: the floor on the test score ×100, and where it comes from (test label counts of
# ../shared/data/glue, SOURCES.md). None: no floor yet.
FLOORS: dict[str, float | None] = {
    "sst2": 53.7,  # accuracy_floor((428, 444))
    "rte": 57.6,  # accuracy_floor((146, 131))
    "cola": 5.1,  # correlation_floor(1043)
    "mrpc": 81.35,  # SPEC §4 (the constant "paraphrase" answer scores F1 81.2 on 279/408)
    "stsb": 4.25,  # correlation_floor(1500)
    "qnli": round(accuracy_floor((2702, 2761)), 1),  # 51.7
    "mnli": round(accuracy_floor((3479, 3123, 3213)), 1),  # 36.2, dev_matched
    "qqp": None,  # F1 on a carved split: no rule from data gives MRPC's F1 floor
}


def floor(task: str) -> float | None:
    """The task's floor on the score ×100, or None where it has none yet."""
    return FLOORS.get(task)


def above(task: str, score: float) -> bool | None:
    """Whether a test score ×100 is above the task's floor (None: no floor, or no score). The score
    is compared at the floor's own precision, as the floors are stated: MRPC's F1 81.351 is "81.35"."""
    limit = floor(task)
    if limit is None or score is None or not math.isfinite(score):
        return None
    decimals = len(repr(limit).partition(".")[2])
    return round(score, decimals) > limit


def constant_loss(labels: Sequence[float], regression: bool) -> float:
    """The training loss of the best constant predictor on these labels: their entropy in nats
    (classification) or their population variance (regression)."""
    values = np.asarray(labels, dtype=float)
    if regression:
        return float(values.var())
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def fits(losses: Sequence[float], constant: float) -> bool | None:
    """Whether the lowest of a run's training losses is below ``FIT`` × ``constant`` (None when
    either is unknown)."""
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    if not finite or constant is None or not math.isfinite(constant):
        return None
    return min(finite) < FIT * constant


@lru_cache(maxsize=256)
def run_constant_loss(
    task: str, k: int | str, seed: int, dev_size: int = DEV_SIZE, glue_dir: str | None = None
) -> float | None:
    """The constant predictor's loss on a run's own K training rows, rebuilt from the GLUE files
    as the run split them; None when no GLUE directory has the task (the hub is not tried)."""
    t = get_task(task)
    try:
        if locate_glue(glue_dir, t.directory).path is None:
            return None
        train = load_splits(t, k, seed, dev_size=dev_size, glue_dir=glue_dir).train
    except HarnessError:
        return None
    return constant_loss(train.label, t.is_regression)


def run_fits(runs: pd.DataFrame, epochs: pd.DataFrame, glue_dir: str | None = None) -> pd.DataFrame:
    """Per run (``runs``' index): ``constant`` (its constant-predictor loss), ``lowest`` (its lowest
    training loss), ``ratio`` and ``fits`` (None where the data or the losses are missing)."""
    lowest = epochs.groupby("run_key").train_loss.min() if not epochs.empty else pd.Series(dtype=float)

    def constant(run) -> float | None:
        spec = run.spec
        k = spec.get("k", run.k)
        k = int(k) if str(k).isdigit() else k
        where = glue_dir or spec.get("glue_dir")
        return run_constant_loss(run.task, k, int(run.data_seed), spec.get("dev_size", DEV_SIZE), where)

    out = pd.DataFrame(index=runs.index)
    out["constant"] = [constant(r) for r in runs.itertuples()]
    out["lowest"] = runs.run_key.map(lowest).astype(float)
    out["ratio"] = out.lowest / out.constant.astype(float)
    out["fits"] = [fits([lo], c) for lo, c in zip(out.lowest, out.constant)]
    return out


def at_floor(runs: pd.DataFrame) -> pd.Series:
    """Per run: True when its test score is not above its task's floor, None without a floor.
    ``runs`` has ``task`` and ``test_metric`` (a fraction, as the store keeps it)."""

    def one(task: str, metric) -> bool | None:
        verdict = None if metric is None or pd.isna(metric) else above(task, 100 * float(metric))
        return None if verdict is None else not verdict

    return pd.Series([one(t, m) for t, m in zip(runs.task, runs.test_metric)], index=runs.index, dtype=object)


GATE = ("head-only", "full")  # what shows a cell is learnable: the frozen backbone's head, or every weight
NOT_LEARNABLE = "not learnable at this K on this backbone"


def cells(runs: pd.DataFrame, by: list[str], method: str = "method") -> pd.DataFrame:
    """Per cell (``by``: e.g. model, K, task): ``at_floor`` (runs not above the floor), ``n`` (runs with
    a floor), ``learnable`` (a ``GATE`` method has at least ``MAJORITY`` of its runs above the
    floor; None when the cell has no such run), ``read`` (the cell enters comparisons: a floor,
    ``MAJORITY`` of its runs above it, and learnable) and ``why`` (why not, for the notes)."""
    runs = runs.assign(_at=at_floor(runs))
    known = runs[runs._at.notna()].assign(_at=lambda r: r._at.astype(bool))
    out = runs.groupby(by).size().to_frame("runs")
    out["at_floor"] = known.groupby(by)._at.sum().reindex(out.index).fillna(0).astype(int)
    out["n"] = known.groupby(by).size().reindex(out.index).fillna(0).astype(int)
    gate = known[known[method].isin(GATE)]
    up = (1 - gate.groupby([*by, method])._at.mean()).ge(MAJORITY[0] / MAJORITY[1] - 1e-9).groupby(level=by).any()
    out["learnable"] = pd.Series([bool(up[i]) if i in up.index else None for i in out.index], out.index, object)
    majority = MAJORITY[1] * (out.n - out.at_floor) >= MAJORITY[0] * out.n
    out["read"] = (out.n > 0) & majority & out.learnable.eq(True)
    out["why"] = [_why(r) for r in out.itertuples()]
    return out.drop(columns="runs")


def _why(cell) -> str:
    if cell.n == 0:
        return "no floor for this task yet"
    if cell.learnable is False:
        return NOT_LEARNABLE
    if MAJORITY[1] * (cell.n - cell.at_floor) < MAJORITY[0] * cell.n:
        return f"{cell.at_floor} of {cell.n} runs at the floor"
    if cell.learnable is None:
        return "learnability not checked (no head-only or full fine-tuning run)"
    return ""


def mark(at: int, n: int) -> str:
    """The mark a score cell gets when some of its ``n`` runs are not above the floor."""
    return f" ⌊{at}/{n}⌋" if at else ""
