"""`unipelt --help` and a mistyped command answer without importing torch or transformers
(issue 26: they took 7.7 s, and tens of seconds on a loaded machine, to print help)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# run in a fresh interpreter: this test process has long imported torch
PROBE = """
import json, sys
from unipelt import cli
status = cli.main(json.loads(sys.argv[1]))
heavy = sorted(m for m in ("torch", "transformers", "fastapi") if m in sys.modules)
print(json.dumps({"status": status, "heavy": heavy}))
"""


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--help"], 0),
        (["-v", "--help"], 0),
        (["report", "--help"], 0),
        (["serve", "--help"], 0),
        (["trian"], 2),  # a mistyped command
        ([], 2),  # no command
    ],
)
def test_help_and_argument_errors_do_not_import_torch(argv, status):
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"status": status, "heavy": []}


def test_python_m_unipelt_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "unipelt", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(c in done.stdout for c in ("train", "sweep", "report", "demo", "serve"))


def test_a_command_still_gets_every_flag(capsys):
    """Only the chosen command's flags are built: they must all be there (RunSpec's included)."""
    from unipelt import cli

    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--label-names" in out and "--data-seed" in out and "--glue-dir" in out
    assert "default runs/unipelt.sqlite" in out  # --store shows its default


@pytest.mark.parametrize("command, argv", [("_serve", ["serve", "--task", "a=b"]), ("_report", ["report"])])
def test_an_interrupt_of_a_command_without_runs_does_not_promise_a_resume(monkeypatch, capsys, command, argv):
    import unipelt.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(unipelt.cli, command, interrupted)
    assert unipelt.cli.main(argv) == 130
    assert capsys.readouterr().err == "unipelt: interrupted\n"


def test_an_interrupted_sweep_says_how_to_resume(monkeypatch, capsys):
    import unipelt.cli

    def interrupted(args, grid=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(unipelt.cli, "_sweep", interrupted)
    assert unipelt.cli.main(["demo"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
