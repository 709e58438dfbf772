"""Chance floors, constant-predictor losses and fit, against hand-computed values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from unipelt.harness import floors
from unipelt.harness.data import load_splits
from unipelt.harness.tasks import get_task

from .conftest import GLUE_FIXTURE


def test_the_rules_give_the_stated_floors_from_the_dev_labels():
    assert round(floors.accuracy_floor((428, 444)), 1) == 53.7  # SST-2 dev: 444 positive of 872
    assert round(floors.accuracy_floor((146, 131)), 1) == 57.6  # RTE dev
    assert round(floors.correlation_floor(1043), 1) == 5.1  # CoLA dev
    assert round(floors.correlation_floor(1500), 2) == 4.25  # STS-B dev
    # 0.5 + 1.645 * sqrt(0.25 / 100) = 0.58225
    assert floors.accuracy_floor((50, 50)) == pytest.approx(58.225)
    assert floors.FLOORS["qnli"] == 51.7 and floors.FLOORS["mnli"] == 36.2
    assert floors.floor("qqp") is None


@pytest.mark.parametrize(
    "task, score, expected",
    [
        ("sst2", 53.7, False),  # at the floor is not above it
        ("sst2", 53.78, True),
        ("mrpc", 81.350954, False),  # compared at the floor's precision: "81.35"
        ("mrpc", 81.578947, True),
        ("stsb", -3.0, False),
        ("qqp", 90.0, None),  # no floor yet
        ("sst2", float("nan"), None),
    ],
)
def test_above(task, score, expected):
    assert floors.above(task, score) is expected


def test_constant_loss_is_the_label_entropy_or_variance():
    # a 60/40 split: -(0.6 ln 0.6 + 0.4 ln 0.4) = 0.6730116670
    assert floors.constant_loss([0] * 60 + [1] * 40, regression=False) == pytest.approx(0.6730116670)
    assert floors.constant_loss([1, 1, 0, 0], regression=False) == pytest.approx(math.log(2))
    assert floors.constant_loss([0, 1, 2], regression=False) == pytest.approx(math.log(3))
    assert floors.constant_loss([1.0, 2.0, 3.0, 4.0], regression=True) == pytest.approx(1.25)  # population variance


def test_fits_against_nine_tenths_of_the_constant_loss():
    constant = 0.6730116670  # 0.9x = 0.60571
    assert floors.fits([0.70, 0.65, 0.60], constant) is True  # the lowest epoch counts
    assert floors.fits([0.61, 0.62], constant) is False
    assert floors.fits([], constant) is None and floors.fits([float("nan")], constant) is None
    assert floors.fits([0.1], None) is None


def test_run_constant_loss_rebuilds_the_runs_rows(tmp_path):
    splits = load_splits(get_task("sst2"), 16, 111, dev_size=20, glue_dir=GLUE_FIXTURE)
    expected = floors.constant_loss(splits.train.label, regression=False)
    assert floors.run_constant_loss("sst2", 16, 111, 20, str(GLUE_FIXTURE)) == pytest.approx(expected)
    stsb = load_splits(get_task("stsb"), 16, 222, dev_size=20, glue_dir=GLUE_FIXTURE).train.label
    assert floors.run_constant_loss("stsb", 16, 222, 20, str(GLUE_FIXTURE)) == pytest.approx(stsb.var(ddof=0))
    # no data for the task: unknown, never a guess
    assert floors.run_constant_loss("rte", 16, 111, 20, str(tmp_path)) is None


def _runs(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "method", "test_metric"]).assign(k=100)


def test_cells_read_only_above_the_floor_and_learnable():
    runs = _runs(
        [("sst2", "full", 0.80)] * 3
        + [("sst2", "lora", 0.70)] * 2
        + [("sst2", "lora", 0.50)]  # 1 of 6 at the floor: read
        + [("rte", "full", 0.52)] * 3  # full fine-tuning at the floor: not learnable
        + [("rte", "lora", 0.70)] * 3
        + [("cola", "full", 0.30)] * 3
        + [("cola", "lora", 0.0)] * 3  # 3 of 6 at the floor: fewer than two thirds above
        + [("mrpc", "head-only", 0.85)] * 3  # head-only alone shows it is learnable
        + [("mrpc", "lora", 0.86)] * 3
        + [("stsb", "lora", 0.30)] * 3  # no full or head-only run: not checked
        + [("qqp", "full", 0.9)] * 3
    )
    cells = floors.cells(runs, ["k", "task"]).droplevel("k")
    assert cells.loc["sst2", ["at_floor", "n", "learnable", "read"]].tolist() == [1, 6, True, True]
    assert cells.loc["rte", "why"] == floors.NOT_LEARNABLE and not cells.loc["rte", "read"]
    assert cells.loc["cola", "why"] == "3 of 6 runs at the floor" and not cells.loc["cola", "read"]
    assert cells.loc["mrpc", "read"] and cells.loc["mrpc", "learnable"] is True
    assert cells.loc["stsb", "learnable"] is None and not cells.loc["stsb", "read"]
    assert cells.loc["qqp", "why"] == "no floor for this task yet" and not cells.loc["qqp", "read"]


def test_mark():
    assert floors.mark(2, 3) == " ⌊2/3⌋" and floors.mark(0, 3) == ""
