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
    labels: tuple[str, ...] = ()  # the label column's values, in class-id order; empty for regression
    names: tuple[str, ...] = ()  # what each class is called, where the values are bare ids ("0", "1")
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

    @property
    def label_names(self) -> tuple[str, ...]:
        """The classes' names, as a checkpoint's ``id2label`` keeps them (nyu-mll/glue's names)."""
        return self.names or self.labels


_BINARY = ("0", "1")
# nyu-mll/glue's ClassLabel names for the 0/1 tasks
_SENTIMENT = dict(names=("negative", "positive"))
_ACCEPTABILITY = dict(names=("unacceptable", "acceptable"))
_EQUIVALENCE = dict(names=("not_equivalent", "equivalent"))
_DUPLICATE = dict(names=("not_duplicate", "duplicate"))
_NLI_2 = ("entailment", "not_entailment")
_NLI_3 = ("entailment", "neutral", "contradiction")
_PAIR = ("sentence1", "sentence2")
_QUESTIONS = ("question1", "question2")
_MNLI_TEST = ("dev.tsv", "dev_matched.tsv")


def _task(name, directory, texts, label, labels, metric, hub_columns, **more) -> Task:
    """One row of the table below; ``texts`` is (text_a,) or (text_a, text_b)."""
    text_a, text_b = (*texts, None)[:2]
    return Task(
        name=name,
        directory=directory,
        text_a=text_a,
        text_b=text_b,
        label=label,
        labels=labels,
        metric=metric,
        hub_columns=hub_columns,
        **more,
    )


# One row a task: name, GLUE folder, TSV text columns, label column, labels, metric, hub text columns.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("cola", "CoLA", (3,), 1, _BINARY, "matthews", ("sentence",), header=False, **_ACCEPTABILITY),
        _task("sst2", "SST-2", ("sentence",), "label", _BINARY, "accuracy", ("sentence",), **_SENTIMENT),
        _task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, "f1", _PAIR, **_EQUIVALENCE),
        _task("stsb", "STS-B", _PAIR, "score", (), "spearman", _PAIR),
        _task("qqp", "QQP", _QUESTIONS, "is_duplicate", _BINARY, "f1", _QUESTIONS, carve_test=True, **_DUPLICATE),
        _task(
            "mnli", "MNLI", _PAIR, "gold_label", _NLI_3, "accuracy", ("premise", "hypothesis"), test_files=_MNLI_TEST
        ),
        _task("qnli", "QNLI", ("question", "sentence"), "label", _NLI_2, "accuracy", ("question", "sentence")),
        _task("rte", "RTE", _PAIR, "label", _NLI_2, "accuracy", _PAIR),
    )
}

# The paper's column order (UniPELT Table 1).
TASK_ORDER = ("sst2", "mrpc", "cola", "rte", "qnli", "stsb", "mnli", "qqp")


def get_task(name: str) -> Task:
    if not isinstance(name, str) or name.lower() not in TASKS:
        raise HarnessError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name.lower()]


def parse_label_names(task: Task, text: str) -> tuple[str, ...]:
    """``--label-names a,b``: one distinct, non-empty name per class of ``task``, in class-id order."""
    names = tuple(n.strip() for n in text.split(","))
    if task.is_regression:
        raise HarnessError(f"--label-names: {task.name} is a regression task, its output has no classes to name")
    if len(names) != task.num_labels or not all(names) or len(set(names)) != len(names):
        raise HarnessError(
            f"--label-names {text!r}: {task.name} needs {task.num_labels} distinct non-empty names, in the order "
            f"of its label values {', '.join(task.labels)} (default: {','.join(task.label_names)})"
        )
    return names
