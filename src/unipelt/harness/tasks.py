"""The GLUE tasks as data: where each task's columns live, its labels and its metric.

Label lists follow the order of HF ``nyu-mll/glue`` ClassLabels, so TSV rows and hub rows map
to the same integer ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HarnessError


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    directory: str  # folder under the GLUE dir, as GLUE names it
    text_a: str | int  # header name, or a column index for header-less files (CoLA)
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...] = ()  # empty for regression
    metric: str
    header: bool = True
    hub_columns: tuple[str, ...] = ()  # (text_a, text_b?) names in nyu-mll/glue
    test_files: tuple[str, ...] = ("dev.tsv",)  # the GLUE dev file, our test split
    carve_test: bool = False  # no GLUE dev file here (SOURCES.md): cut the test split from train

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1  # one output for regression (STS-B)

    @property
    def is_regression(self) -> bool:
        return not self.labels


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="cola",
            directory="CoLA",
            text_a=3,
            text_b=None,
            label=1,
            labels=("0", "1"),
            metric="matthews",
            header=False,
            hub_columns=("sentence",),
        ),
        Task(
            name="sst2",
            directory="SST-2",
            text_a="sentence",
            text_b=None,
            label="label",
            labels=("0", "1"),
            metric="accuracy",
            hub_columns=("sentence",),
        ),
        Task(
            name="mrpc",
            directory="MRPC",
            text_a="#1 String",
            text_b="#2 String",
            label="Quality",
            labels=("0", "1"),
            metric="f1",
            hub_columns=("sentence1", "sentence2"),
        ),
        Task(
            name="stsb",
            directory="STS-B",
            text_a="sentence1",
            text_b="sentence2",
            label="score",
            metric="spearman",
            hub_columns=("sentence1", "sentence2"),
        ),
        Task(
            name="qqp",
            directory="QQP",
            text_a="question1",
            text_b="question2",
            label="is_duplicate",
            labels=("0", "1"),
            metric="f1",
            hub_columns=("question1", "question2"),
            carve_test=True,
        ),
        Task(
            name="mnli",
            directory="MNLI",
            text_a="sentence1",
            text_b="sentence2",
            label="gold_label",
            labels=("entailment", "neutral", "contradiction"),
            metric="accuracy",
            hub_columns=("premise", "hypothesis"),
            test_files=("dev.tsv", "dev_matched.tsv"),
        ),
        Task(
            name="qnli",
            directory="QNLI",
            text_a="question",
            text_b="sentence",
            label="label",
            labels=("entailment", "not_entailment"),
            metric="accuracy",
            hub_columns=("question", "sentence"),
        ),
        Task(
            name="rte",
            directory="RTE",
            text_a="sentence1",
            text_b="sentence2",
            label="label",
            labels=("entailment", "not_entailment"),
            metric="accuracy",
            hub_columns=("sentence1", "sentence2"),
        ),
    )
}

# The paper's column order (UniPELT Table 1).
TASK_ORDER = ("sst2", "mrpc", "cola", "rte", "qnli", "stsb", "mnli", "qqp")


def get_task(name: str) -> Task:
    if not isinstance(name, str) or name.lower() not in TASKS:
        raise HarnessError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name.lower()]
