"""Every number of the backbone-head study (issue 27), computed from ``backbone.sqlite`` only.

    python docs/results/backbone/analyze.py          # rewrites README.md's generated blocks
    python docs/results/backbone/analyze.py --check  # exit 1 if they are stale (tests/test_backbone_docs.py)

The study: the offline MiniLM with its own pretrained summary as the head's input (the masked
mean), the head at one rate for every method (``head_lr`` 1e-3), the full protocol (50 epochs,
patience 10, 1,000 dev rows), SST-2 and STS-B, the protocol's data seeds. Scores are read against
each task's chance floor (``unipelt.harness.floors``): a mean with runs at the floor is marked
⌊a/n⌋ and a (K, task) cell enters the comparisons only where two thirds of its runs are above the
floor and the head-only baseline (or full fine-tuning) is. Paired differences are per data seed,
with a bootstrap 95% interval of their mean (BCa, scipy's default) and an exact sign-flip p (scipy);
a difference whose interval holds zero is not resolved by these seeds, and the text says so
instead of reading it.
A block is the text between ``<!-- analyze: NAME -->`` and ``<!-- /analyze -->``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, permutation_test

from unipelt.harness import floors
from unipelt.harness.store import Store

HERE = Path(__file__).parent
STORE = HERE / "backbone.sqlite"
CONSTANTS = HERE / "constant-loss.csv"  # each (task, K, data seed)'s constant-predictor training loss
README = HERE / "README.md"
GLUE = os.environ.get("GLUE_DIR") or str(HERE.resolve().parents[3] / "shared" / "data" / "glue")
HEAD_ONLY, FULL = "head-only", "full"
SINGLE = ["bitfit", "adapter", "prefix", "lora"]
UNIPELT = ["unipelt-ap", "unipelt-apl"]
NOGATE = "unipelt-ap-nogate"
METHODS = [HEAD_ONLY, FULL, *SINGLE, *UNIPELT, NOGATE]
BLOCK = re.compile(r"(<!-- analyze: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /analyze -->)", re.S)
ROOT = HERE.parents[2] / "README.md"  # its paragraph on this study: the block <!-- backbone: headline -->
ROOT_BLOCK = re.compile(r"(<!-- backbone: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /backbone -->)", re.S)


def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(STORE, create=False, readonly=True) as store:
        runs, epochs = store.runs(), store.epochs()
    runs = runs[runs.status == "finished"]
    runs = runs.assign(k=runs.k.astype(int), score=100 * runs.test_metric, at_floor=floors.at_floor(runs))
    constant = constants(runs)
    lowest = runs.run_key.map(epochs.groupby("run_key").train_loss.min()).astype(float)
    runs = runs.assign(constant=[constant.get((t, k, s)) for t, k, s in zip(runs.task, runs.k, runs.data_seed)])
    runs = runs.assign(ratio=lowest / runs.constant.astype(float))
    return runs.assign(fits=[floors.fits([lo], c) for lo, c in zip(lowest, runs.constant)]), epochs


def constants(runs: pd.DataFrame) -> dict:
    """Each (task, K, seed)'s constant-predictor training loss, rebuilt from the GLUE files where
    they are here and kept in constant-loss.csv, which is read where they are not."""
    cached = {}
    if CONSTANTS.exists():
        table = pd.read_csv(CONSTANTS)
        cached = {(r.task, int(r.k), int(r.data_seed)): r.constant for r in table.itertuples()}
    out = {}
    for task, k, seed in runs[["task", "k", "data_seed"]].drop_duplicates().itertuples(index=False):
        rebuilt = floors.run_constant_loss(task, int(k), int(seed), 1000, GLUE)
        out[(task, int(k), int(seed))] = rebuilt if rebuilt is not None else cached.get((task, int(k), int(seed)))
    return out


def keep_constants(runs: pd.DataFrame) -> None:
    table = runs[["task", "k", "data_seed", "constant"]].drop_duplicates().dropna()
    table.sort_values(["task", "k", "data_seed"]).to_csv(CONSTANTS, index=False)


def md(frame: pd.DataFrame, none: str = "_no runs yet_", **options) -> str:
    return frame.to_markdown(**{"floatfmt": ".1f", **options}) if not frame.empty else none


def scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (K, task) and method, floor marks, and how many runs fit."""
    rows = {}
    for (k, task, method), g in runs.groupby(["k", "task", "method"]):
        at = int(g.at_floor.fillna(False).astype(bool).sum())
        std = f" ± {g.score.std():.1f}" if len(g) > 1 else ""
        rows.setdefault((k, task), {})[method] = f"{g.score.mean():.1f}{std}{floors.mark(at, len(g))} (n={len(g)})"
    table = pd.DataFrame(rows).reindex([m for m in METHODS if m in set(runs.method)])
    table.columns = [f"{task} K={k}" for k, task in table.columns]
    return table.fillna("–")  # a method with no finished run in that cell yet


def fit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method and cell: runs whose lowest training loss is below 0.9× the constant predictor's."""
    out = runs.groupby(["method", "k", "task"]).fits.apply(lambda s: f"{int(s.eq(True).sum())}/{len(s)}")
    out = out.unstack(["k", "task"]).sort_index(axis=1)  # K by K, as the scores table
    out.columns = [f"{task} K={k}" for k, task in out.columns]
    return out.reindex([m for m in METHODS if m in out.index]).fillna("–")


def pilot(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed 111 at K=100: each method's test score, lowest training loss ÷ the constant's, and fit."""
    p = runs[(runs.data_seed == 111) & (runs.k == 100)]
    out = p.set_index(["task", "method"])[["score", "ratio", "fits", "best_epoch", "lr"]]
    out = out.assign(
        score=out.score.map("{:.1f}".format), ratio=out.ratio.map("{:.2f}".format), lr=out.lr.map("{:g}".format)
    )
    order = {m: i for i, m in enumerate(METHODS)}
    return out.sort_index(key=lambda i: i.map(order) if i.name == "method" else i)


def interval(diffs: np.ndarray) -> tuple[float, float] | None:
    if len(diffs) < 3 or np.ptp(diffs) == 0:
        return None
    ci = bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=9999, random_state=0).confidence_interval
    return float(ci.low), float(ci.high)


def sign_flip_p(diffs: np.ndarray) -> float | None:
    """The exact two-sided p of a sign-flip test on the paired differences (every one of the 2^n
    sign patterns): with n seeds it cannot fall below 2/2^n (0.0625 at five), which says how much
    n seeds can resolve whatever the bootstrap interval shows."""
    if len(diffs) < 3 or np.ptp(diffs) == 0:
        return None
    # rounded: a difference of two scores carries float error (84.3 - 85.1), and sign patterns whose
    # means tie exactly must tie here too, or the p counts fewer patterns than it should
    diffs = np.round(diffs, 6)
    return float(permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue)


def paired(runs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per read cell: AP and APL minus each single method, minus the per-seed upper bound (the best
    single method on that seed), and AP minus NoGate; mean over seeds with its bootstrap 95% CI."""
    rows = []
    for (k, task), cell in cells.iterrows():
        wide = runs[(runs.k == k) & (runs.task == task)].pivot_table("score", "data_seed", "method")
        singles = [m for m in SINGLE if m in wide]
        wide["upper bound"] = wide[singles].max(axis=1, skipna=False) if singles else np.nan
        pairs = [(u, s) for u in UNIPELT for s in [*SINGLE, "upper bound"]] + [(UNIPELT[0], NOGATE)]
        for a, b in pairs:
            if a not in wide or b not in wide:
                continue
            d = (wide[a] - wide[b]).dropna().to_numpy()
            if len(d) == 0:
                continue
            ci, p = interval(d), sign_flip_p(d)
            resolved = "yes" if ci and (ci[0] > 0 or ci[1] < 0) else "no"
            rows.append(
                {
                    "cell": f"{task} K={k}",
                    "read": "yes" if cell.read else f"no: {cell.why}",
                    "difference": f"{a} − {b}",
                    "pairs": len(d),
                    "mean": d.mean(),
                    "95% CI": f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "too few pairs",
                    "resolved": resolved if ci else "no",
                    "seeds > 0": f"{(d > 0).sum()}/{len(d)}",
                    "sign-flip p": p if p is not None else np.nan,
                }
            )
    return pd.DataFrame(rows)


def coverage(runs: pd.DataFrame) -> pd.DataFrame:
    table = runs.groupby(["task", "k", "method"]).size().unstack("method", fill_value=0)
    return table.reindex(columns=[m for m in METHODS if m in set(runs.method)], fill_value=0)


def _agree(row: pd.Series) -> str:
    """How many seeds share the sign of the mean difference, as "4/5"."""
    above, n = (int(x) for x in row["seeds > 0"].split("/"))
    return f"{above if row['mean'] > 0 else n - above}/{n}"


def summary(runs: pd.DataFrame, cells: pd.DataFrame, diffs: pd.DataFrame) -> str:
    if runs.empty:
        return "_No run has finished yet._"
    fits = runs.fits.eq(True).sum()
    above = (~runs.at_floor.fillna(True).astype(bool)).sum()
    read = [f"{t} K={k}" for (k, t), c in cells.iterrows() if c.read]
    resolved = diffs[diffs.resolved == "yes"] if not diffs.empty else diffs
    said = (
        "; ".join(
            f"{r.difference} on {r.cell}: {r['mean']:+.1f} {r['95% CI']} ({_agree(r)})" for _, r in resolved.iterrows()
        )
        if not resolved.empty
        else "none yet: every interval holds zero or has too few pairs"
    )
    commits = ", ".join(sorted({v.get("unipelt_commit", "?") for v in runs.versions}))
    return (
        f"{len(runs)} runs have finished (commit {commits}). {fits} of them fit their training rows and "
        f"{above} score above their task's floor. Cells read in comparisons: {', '.join(read) or 'none yet'}. "
        f"Paired differences whose bootstrap 95% interval excludes zero (seeds agreeing in sign): {said}. "
        f"With five seeds an exact sign-flip test cannot go below p = 0.0625: these are leads to confirm, "
        f"not findings."
    )


def headline(runs: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """The root README's paragraph: where the study stands, and the paper's question (does UniPELT
    match or beat the best single method of each seed?) in each read cell, with the seeds' say."""
    if runs.empty:
        return "_No run has finished yet._"
    done = ", ".join(f"{t} K={k}: {len(g)}" for (k, t), g in runs.groupby(["k", "task"]))
    fits, above = int(runs.fits.eq(True).sum()), int((~runs.at_floor.fillna(True).astype(bool)).sum())
    out = f"{len(runs)} runs have finished ({done}): {fits} fit their training rows, {above} score above their floor."
    bound = diffs[diffs.difference.str.endswith("upper bound") & diffs.read.eq("yes")] if not diffs.empty else diffs
    said = [
        f"{r.difference.split(' − ')[0]} on {r.cell} {r['mean']:+.1f} {r['95% CI']} "
        f"({_agree(r)} seeds {'above' if r['mean'] > 0 else 'below'})"
        for _, r in bound.iterrows()
    ]
    if said:
        out += (
            " Against each seed's best single method (the paper's upper bound), test ×100, mean difference "
            "with its bootstrap 95% interval: " + "; ".join(said) + ". Five seeds cannot take an exact "
            "sign-flip test below p = 0.0625, so these are leads, not findings; every pair and its "
            "interval is in the study's README."
        )
    return out


def blocks() -> dict[str, str]:
    runs, _ = load()
    cells = floors.cells(runs, ["k", "task"]) if not runs.empty else pd.DataFrame(columns=["read", "why"])
    diffs = paired(runs, cells) if not runs.empty else pd.DataFrame()
    return {
        "summary": summary(runs, cells, diffs),
        "headline": headline(runs, diffs),
        "coverage": md(coverage(runs)),
        "scores": md(scores(runs)),
        "fit": md(fit_table(runs)),
        "pilot": md(pilot(runs), disable_numparse=True),
        "paired": md(diffs, "_no pairs yet_", floatfmt=(".1f",) * 9 + (".3f",)),
    }


def render(text: str, generated: dict[str, str], block: re.Pattern = BLOCK) -> str:
    return block.sub(
        lambda m: m.group(1) + generated.get(m.group("name"), m.group("body").rstrip("\n")) + "\n" + m.group(4), text
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args()
    generated = blocks()
    pages = {README: render(README.read_text("utf-8"), generated)}
    pages[ROOT] = render(ROOT.read_text("utf-8"), generated, ROOT_BLOCK)
    stale = [page for page, text in pages.items() if page.read_text("utf-8") != text]
    if args.check:
        for page in stale:
            print(f"{page} is stale: run python {Path(__file__).relative_to(HERE.parents[2])}", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        page.write_text(pages[page], "utf-8")
    keep_constants(load()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
