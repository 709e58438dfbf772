"""What one run produced: the row the store keeps for it."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .spec import RunSpec


@dataclass(frozen=True, kw_only=True)
class EpochLog:
    epoch: int
    train_loss: float
    dev_metric: float


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    spec: RunSpec
    status: Literal["finished", "failed"]
    reason: str = ""  # why a run failed
    metric: str = ""
    epochs: tuple[EpochLog, ...] = ()
    best_epoch: int | None = None
    dev_metric: float | None = None
    test_metric: float | None = None
    test_source: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # rows in train/dev/test
    params: dict[str, int] = field(default_factory=dict)  # unipelt.count_parameters
    train_s_per_step: float | None = None
    infer_ex_per_s: float | None = None
    gates: dict[int, dict[str, float]] = field(default_factory=dict)  # layer -> submodule -> mean
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    host: str = field(default_factory=platform.node)
    # A finished run whose --save failed stays finished; the store does not keep this, the CLI says it.
    save_error: str = field(default="", compare=False)


def versions() -> dict[str, str]:
    """Library and dependency versions, recorded with every run."""
    import torch
    import transformers

    from .. import __version__

    found = {
        "unipelt": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    commit = _git_commit()
    if commit:
        found["unipelt_commit"] = commit
    return found


def _git_commit() -> str:
    """The commit of a source checkout, '+dirty' when it has local changes; '' for an installed wheel."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        return commit and commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""
