"""Report figures with matplotlib's Agg backend (no display needed): score vs K per method, and
mean gate values per layer × submodule × task (UniPELT §5.3's gate analysis)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines have no display

import functools  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import METHOD_ORDER, k_sort_key, ordered  # noqa: E402
from .tasks import TASK_ORDER  # noqa: E402


def plain_text(draw):
    """Run ``draw`` with every text drawn as given: method, config and model names are the
    user's, and mathtext would parse a '$...$' in one (and fail on a malformed one)."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return drawn


def metric_vs_k(runs: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per task: test score (mean ± std over seeds) against K, one line per report row
    (a method, split only by what varies inside a K block), the legend right of the panels."""
    tasks = ordered(runs.task, TASK_ORDER)
    ks = sorted(runs.k.unique(), key=k_sort_key)
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    lines = {}  # one legend entry per row, whichever panels it is in
    for ax, task in zip(axes.flat, tasks):
        stats = runs[runs.task == task].groupby(["row", "k"]).test_metric.agg(["mean", "std"])
        for method in ordered(stats.index.get_level_values("row"), METHOD_ORDER):
            line = stats.loc[method].reindex([k for k in ks if k in stats.loc[method].index])
            lines[method] = ax.errorbar(
                [ks.index(k) for k in line.index],
                100 * line["mean"],
                yerr=100 * line["std"].fillna(0),
                marker="o",
                capsize=3,
                color=f"C{ordered(runs.row, METHOD_ORDER).index(method) % 10}",
                label=method,
            )
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_title(task.upper())
        ax.set_xlabel("K (training examples)")
        ax.set_ylabel("test score ×100")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(lines.values(), lines.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig


def gate_heatmap(gates: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per gated method: rows = layers, columns = task × submodule, cells = mean gate
    value over that method's runs (all K and seeds)."""
    methods = ordered(gates.method, METHOD_ORDER)
    fig, axes = plt.subplots(
        len(methods),
        1,
        squeeze=False,
        figsize=(
            max(6, 0.55 * gates.groupby(["task", "submodule"]).ngroups + 2),
            2.5 + 0.35 * gates.layer.nunique() * len(methods),
        ),
    )
    for ax, method in zip(axes.flat, methods):
        sub = gates[gates.method == method]
        grid = sub.pivot_table(index="layer", columns=["task", "submodule"], values="value", aggfunc="mean")
        grid = grid[[c for t in ordered(sub.task, TASK_ORDER) for c in grid.columns if c[0] == t]]
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{t}\n{s}" for t, s in grid.columns], fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index])
        ax.set_ylabel("layer")
        ax.set_title(method)
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
