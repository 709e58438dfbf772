"""The study's pages state only what analyze.py computes from the committed stores."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BLOCK = re.compile(r"<!-- analyze: [\w-]+ -->.*?<!-- /analyze -->", re.S)


def test_generated_blocks_are_current():
    done = subprocess.run([sys.executable, str(RESULTS / "analyze.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_score_outside_the_blocks():
    """A score (a number with a decimal point) in the study's prose would be hand-typed."""
    text = BLOCK.sub("", (RESULTS / "README.md").read_text())
    prose = re.sub(r"```.*?```|`[^`]*`|§[\d.]+|\d+e-\d+", "", text, flags=re.S)  # code, sections, rates
    assert re.findall(r"\d+\.\d+", prose) == []


def test_the_readme_paragraph_is_generated():
    assert BLOCK.search((ROOT / "README.md").read_text()), "README.md lost its <!-- analyze: study --> block"
