"""Every number the study states, computed from the committed stores only.

    python docs/results/analyze.py          # writes analysis.md and README.md's generated blocks
    python docs/results/analyze.py --check  # exit 1 if either is stale (tests/test_study_docs.py)

Five stores: ``uncut.sqlite`` (SST-2 and STS-B at K=100 with the protocol's full budget),
``head.sqlite`` (UniPELT-AP on that protocol with the BERT pooler trained, the head ablation),
``head-k100.sqlite`` and ``head-k500.sqlite`` (the single methods on SST-2 and STS-B, the cut protocol, with the
pooler trained),
``unipelt.sqlite`` (the cut K=100 and K=500 grids on the corrected library) and
``release-1/unipelt.sqlite`` (the same cut grids on the first release, kept for the comparison).
Every score is read against its task's chance floor (``unipelt.harness.floors``): a mean whose runs
are not all above it is marked ⌊a/n⌋, and the comparisons read only the (K, task) cells where at
least two thirds of the runs are above it on a task that full fine-tuning (or head-only) learns.
A run fits when its lowest training loss is below 0.9× the constant predictor's loss on its own K
rows; those constant losses are rebuilt from the GLUE files (``$GLUE_DIR``, else
``../shared/data/glue`` beside the checkout) and kept in ``constant-loss.csv``, which is read
instead when the files are not here.
A README block is the text between ``<!-- analyze: NAME -->`` and ``<!-- /analyze -->``; nothing
outside the blocks states a measured number.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from unipelt.harness import floors
from unipelt.harness.store import Store

HERE = Path(__file__).parent
ROOT_README = HERE.parent.parent / "README.md"  # its study paragraph is the block "study"
GLUE = Path(os.environ.get("GLUE_DIR") or HERE.resolve().parents[2] / "shared" / "data" / "glue")  # SPEC §4
CONSTANTS = HERE / "constant-loss.csv"  # each (task, K, data seed)'s constant-predictor training loss
STORES = {  # in the order the provenance table lists them
    "uncut": HERE / "uncut.sqlite",
    "head": HERE / "head.sqlite",
    "head-k100": HERE / "head-k100.sqlite",
    "head-k500": HERE / "head-k500.sqlite",
    "cut": HERE / "unipelt.sqlite",
    "release-1": HERE / "release-1/unipelt.sqlite",
}
SINGLE = ["bitfit", "adapter", "prefix", "lora"]  # the single PELT methods UniPELT combines or is set beside
UNIPELT = ["unipelt-ap", "unipelt-apl"]
GRID = ["full", *SINGLE, *UNIPELT]
HEAD_ONLY = "head-only"  # the frozen backbone with only its head trained: a row wherever a store has it
NOGATE = ("unipelt-ap", "unipelt-ap-nogate")
POOLER = "-pooler"  # grid-head*.toml: a method's config with the pooler trained, as in release 1
UNCUT = [*GRID, NOGATE[1]]
UNCUT_TASKS = ["sst2", "stsb"]
SEEDS = 3
COLUMNS = [
    "run_key",
    "task",
    "method",
    "k",
    "data_seed",
    "status",
    "reason",
    "best_epoch",
    "test_metric",
    "spec",
    "params",
    "versions",
]
# Config differences that are not changes of the computation (what the code did in release 1)
SAME_MATH = {
    ("prefix.composition", "add", "interpolate"): ": renamed, the same formula (format-1 checkpoints load so)",
    ("adapter.placement", "(absent)", "pfeiffer"): ": a new field; release 1 placed adapters this way",
    ("prefix.networks", "(absent)", "shared"): ": a new field; release 1 shared one prefix network",
}
BLOCK = re.compile(r"(<!-- analyze: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /analyze -->)", re.S)


@dataclass(frozen=True)
class Study:
    """One store's finished runs (score = test metric × 100), epochs, gates and failed runs."""

    name: str
    runs: pd.DataFrame
    epochs: pd.DataFrame
    gates: pd.DataFrame
    failed: pd.DataFrame

    @classmethod
    def load(cls, name: str, path: Path) -> Study:
        if not path.exists():
            empty = pd.DataFrame(columns=[*COLUMNS, "score", "at_floor"])
            return cls(name, empty, pd.DataFrame(columns=["run_key", "epoch"]), pd.DataFrame(), empty)
        with Store(path, create=False, readonly=True) as store:
            every = store.runs()
            epochs, gates = store.epochs(), store.gates()
        every = every.assign(k=every.k.astype(int), score=100 * every.test_metric, at_floor=floors.at_floor(every))
        return cls(name, every[every.status == "finished"], epochs, gates, every[every.status == "failed"])

    @classmethod
    def merge(cls, name: str, *studies: Study) -> Study:
        """Several stores' rows as one study."""
        return cls(name, *(pd.concat([getattr(s, f) for s in studies]) for f in ("runs", "epochs", "gates", "failed")))

    def stats(self, methods: list[str]) -> pd.DataFrame:
        """Mean, std and count of the score over data seeds, per (K, task, method)."""
        runs = self.runs[self.runs.method.isin(methods)]
        return runs.groupby(["k", "task", "method"]).score.agg(["mean", "std", "count"])

    def with_head(self, methods: list[str]) -> list[str]:
        """``methods`` with the head-only baseline after full fine-tuning, where this store has it."""
        return [*methods[:1], HEAD_ONLY, *methods[1:]] if (self.runs.method == HEAD_ONLY).any() else methods

    def cells(self, methods: list[str]) -> pd.DataFrame:
        """Per (K, task), over ``methods``' runs (and head-only's): runs at the floor, whether full
        fine-tuning or head-only is above it, whether the cell is read in comparisons, and why not."""
        runs = self.runs[self.runs.method.isin(self.with_head(methods))]
        return floors.cells(runs, ["k", "task"]) if not runs.empty else pd.DataFrame(columns=["read", "why"])


def read(frame: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (indexed by K, task, ...) whose cell is read in comparisons."""
    if frame.empty:
        return frame
    keys = frame.index.droplevel(list(range(2, frame.index.nlevels)))
    return frame[keys.isin(cells.index[cells.read.astype(bool)])]


def left_out(cells: pd.DataFrame) -> str:
    """The cells not read, each with why: "stsb at K=100 (19 of 24 runs at the floor)"."""
    return "; ".join(f"{t} at K={k} ({c.why})" for (k, t), c in cells[~cells.read.astype(bool)].iterrows())


def unread(marks: dict[str, str], methods: list[str]) -> str:
    """The caveat of a comparison between ``methods`` where some of their runs are at the floor
    (SPEC §4: a comparison is read only where their runs are above it), else ""."""
    floored = [f"{m}{marks[m]}" for m in methods if marks.get(m)]
    return f" Not read: it rests on runs at the floor ({', '.join(floored)})." if floored else ""


def floor_marks(study: Study, cells: pd.DataFrame) -> dict[str, str]:
    """Per method, ⌊a/n⌋ over its runs in the cells read (a at the floor), or "" when none is."""
    runs = read(study.runs.set_index(["k", "task", "method"]), cells).at_floor.dropna().astype(bool)
    per = runs.groupby(level="method").agg(["sum", "size"])
    return {m: floors.mark(int(r["sum"]), int(r["size"])) for m, r in per.iterrows()}


def constant_losses(studies: list[Study]) -> pd.Series:
    """(task, K, data seed) -> the constant predictor's training loss on those K rows (``floors``):
    rebuilt from the GLUE files when they are here, else read from constant-loss.csv. The train
    rows of an integer K do not depend on the dev size, so the default one rebuilds them."""
    keys = sorted({(t, int(k), int(d)) for s in studies for t, k, d in zip(s.runs.task, s.runs.k, s.runs.data_seed)})
    frame = pd.DataFrame(keys, columns=["task", "k", "data_seed"])
    if GLUE.is_dir():
        frame["constant"] = [floors.run_constant_loss(t, k, d, glue_dir=str(GLUE)) for t, k, d in keys]
        frame["constant"] = frame.constant.astype(float).round(6)
    elif CONSTANTS.exists():
        frame = pd.read_csv(CONSTANTS)
    else:
        frame["constant"] = float("nan")
    return frame.set_index(["task", "k", "data_seed"]).constant


def marked(study: Study, stats: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Mean scores as text, each with ⌊a/n⌋ when a of its n runs are not above the floor."""
    runs = study.runs[study.runs.method.isin(methods)]
    if runs.empty:
        return pd.DataFrame()
    counts = floors.cells(runs, ["k", "task", "method"]).reindex(stats.index)
    text = stats["mean"].map(lambda x: f"{x:.1f}") + [floors.mark(a, n) for a, n in zip(counts.at_floor, counts.n)]
    return text.unstack(["k", "task"]).reindex(methods).dropna(how="all")


def fit(study: Study, methods: list[str], constants: pd.Series) -> pd.DataFrame:
    """Per (K, task) and method: runs that fit their own K rows, of the runs, and the mean of lowest
    training loss / the constant predictor's loss."""
    runs = study.runs[study.runs.method.isin(methods)]
    if runs.empty or study.epochs.empty:
        return pd.DataFrame()
    lowest = runs.run_key.map(study.epochs.groupby("run_key").train_loss.min()).to_numpy()
    constant = constants.reindex(pd.MultiIndex.from_arrays([runs.task, runs.k, runs.data_seed])).to_numpy()
    fits = [floors.fits([lo], c) for lo, c in zip(lowest, constant)]
    runs = runs.assign(ratio=lowest / constant, fits=pd.Series(fits, runs.index, dtype=object).map({True: 1.0, False: 0.0}))
    per = runs.groupby(["k", "task", "method"])
    text = (
        per.fits.sum().astype(int).astype(str)
        + "/"
        + per.fits.count().astype(str)
        + per.ratio.mean().map(lambda r: f" ({r:.2f})" if pd.notna(r) else " (–)")
    )
    return text.unstack(["k", "task"]).reindex(study.with_head(methods)).dropna(how="all")


def md(frame: pd.DataFrame, digits: int = 1, none: str = "_no runs yet_") -> str:
    return frame.round(digits).to_markdown() if not frame.empty else none


NONE_READ = "_no cell is read (see which cells are read, above)_"
CELLS = (
    "Runs at the floor (at or below the task's one-sided 95% threshold over the constant predictor), "
    "of the runs; learnable: full fine-tuning or head-only has two thirds of its runs above it; read: "
    "the cell enters the comparisons (two thirds of all its runs above the floor, and learnable):"
)
FIT = (
    "Runs that fit their own K training rows (lowest epoch training loss below 0.9× the constant "
    "predictor's: the entropy of their K labels in nats for cross-entropy, the variance of their "
    "STS-B scores for mean squared error), of the runs, and in brackets the mean of lowest training "
    "loss / that constant loss:"
)


def complete(stats: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """The (K, task) blocks where every method has all seeds: only those are compared."""
    keep = [
        key
        for key, block in stats.groupby(level=[0, 1])
        if set(methods) <= set(block.index.get_level_values(2)) and block["count"].min() >= SEEDS
    ]
    return stats[stats.index.droplevel(2).isin(keep)]


def averages(stats: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per K: each method's score averaged over the complete tasks, its mean std over seeds, rank."""
    stats = complete(stats, methods)
    if stats.empty:
        return pd.DataFrame()
    by = stats.groupby(level=[0, 2])[["mean", "std"]].mean().rename(columns={"mean": "avg", "std": "avg std"})
    by["tasks"] = stats.groupby(level=[0, 2]).size()
    by["rank"] = by.groupby(level=0)["avg"].rank(ascending=False, method="min").astype(int)
    return by.sort_values(["k", "rank"])


def tied(means: pd.Series, value: float) -> str:
    """Every method whose mean rounds to ``value`` (several answer the same constant on some tasks)."""
    return "/".join(m for m, x in means.items() if round(x, 1) == round(value, 1))


def per_task(stats: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per complete (K, task): best, worst, best single method and each UniPELT's margin over it."""
    rows = []
    for (k, task), block in complete(stats, methods).groupby(level=[0, 1]):
        means = block["mean"].droplevel([0, 1]).reindex(methods)
        singles = means.reindex(SINGLE)
        row = {
            "K": k,
            "task": task,
            "best": tied(means, means.max()),
            "worst": tied(means, means.min()),
            "best single": tied(singles, singles.max()),
            "its score": singles.max(),
        }
        for m in UNIPELT:
            row[f"{m} − best single"] = means[m] - singles.max()
        if HEAD_ONLY in block.index.get_level_values(2):  # a PELT method not above it added nothing
            base = block["mean"].droplevel([0, 1])[HEAD_ONLY]
            row[HEAD_ONLY] = base
            row[f"not above {HEAD_ONLY}"] = "/".join(m for m in methods if m != "full" and means[m] <= base) or "–"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["K", "task"]) if rows else pd.DataFrame()


def paired(study: Study, a: str, b: str) -> pd.DataFrame:
    """``a`` − ``b`` seed by seed, on the (K, task, seed) both ran."""
    runs = study.runs[study.runs.method.isin([a, b])]
    wide = runs.pivot_table(index=["k", "task", "data_seed"], columns="method", values="score").dropna()
    if wide.empty or not {a, b} <= set(wide.columns):
        return pd.DataFrame()
    return wide.assign(**{f"{a} − {b}": wide[a] - wide[b]})


def budget(study: Study, methods: list[str]) -> pd.DataFrame:
    """Per method: the best epoch, epochs run, and the share of runs that hit the epoch cap."""
    runs = study.runs[study.runs.method.isin(methods)]
    if runs.empty:
        return pd.DataFrame()
    ran = study.epochs.groupby("run_key").epoch.max()
    runs = runs.assign(cap=runs.spec.map(lambda s: s["epochs"]), ran=runs.run_key.map(ran))
    runs = runs.assign(
        **{"best epoch": runs.best_epoch, "at cap": runs.ran == runs.cap, "best = last": runs.best_epoch == runs.ran}
    )
    return runs.groupby(["k", "task", "method"])[["best epoch", "ran", "at cap", "best = last"]].mean()


def gates(study: Study) -> pd.DataFrame:
    g = study.gates
    if g.empty:
        return pd.DataFrame()
    g = g[g.method.isin(UNIPELT)]
    return g.groupby(["method", "k", "task", "submodule"]).value.mean().unstack("submodule")


def provenance(studies: list[Study]) -> pd.DataFrame:
    """Which code each row came from: finished and failed runs per store and commit."""
    rows = []
    for s in studies:
        every = pd.concat([s.runs.assign(status="finished"), s.failed.assign(status="failed")])
        for (commit, status), n in (
            every.groupby(
                [
                    every.versions.map(
                        lambda v: (
                            v.get("unipelt_commit", "?")[:7]
                            + ("+dirty" if "dirty" in v.get("unipelt_commit", "") else "")
                        )
                    ),
                    "status",
                ]
            )
            .size()
            .items()
        ):
            rows.append({"store": s.name, "commit": commit, "status": status, "runs": n})
    return pd.DataFrame(rows).set_index(["store", "commit", "status"]) if rows else pd.DataFrame()


def coverage(study: Study, methods: list[str], tasks: list[str] | None = None) -> pd.DataFrame:
    """Seeds finished per (K, task) and method."""
    runs = study.runs[study.runs.method.isin(methods)]
    if runs.empty:
        return pd.DataFrame()
    table = runs.groupby(["k", "task", "method"]).size().unstack("method").reindex(columns=methods)
    return table.fillna(0).astype(int)


def moved(old: Study, new: Study) -> pd.DataFrame:
    """The cut grids, release 1 against the corrected library: mean over the seeds both ran."""
    keys = ["k", "task", "method", "data_seed"]
    both = old.runs[keys + ["score"]].merge(new.runs[keys + ["score"]], on=keys, suffixes=(" release-1", " now"))
    both = both[both.method.isin(GRID)]
    if both.empty:
        return pd.DataFrame()
    frame = both.groupby(keys[:3])[["score release-1", "score now"]].mean()
    frame["Δ"] = frame["score now"] - frame["score release-1"]
    frame["seeds"] = both.groupby(keys[:3]).size()
    return frame


def head_change(old: Study, new: Study) -> pd.DataFrame:
    """Trainable head parameters per method (from count_parameters in each run's row)."""
    rows = []
    for s in (old, new):
        for method, params in s.runs.groupby("method").params.first().items():
            if method in GRID:
                rows.append({"method": method, "store": s.name, "head": params.get("head")})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index="method", columns="store", values="head").reindex(GRID).dropna(how="all")


def config_change(old: Study, new: Study) -> pd.DataFrame:
    """Per method, the PELT config fields that differ between the stores' first runs."""

    def first(s: Study) -> dict:
        return s.runs.groupby("method").spec.first().map(lambda spec: spec["config"]).to_dict()

    before, after = first(old), first(new)
    rows = []
    for method in GRID:
        if method in before and method in after:
            a = {m["method"]: m for m in before[method]["methods"]}
            b = {m["method"]: m for m in after[method]["methods"]}
            for kind in sorted(set(a) | set(b)):
                for key in sorted(set(a.get(kind, {})) | set(b.get(kind, {}))):
                    x, y = a.get(kind, {}).get(key, "(absent)"), b.get(kind, {}).get(key, "(absent)")
                    if x != y:
                        rows.append({"method": method, "field": f"{kind}.{key}", "release-1": x, "now": y})
    return pd.DataFrame(rows).set_index(["method", "field"]) if rows else pd.DataFrame()


# --- the README's sentences -------------------------------------------------------------------


def fmt(x: float) -> str:
    return f"{x:.1f}"


def signed(x: float) -> str:
    return f"{x:+.1f}" if round(x, 1) != 0 else "±0.0"


def uncut_progress(uncut: Study) -> tuple[int, int]:
    """Finished runs of the uncut grid, and how many it has."""
    return len(uncut.runs[uncut.runs.method.isin(UNCUT)]), len(UNCUT) * len(UNCUT_TASKS) * SEEDS


def floor_sentence(study: Study, methods: list[str], cells: pd.DataFrame) -> str:
    """How many runs are at the floor, and the cells the comparisons leave out."""
    runs = study.runs[study.runs.method.isin(study.with_head(methods))]
    known = runs.at_floor.dropna()
    out = f"{int(known.astype(bool).sum())} of its {len(known)} runs score at or below their task's chance floor."
    if skipped := left_out(cells):
        out += (
            " The comparisons read only the (K, task) cells where at least two thirds of the runs are above it "
            f"and full fine-tuning (or head-only) is: left out are {skipped}."
        )
    return out


def uncut_summary(uncut: Study) -> str:
    stats, cells = uncut.stats(uncut.with_head(UNCUT)), uncut.cells(UNCUT)
    n, total = uncut_progress(uncut)
    head = f"{n} of the uncut grid's {total} runs have finished. {floor_sentence(uncut, UNCUT, cells)}"
    avg = averages(read(stats, cells), GRID)
    if avg.empty:
        return head + " No cell has every method at every seed above the floor, so nothing is compared."
    avg = avg.loc[100]
    tasks = per_task(read(stats, cells), GRID)
    singles = avg.reindex(SINGLE)
    best, best_single = avg["avg"].idxmax(), singles["avg"].idxmax()
    out = [head, f"On the cells read ({', '.join(tasks.index.get_level_values(1))}):"]
    marks = floor_marks(uncut, cells)
    order = ", ".join(f"{m} {fmt(avg.loc[m, 'avg'])}{marks.get(m, '')}" for m in avg.index)
    out.append(f"- **Best average**: {best}. The order: {order}.")
    gains = "; ".join(f"{m}{marks.get(m, '')} {signed(avg.loc[m, 'avg'] - singles.loc[best_single, 'avg'])}" for m in UNIPELT)
    out.append(
        f"- **Gain over the best single method** ({best_single}{marks.get(best_single, '')}, "
        f"{fmt(singles.loc[best_single, 'avg'])} on average): {gains}.{unread(marks, [best_single, *UNIPELT])}"
    )
    for m in UNIPELT:
        margins = tasks[f"{m} − best single"]
        per = ", ".join(f"{t} {signed(v)}" for (_, t), v in margins.items())
        out.append(
            f"- **Per-task upper bound** (the best single method on each task): {m} is at or above it "
            f"on {(margins >= 0).sum()} of {len(margins)} tasks ({per})."
            + unread(marks, [m, *dict.fromkeys(b for w in tasks["best single"] for b in w.split("/"))])
        )
    worst = tasks["worst"]
    hits = [f"{t} ({w})" for (_, t), w in worst.items() if set(w.split("/")) & set(UNIPELT)]
    where = ", ".join(f"{t}: {w}" for (_, t), w in worst.items())
    out.append(
        f"- **Never the worst**: {'true' if not hits else 'false, on ' + ', '.join(hits)} (worst per task: {where})."
    )
    if HEAD_ONLY in tasks:
        below = ", ".join(f"{t}: {w}" for (_, t), w in tasks[f"not above {HEAD_ONLY}"].items())
        out.append(f"- **Not above head-only** (the frozen backbone, only its head trained; they added nothing): {below}.")
    spread = ", ".join(f"{m} {fmt(avg.loc[m, 'avg std'])}" for m in avg.sort_values("avg std").index)
    out.append(f"- **Seed variance** (std over seeds, mean over tasks, lowest first): {spread}.")
    pair = read(paired(uncut, *NOGATE), cells)
    if pair.empty:
        out.append("- **NoGate against AP**: no paired runs in the cells read.")
    else:
        d = pair[f"{NOGATE[0]} − {NOGATE[1]}"]
        per = ", ".join(f"{t} {signed(g.mean())}" for t, g in d.groupby(level=1))
        out.append(
            f"- **NoGate against AP** (gated − no-gate, paired by seed, {len(d)} pairs): "
            f"{signed(d.mean())} ± {fmt(d.std())} on average; per task {per}."
        )
    return "\n".join(out)


def pooler_pairs(frozen: Study, trained: Study, methods: list[str], old: Study | None = None) -> pd.DataFrame:
    """Each method with the pooler trained (config ``METHOD-pooler``) against frozen, seed by seed;
    with ``old``, release 1's score for the same run beside them (it trained the pooler too)."""
    both = Study.merge("both", frozen, trained)
    frames = {}
    for m in methods:
        wide = paired(both, f"{m}{POOLER}", m)
        if not wide.empty:
            frames[m] = wide[[m, f"{m}{POOLER}"]].set_axis(["frozen", "trained"], axis=1)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, names=["method"])
    out = out.assign(**{"trained − frozen": out.trained - out.frozen})
    if old is not None:
        release = old.runs.set_index(["method", "k", "task", "data_seed"]).score
        out["release 1"] = release.reindex(out.index).to_numpy()
    return out


def exact(pairs: pd.DataFrame) -> int:
    """Runs with the pooler trained whose score is release 1's, exactly (the same computation gives the same float)."""
    return int((pairs["release 1"] == pairs.trained).sum())


def pooler_summary(pairs: pd.DataFrame, what: str) -> str:
    if pairs.empty:
        return "No run of this head ablation has finished yet."

    def release(g: pd.DataFrame) -> str:
        if "release 1" not in g:
            return ""
        return f"; release 1 {fmt(g['release 1'].mean())}, the very same score on {exact(g)} of {len(g)}"

    per = "; ".join(
        f"{m} on {t} at K={k}: {fmt(g.frozen.mean())} frozen → {fmt(g.trained.mean())} trained "
        f"({signed(g['trained − frozen'].mean())}, up on {(g['trained − frozen'] > 0).sum()} of {len(g)} seeds"
        f"{release(g)})"
        for (m, k, t), g in pairs.groupby(level=["method", "k", "task"], sort=False)
    )
    return f"{what}, the pooler frozen (the paper's head) and trained (release 1's): {per}."


def moved_summary(old: Study, new: Study) -> str:
    frame = moved(old, new)
    if frame.empty:
        return "No cut-grid run of the corrected library has finished yet."
    n = int(frame["seeds"].sum())
    avg = frame.groupby(level=[0, 2])["Δ"].mean().unstack(0)
    per = "; ".join(
        f"K={k}: "
        + ", ".join(f"{m} {signed(avg.loc[m, k])}" for m in GRID if m in avg.index and pd.notna(avg.loc[m, k]))
        for k in avg.columns
    )
    big = frame["Δ"].abs().idxmax()
    return (
        f"{n} runs of the cut grids are in both stores. Mean change (now − release 1) over the tasks and "
        f"seeds both ran, per method: {per}. The largest single move: {big[2]} on {big[1]} at K={big[0]}, "
        f"{fmt(frame.loc[big, 'score release-1'])} → {fmt(frame.loc[big, 'score now'])}."
    )


def study_paragraph(uncut: Study, old: Study, cut: Study, single: pd.DataFrame) -> str:
    """The top-level README's paragraph: how much of the grids is above the floor, what the cells
    that are say, and coverage."""
    cells = {"uncut": uncut.cells(UNCUT), "cut": cut.cells(GRID)}
    n, total = uncut_progress(uncut)
    cut_n = len(cut.runs[cut.runs.method.isin(GRID)])
    old_n = len(old.runs[old.runs.method.isin(GRID)])
    where = (
        f"{n} of {total} uncut runs (SST-2 and STS-B at K=100, 50 epochs, patience 10, 1,000 dev rows) "
        f"and {cut_n} of the {old_n} cut-grid runs of release 1 have been rerun on the corrected library."
    )
    both = pd.concat([uncut.runs[uncut.runs.method.isin(UNCUT)], cut.runs[cut.runs.method.isin(GRID)]]).at_floor
    both = both.dropna().astype(bool)
    shown = [f"{t} at K={k} in the {name} grid" for name, c in cells.items() for (k, t) in c.index[c.read.astype(bool)]]
    floor = (
        f" {both.sum()} of these {len(both)} runs score at or below their task's chance floor (the one-sided "
        f"95% threshold over the constant predictor), so most cells cannot answer the paper's questions. The "
        f"(K, task) cells with two thirds of their runs above it, on a task that full fine-tuning learns: "
        f"{len(shown)} of {sum(len(c) for c in cells.values())}{' (' + ', '.join(shown) + ')' if shown else ''}."
    )
    avg = averages(read(uncut.stats(UNCUT), cells["uncut"]), GRID)
    if avg.empty:
        return (
            f"**The reproduction study** ([docs/results/](docs/results/README.md)) runs the paper's low-resource "
            f"protocol on real GLUE data and MiniLM. {where}{floor} No uncut cell is read, so nothing is "
            f"compared.{head_sentence(single)} The first study, before the fidelity corrections, is kept in "
            f"docs/results/release-1/."
        )
    avg = avg.loc[100]
    best_single = avg.reindex(SINGLE)["avg"].idxmax()
    marks = floor_marks(uncut, cells["uncut"])
    leads = ", ".join(f"{m} {fmt(avg.loc[m, 'avg'])}{marks.get(m, '')}" for m in avg.index[:3])
    shown_marks = "⌊" in leads + marks.get(best_single, "")
    legend = "; ⌊a/n⌋: a of a method's n runs there score at the floor" if shown_marks else ""
    return (
        f"**The reproduction study** ([docs/results/](docs/results/README.md)) runs the paper's low-resource "
        f"protocol on real GLUE data and MiniLM. {where}{floor} On the uncut cells read, and only there, the "
        f"best averages are {leads}; the best single method is {best_single} "
        f"({fmt(avg.loc[best_single, 'avg'])}{marks.get(best_single, '')}){legend}."
        f"{head_sentence(single)} The first study, before the fidelity corrections, is kept in "
        f"docs/results/release-1/."
    )


def head_sentence(pairs: pd.DataFrame) -> str:
    """How many single-method runs with the pooler trained give release 1's exact score."""
    if pairs.empty:
        return ""
    same = exact(pairs)
    so = ", so for them the paper's frozen pooler is all that moved" if same == len(pairs) else ""
    return (
        f" With the BERT pooler trained again, as release 1 trained it, {same} of {len(pairs)} single-method "
        f"runs give release 1's exact score{so}."
    )


def why_summary(old: Study, now: Study) -> str:
    heads, fields = head_change(old, now), config_change(old, now)
    if heads.empty or now.name not in heads:
        return "No run of the corrected library has finished yet."
    out = []
    pelt = heads.drop(index="full", errors="ignore").dropna()  # full fine-tuning trains the pooler anyway
    for (before, after), methods in pelt.groupby(["release-1", now.name]).groups.items():
        verb = "unchanged at" if before == after else f"{before:,.0f} →"
        out.append(f"- **Head** ({', '.join(methods)}): trainable head parameters {verb} {after:,.0f}.")
    if fields.empty:
        out.append("- **PELT configs**: no field differs between the stores for these methods.")
    for (method, field), row in fields.iterrows():
        note = SAME_MATH.get((field, row["release-1"], row["now"]), "")
        out.append(f"- **{method}**: `{field}` {row['release-1']} → {row['now']}{note}.")
    return "\n".join(out)


def head_ablations(studies: dict[str, Study]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """UniPELT-AP's head ablation (uncut) and the single methods' (cut, K=100 and K=500), paired."""
    single = Study.merge("head-single", studies["head-k100"], studies["head-k500"])
    return (
        pooler_pairs(studies["uncut"], studies["head"], ["unipelt-ap"]),
        pooler_pairs(studies["cut"], single, SINGLE, studies["release-1"]),
    )


def blocks(studies: dict[str, Study]) -> dict[str, str]:
    uncut, cut, old = studies["uncut"], studies["cut"], studies["release-1"]
    now = Study.merge("now", cut, uncut)
    head, single = head_ablations(studies)
    return {
        "summary": uncut_summary(uncut),
        "head": pooler_summary(head, "UniPELT-AP on the uncut protocol"),
        "head-single": pooler_summary(single, "The single methods on the cut protocol"),
        "why": why_summary(old, now),
        "moved": moved_summary(old, cut),
        "coverage": "\n\n".join(
            f"`{s.name}`:\n\n{md(coverage(s, UNCUT if s.name == 'uncut' else GRID), 0)}" for s in (uncut, cut)
        ),
        "provenance": md(provenance(list(studies.values())), 0),
        "study": study_paragraph(uncut, old, cut, single),
    }


def scores(study: Study, methods: list[str], std: bool = False) -> list[str]:
    """A grid's mean table (⌊a/n⌋: a of the n runs at the floor), its std table when asked, its
    seed counts and which of its cells are read, as analysis.md parts."""
    methods = study.with_head(methods)
    stats = study.stats(methods)
    parts = [
        "Test score ×100, mean over data seeds; ⌊a/n⌋: a of the n runs at or below the chance floor:",
        md(marked(study, stats, methods)),
    ]
    if std:
        parts += ["Std over data seeds:", md(stats["std"].unstack(["k", "task"]).reindex(methods).dropna(how="all"))]
    return parts + ["Seeds:", md(coverage(study, methods), 0), "Which cells are read:", CELLS, md(study.cells(methods), 0)]


def analysis(studies: dict[str, Study], constants: pd.Series) -> str:
    uncut, cut, old = studies["uncut"], studies["cut"], studies["release-1"]
    s = read(uncut.stats(uncut.with_head(UNCUT)), uncut.cells(UNCUT))
    cut_stats = read(cut.stats(cut.with_head(GRID)), cut.cells(GRID))
    head, single = head_ablations(studies)
    parts = [
        "# Study numbers (generated by docs/results/analyze.py from the stores; do not edit)",
        "## Which code each row came from",
        md(provenance(list(studies.values())), 0),
        "## Uncut grid: SST-2 and STS-B, K=100, 50 epochs, patience 10, 1,000 dev rows",
        *scores(uncut, UNCUT, std=True),
        "### Average over tasks (complete cells read only) and rank",
        md(averages(s, GRID), none=NONE_READ),
        "### Per task (cells read only): best, worst, best single method, UniPELT's margin over it",
        md(per_task(s, GRID), none=NONE_READ),
        "### NoGate: UniPELT-AP with and without gates, paired by seed (every pair; the summary reads the cells read)",
        md(paired(uncut, *NOGATE)),
        "### Training fit",
        FIT,
        md(fit(uncut, UNCUT, constants)),
        "### Epochs: best epoch, epochs run, share at the 50-epoch cap, share whose best was the last",
        md(budget(uncut, UNCUT), 2),
        "### Gates (mean over layers and seeds)",
        md(gates(uncut), 3),
        "### The head: UniPELT-AP with the pooler trained (head.sqlite) against frozen, paired by seed",
        md(head),
        "## Cut grids on the corrected library (K=100: 15 epochs; K=500: 5 epochs; 200 dev rows)",
        *scores(cut, GRID),
        "### Average over tasks (cells read only) and rank",
        md(averages(cut_stats, GRID), none=NONE_READ),
        "### Per task (cells read only)",
        md(per_task(cut_stats, GRID), none=NONE_READ),
        "### Training fit",
        FIT,
        md(fit(cut, GRID, constants)),
        "### Gates",
        md(gates(cut), 3),
        "## What moved: release 1 against the corrected library (same cut grids, same seeds)",
        md(moved(old, cut)),
        "Release 1's training fit, beside the table above:",
        md(fit(old, GRID, constants)),
        "Trainable head parameters (`count_parameters()['head']`). Full fine-tuning trains the pooler in "
        "both releases; release 1 counted it in the head, the corrected library counts it in the base:",
        md(head_change(old, cut), 0),
        "PELT config fields that differ:",
        md(config_change(old, cut), 0),
        "### The head for the single methods: the pooler trained (head-k100.sqlite, head-k500.sqlite) against frozen, "
        "SST-2 and STS-B, paired by seed",
        md(single),
        "## Failed runs",
        md(
            pd.concat([x.failed.assign(store=x.name) for x in (uncut, cut)])[
                ["store", "task", "method", "k", "data_seed", "reason"]
            ].set_index(["store", "task", "method"]),
            0,
        ),
    ]
    return "\n\n".join(parts) + "\n"


def fill(readme: str, generated: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        if m["name"] not in generated:
            raise SystemExit(f"analyze.py: README block {m['name']!r} has no generator")
        return f"{m[1]}{generated[m['name']]}\n{m[4]}"

    return BLOCK.sub(one, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if analysis.md or README.md is stale")
    args = parser.parse_args()
    studies = {name: Study.load(name, path) for name, path in STORES.items()}
    generated = blocks(studies)
    constants = constant_losses(list(studies.values()))
    outputs = {HERE / "analysis.md": analysis(studies, constants)}
    if GLUE.is_dir():  # rebuilt from the data: the committed copy must match
        outputs[CONSTANTS] = constants.reset_index().to_csv(index=False)
    for readme in (HERE / "README.md", ROOT_README):
        outputs[readme] = fill(readme.read_text(), generated)
    stale = [p.name for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if args.check:
        if stale:
            print(f"stale: {', '.join(stale)}; run python docs/results/analyze.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
