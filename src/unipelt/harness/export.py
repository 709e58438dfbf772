"""Each finished run as one JSON file in the layout of peft's method comparison
(``method_comparison/MetaMathQA``: ``run_info`` / ``train_info`` / ``meta_info``), so that a
unipelt study can be read with the tools written for theirs.

What the store does not record is ``null``, not a guess: accelerator memory, the checkpoint's
file size, the pure training time and the model's hub sha. ``total_time`` is the run's wall time
(training, the per-epoch dev evaluation and the test), ``metrics`` one entry per epoch plus the
test score, and ``peft_config`` unipelt's own ``PeltConfig`` (its methods are not peft's)."""

from __future__ import annotations

import collections
import json
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

from .errors import HarnessError
from .store import Store

# unipelt's settings that peft's layout keeps under run_info.train_config
_TRAIN_CONFIG = ("model", "k", "data_seed", "model_seed", "lr", "epochs", "patience", "dev_size", "batch_size")


def experiment_name(row: pd.Series) -> str:
    """``task/method/K-seed``: peft names an experiment by its folder (``method/setting``)."""
    return f"{row.task}/{row.method}/k{row.k}-seed{row.data_seed}"


def _seconds(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _number(value, kind=float) -> int | float | None:
    """A store number as JSON has it: NULL and NaN are null, numpy scalars plain Python numbers."""
    return None if value is None or pd.isna(value) else kind(value)


def _metrics(row: pd.Series, epochs: pd.DataFrame) -> list[dict]:
    per_epoch = [
        {
            "epoch": _number(e.epoch, int),
            "train_loss": _number(e.train_loss),
            f"dev_{row.metric}": _number(e.dev_metric),
        }
        for e in epochs.itertuples()
    ]
    return per_epoch + [{"best_epoch": _number(row.best_epoch, int), f"test_{row.metric}": _number(row.test_metric)}]


def run_json(row: pd.Series, epochs: pd.DataFrame) -> dict:
    """One run of ``Store.runs()`` with its rows of ``Store.epochs()``."""
    spec, params, versions = row.spec, row.params, row.versions
    return {
        "run_info": {
            "created_at": row.started_at,
            "total_time": _seconds(row.started_at, row.finished_at),
            "experiment_name": experiment_name(row),
            "peft_branch": None,
            "train_config": {"task": row.task, **{k: spec.get(k) for k in _TRAIN_CONFIG}},
            "peft_config": spec.get("config"),
            "error_msg": row.reason,
        },
        "train_info": {
            "accelerator_memory_reserved_avg": None,
            "accelerator_memory_max": None,
            "accelerator_memory_reserved_99th": None,
            "train_time": None,
            "file_size": None,
            "num_trainable_params": params.get("trainable", params.get("total")),
            "num_total_params": None,
            "status": "success" if row.status == "finished" else "failed",
            "metrics": _metrics(row, epochs),
        },
        "meta_info": {
            "model_info": {"sha": spec.get("model_id") or None, "created_at": None},
            "dataset_info": {row.task: {"sha": None, "created_at": None, "test_source": row.test_source}},
            "package_info": {f"{name}-version": v for name, v in versions.items() if name != "unipelt_commit"}
            | {"unipelt-commit-hash": versions.get("unipelt_commit")},
            "system_info": {"host": row.host},
            "pytorch_info": None,
        },
    }


def write_runs(store: Store, out_dir: str | Path) -> list[Path]:
    """One ``<task>--<method>--k<K>-seed<seed>.json`` per finished run in ``out_dir``; runs that
    share that name (another lr, model or model seed) each add their run key's first 12 characters.
    Run JSON an earlier export wrote there under names since changed is removed: the folder is read
    as the store's runs, one file each. Other JSON files (a user's) are left as they are."""
    out = Path(out_dir)
    runs, epochs = store.runs("finished"), store.epochs()
    names = [re.sub(r"[^A-Za-z0-9._=-]+", "_", experiment_name(row).replace("/", "--")) for _, row in runs.iterrows()]
    shared = {n for n, count in collections.Counter(names).items() if count > 1}
    documents = {  # every document before any file: a row that cannot be read writes nothing
        out / (f"{name}--{row.run_key[:12]}.json" if name in shared else f"{name}.json"): json.dumps(
            run_json(row, epochs[epochs.run_key == row.run_key]), indent=2
        )
        for name, (_, row) in zip(names, runs.iterrows())
    }
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, text in documents.items():
            path.write_text(text + "\n")
            written.append(path)
        for stale in set(out.glob("*.json")) - set(written):
            if _exported(stale):
                stale.unlink()
    except OSError as e:
        raise HarnessError(f"cannot write the runs' JSON to {out}: {e}") from None
    return written


def _exported(path: Path) -> bool:
    """Whether ``path`` holds a run this export wrote: ``run_json``'s layout, whose package info
    always names the unipelt commit."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    meta = data.get("meta_info") if isinstance(data, dict) else None
    packages = meta.get("package_info") if isinstance(meta, dict) else None
    return isinstance(packages, dict) and "unipelt-commit-hash" in packages
