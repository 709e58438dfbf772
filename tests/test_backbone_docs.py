"""The backbone-head study's README states only what its store holds (docs/results/backbone)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "docs" / "results" / "backbone" / "analyze.py"


def test_the_generated_blocks_match_the_committed_store():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
