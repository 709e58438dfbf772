"""The generate objective: prompt/label-word encoding, a tiny Llama end to end, and its errors."""

from __future__ import annotations

import pandas as pd
import pytest

from unipelt import cli, get_preset
from unipelt.harness.errors import HarnessError
from unipelt.harness.generative import IGNORE, Generate
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import Store
from unipelt.harness.tasks import get_task


@pytest.fixture
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def _check(prompts: Generate, row: dict, prompt_text: str, word: str):
    f = prompts.encode(pd.DataFrame([row]), train=True)[0]
    tok = prompts.tokenizer
    target = tok.encode(" " + word, add_special_tokens=False) + [tok.eos_token_id]
    n = len(f["input_ids"]) - len(target)
    assert f["input_ids"][0] == tok.bos_token_id and f["input_ids"][n:] == target
    assert f["labels"] == [IGNORE] * n + target and f["attention_mask"] == [1] * len(f["input_ids"])
    assert tok.decode(f["input_ids"][1:n]) == tok.decode(tok.encode(prompt_text, add_special_tokens=False))
    evaluated = prompts.encode(pd.DataFrame([row]), train=False)[0]
    assert evaluated["input_ids"] == f["input_ids"][:n] and evaluated["labels"] == row["label"]


def test_sst2_and_rte_prompts_mask_all_but_the_label_word(tokenizer):
    sst2 = Generate(get_task("sst2"), tokenizer, 128)
    _check(sst2, {"a": "a gorgeous film", "b": None, "label": 1}, "Sentence: a gorgeous film\nSentiment:", "positive")
    rte = Generate(get_task("rte"), tokenizer, 128)
    _check(
        rte, {"a": "Cats purr.", "b": "Cats make sounds.", "label": 1}, "Cats purr.\nCats make sounds.\nAnswer:", "no"
    )
    assert rte.label_of(" Yes, surely") == 0 and rte.label_of(" no.") == 1 and rte.label_of(" maybe") is None
    assert rte.max_new_tokens == 2


def test_long_inputs_keep_the_cue_within_max_length(tokenizer):
    prompts = Generate(get_task("sst2"), tokenizer, 16)
    f = prompts.encode(pd.DataFrame([{"a": "word " * 50, "b": None, "label": 0}]), train=True)[0]
    assert len(f["input_ids"]) <= 16 and "sentiment :" in tokenizer.decode(f["input_ids"])


def test_a_long_first_sentence_leaves_the_second_in_the_prompt(tokenizer):
    """The pair was one string cut from its end: a long premise pushed the hypothesis out (25 of
    RTE's 277 test rows at 128 tokens), as classify's longest_first truncation never does."""
    prompts = Generate(get_task("rte"), tokenizer, 24)
    f = prompts.encode(pd.DataFrame([{"a": "premise " * 60, "b": "the hypothesis", "label": 0}]), train=False)[0]
    text = tokenizer.decode(f["input_ids"])
    assert len(f["input_ids"]) <= 24 and "the hypothesis" in text and "premise" in text
    short = {"a": "Cats purr.", "b": "Cats make sounds.", "label": 1}  # what fits is as it was: one string
    _check(prompts, short, "Cats purr.\nCats make sounds.\nAnswer:", "no")
    with pytest.raises(HarnessError, match="leaves the text no room"):
        Generate(get_task("rte"), tokenizer, 5)


def test_classify_keys_are_unchanged():
    spec = dict(task="rte", method="lora", config=get_preset("lora"), model="m", k=16, lr=1e-3)
    assert RunSpec(**spec).key == "11225fdc7d62c6f6249d"  # the key from before objectives existed
    assert RunSpec(**spec, objective="generate", model_id="abc").key == "384ed31fcbf614691e5f"  # as before bf16
    assert RunSpec(**spec, objective="generate").key != RunSpec(**spec).key


def test_generate_end_to_end(capsys, glue_dir, tiny_llama, tmp_path):
    store = tmp_path / "s.sqlite"
    argv = [
        "-q",
        "train",
        "--objective",
        "generate",
        "--task",
        "sst2",
        "--preset",
        "lora",
        "--k",
        "16",
        "--model",
        tiny_llama,
        "--glue-dir",
        str(glue_dir),
        "--dev-size",
        "8",
        "--epochs",
        "2",
        "--lr",
        "1e-2",
        "--store",
        str(store),
    ]
    assert cli.main(argv) == 0
    assert "sst2 lora generate K=16 seed=111: test accuracy" in capsys.readouterr().out
    with Store(store) as s:
        run = s.runs().iloc[0]
    assert run.status == "finished" and 0 <= run.test_metric <= 1 and run.spec["objective"] == "generate"
    assert run.sizes == {"train": 16, "dev": 8, "test": 30}
    assert cli.main(argv) == 0 and "already finished" in capsys.readouterr().out
    sweep = ["-q", "sweep", "--objective", "generate", "--tasks", "sst2", "--presets", "lora", "--k", "16", *argv[10:]]
    assert cli.main(sweep) == 0 and "1 were already finished" in capsys.readouterr().out  # same key as train


@pytest.mark.parametrize(
    "task, model, message",
    [
        ("stsb", "tiny_llama", "--objective generate needs label words, and stsb is a regression task"),
        ("rte", "tiny_model", "--objective generate needs a decoder-only causal LM"),
    ],
)
def test_generate_errors(capsys, request, glue_dir, tmp_path, task, model, message):
    argv = [
        "train",
        "--objective",
        "generate",
        "--task",
        task,
        "--preset",
        "lora",
        "--k",
        "16",
        "--model",
        request.getfixturevalue(model),
        "--glue-dir",
        str(glue_dir),
        "--store",
        str(tmp_path / "s.sqlite"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unipelt: error: ") and "\n" not in err and message in err, err


def test_unmatched_answers_count_as_wrong():
    from unipelt.harness.generative import UNMATCHED
    from unipelt.harness.metrics import score_predictions

    gold, pred = [0, 1, 1, 0], [UNMATCHED, 1, UNMATCHED, 0]
    assert score_predictions("accuracy", pred, gold) == 0.5
    assert score_predictions("f1", pred, gold) == pytest.approx(0.5)  # a missed positive and a false one
    assert score_predictions("matthews", [UNMATCHED] * 4, gold) == -1.0  # every answer wrong
    # right on every 0, no label word on the 1s: no information, where a third class read 0.50 on CoLA
    gold = [0] * 322 + [1] * 721
    assert score_predictions("matthews", [0] * 322 + [UNMATCHED] * 721, gold) == 0.0


@pytest.mark.parametrize(
    "model, flags, message",
    [
        ("tiny_llama", ["--objective", "generate", "--preset", "head-only"], "the config trains no parameter"),
        ("tiny_llama", ["--objective", "generate", "--preset", "lora", "--head", "mean"], "head 'mean'"),
        ("tiny_llama", ["--preset", "lora", "--head", "pooler"], "has no pooler"),
        ("tiny_model", ["--config", "HUGE", "--lr", "1e-3"], "added parameters, more than"),
        ("tiny_model", ["--config", "HUGE_LORA", "--lr", "1e-3"], "added parameters, more than"),
    ],
    ids=["nothing-trained", "generate-with-a-head", "no-pooler", "huge-prefix", "huge-lora"],
)
def test_a_model_or_config_that_cannot_train_is_refused_before_the_store_opens(
    capsys, request, glue_dir, tmp_path, model, flags, message
):
    """apply() on the model's skeleton on the meta device (runner.dry_run): these used to end as
    failed runs, recorded in the store after loading the model, or after allocating gigabytes."""
    huge = tmp_path / "huge.json"
    huge.write_text('{"methods": [{"method": "prefix", "length": 100000000}]}')
    huge_lora = tmp_path / "huge_lora.json"  # its modules are made at apply(): on the meta device too
    huge_lora.write_text('{"methods": [{"method": "lora", "r": 1099511627776}]}')
    flags = [{"HUGE": str(huge), "HUGE_LORA": str(huge_lora)}.get(f, f) for f in flags]
    task = "sst2" if "generate" in flags else "rte"
    store = tmp_path / "s.sqlite"
    argv = ["train", "--task", task, "--k", "16", "--dev-size", "20", "--model", request.getfixturevalue(model)]
    capsys.readouterr()  # the fixture's own output (saving the model)
    assert cli.main([*argv, *flags, "--glue-dir", str(glue_dir), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unipelt: error: ") and "\n" not in err and message in err, err
    assert not store.exists()
