"""The numbers docs/results/README.md discusses, computed from the committed store only.

    python docs/results/analyze.py [--store docs/results/unipelt.sqlite] > docs/results/analysis.md

`unipelt report` gives the paper's tables; this adds what the analysis asks beyond them: ranks,
spread across seeds, gates per task and layer, and the gate-masking comparison.
"""

from __future__ import annotations

import argparse

import pandas as pd

from unipelt.harness.store import Store

SINGLE = ["bitfit", "adapter", "prefix", "lora"]  # the single PELT methods UniPELT combines or is set beside
UNIPELT = ["unipelt-ap", "unipelt-apl"]
GRID = ["full", *SINGLE, *UNIPELT]
MASKING = ("unipelt-apl", "unipelt-apl-unmasked")


def table(frame: pd.DataFrame, digits: int = 1) -> str:
    return frame.round(digits).to_markdown()


def per_task(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (×100) over data seeds, and how many seeds, per (K, task, method)."""
    score = runs.assign(score=100 * runs.test_metric)
    return score.groupby(["k", "task", "method"]).score.agg(["mean", "std", "count"])


def ranks(stats: pd.DataFrame) -> str:
    """Each method's rank per (K, task) by mean test score (1 = best), and the worst method."""
    out = []
    for (k, task), block in stats.groupby(level=[0, 1]):
        means = block["mean"].droplevel([0, 1])
        order = means.rank(ascending=False, method="min").astype(int)
        out.append({"K": k, "task": task, **order.to_dict(), "worst": means.idxmin(), "best": means.idxmax()})
    return pd.DataFrame(out).set_index(["K", "task"]).to_markdown()


def averages(stats: pd.DataFrame) -> str:
    """Average over tasks of the mean and of the std, over the tasks every method of the grid ran."""
    rows = []
    for k, block in stats.groupby(level=0):
        wide = block.droplevel(0).unstack("method")  # task × (statistic, method)
        tasks = wide["mean"].reindex(columns=GRID).dropna().index
        if tasks.empty:
            continue
        at = wide.loc[tasks]
        for method in GRID:
            rows.append({"K": k, "method": method, "tasks": ",".join(tasks), "avg score": at["mean", method].mean(),
                         "avg std over seeds": at["std", method].mean(), "seeds": int(at["count", method].min())})
    frame = pd.DataFrame(rows).set_index(["K", "method"])
    return table(frame.sort_values(["K", "avg score"], ascending=[True, False]))


def upper_bound(stats: pd.DataFrame) -> str:
    """The paper's Table 2 question: UniPELT vs the best single method per task (an oracle)."""
    rows = []
    for (k, task), block in stats.groupby(level=[0, 1]):
        means = block["mean"].droplevel([0, 1])
        singles = means.reindex(SINGLE).dropna()
        if singles.empty:
            continue
        row = {"K": k, "task": task, "best single": singles.idxmax(), "its score": singles.max()}
        for m in UNIPELT:
            if m in means:
                row[m] = means[m]
                row[f"{m} − best single"] = means[m] - singles.max()
        rows.append(row)
    return table(pd.DataFrame(rows).set_index(["K", "task"]))


def gates(store: Store) -> str:
    """Mean gate value per submodule: per task (over layers and seeds), then per layer."""
    g = store.gates()
    if g.empty:
        return "_no gate values in the store_"
    g = g[g.method.isin(UNIPELT)]
    by_task = g.groupby(["method", "k", "task", "submodule"]).value.mean().unstack("submodule")
    by_layer = g.groupby(["method", "k", "layer", "submodule"]).value.mean().unstack("submodule")
    return (f"Per task (mean over layers and seeds):\n\n{table(by_task, 3)}\n\n"
            f"Per layer (mean over tasks and seeds):\n\n{table(by_layer, 3)}")


def masking(runs: pd.DataFrame) -> str:
    """Masked (default) vs unmasked (official) gate mean, seed by seed on the tasks both ran."""
    both = runs[runs.method.isin(MASKING)].pivot_table(index=["k", "task", "data_seed"], columns="method",
                                                        values="test_metric") * 100
    both = both.dropna()
    if both.empty:
        return "_the masking comparison has no runs yet_"
    both["masked − unmasked"] = both[MASKING[0]] - both[MASKING[1]]
    summary = both.groupby(level=[0, 1]).agg(["mean", "std"])
    return f"{table(both)}\n\nPer task:\n\n{table(summary)}"


def epochs(store: Store, runs: pd.DataFrame) -> str:
    """How far runs got: the best epoch against the cap, per method (did the epoch cut bind?)."""
    capped = runs.assign(cap=runs.spec.map(lambda s: s["epochs"]), n=runs.run_key.map(
        store.epochs().groupby("run_key").epoch.max()))
    capped["best at last epoch"] = capped.best_epoch == capped.n
    capped["ran to the cap"] = capped.n == capped.cap
    frame = capped.groupby(["k", "method"])[["best_epoch", "best at last epoch", "ran to the cap"]].mean()
    return table(frame, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="docs/results/unipelt.sqlite")
    args = parser.parse_args()
    with Store(args.store, create=False) as store:
        runs = store.runs("finished")
        grid = runs[runs.method.isin(GRID)]
        stats = per_task(grid)
        print("# Study numbers (generated by docs/results/analyze.py from the store)\n")
        print(f"{len(runs)} finished runs; commits: {sorted({v.get('unipelt_commit', '?') for v in runs.versions})}\n")
        print("## Test score ×100 per task: mean, std, seeds\n")
        for column in ("mean", "std"):
            print(f"{column}:\n\n{table(stats[column].unstack(['k', 'task']).reindex(GRID).dropna(how='all'))}\n")
        print("## Average over tasks, and spread over seeds\n")
        print(averages(stats), "\n")
        print("## Ranks per task (1 = best)\n")
        print(ranks(stats), "\n")
        print("## UniPELT vs the best single method per task\n")
        print(upper_bound(stats), "\n")
        print("## Gates\n")
        print(gates(store), "\n")
        print("## Gate masking\n")
        print(masking(runs), "\n")
        print("## Epochs: did the cut bind?\n")
        print(epochs(store, grid))


if __name__ == "__main__":
    main()
