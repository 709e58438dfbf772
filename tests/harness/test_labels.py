"""Class names travel with a checkpoint (issue 26): `unipelt train --save` keeps the task's names
(nyu-mll/glue's), or those of --label-names, and `unipelt.load` and `MultiTask` answer with them."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import unipelt
from unipelt import cli
from unipelt.harness.tasks import TASKS

from .conftest import cli_error, tiny_run_flags


def _train_sst2(tmp_path, tiny_model, glue_dir, *flags) -> tuple[int, str]:
    argv = ["-q", "train", "--task", "sst2", "--preset", "lora", "--k", "16", "--save", str(tmp_path / "ckpt")]
    argv += [*tiny_run_flags(tiny_model, glue_dir, tmp_path / "s.sqlite", epochs=1), *flags]
    return cli.main(argv), str(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "task, names",
    [
        ("sst2", ("negative", "positive")),
        ("cola", ("unacceptable", "acceptable")),
        ("mrpc", ("not_equivalent", "equivalent")),
        ("qqp", ("not_duplicate", "duplicate")),
        ("mnli", ("entailment", "neutral", "contradiction")),
        ("qnli", ("entailment", "not_entailment")),
        ("rte", ("entailment", "not_entailment")),
        ("stsb", ()),
    ],
)
def test_every_glue_task_names_its_classes(task, names):
    assert TASKS[task].label_names == names


def test_train_save_load_keeps_the_names(capsys, tmp_path, tiny_model, glue_dir):
    status, ckpt = _train_sst2(tmp_path, tiny_model, glue_dir)
    assert status == 0
    assert f"saved: {ckpt}" in capsys.readouterr().out  # train says where it saved
    task = json.loads((tmp_path / "ckpt" / "unipelt.json").read_text())["task"]
    assert task["id2label"] == {"0": "negative", "1": "positive"}
    assert task["pairs"] is False and task["max_length"] == 128  # what serving takes, cut where training cut
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    assert fresh.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # what load has to replace
    model = unipelt.load(fresh, ckpt)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    mt = unipelt.MultiTask(AutoModelForSequenceClassification.from_pretrained(tiny_model))
    mt.add("sst2", ckpt)
    [answer] = mt.predict(["a fine film"], ["sst2"], AutoTokenizer.from_pretrained(tiny_model))
    assert answer["label"] in ("negative", "positive") and set(answer["scores"]) == {"negative", "positive"}


def test_label_names_flag_names_them_for_other_data(tmp_path, tiny_model, glue_dir):
    status, ckpt = _train_sst2(tmp_path, tiny_model, glue_dir, "--label-names", "bad, good")
    assert status == 0
    model = unipelt.load(AutoModelForSequenceClassification.from_pretrained(tiny_model), ckpt)
    assert model.config.id2label == {0: "bad", 1: "good"}


@pytest.mark.parametrize(
    "task, names, save, message",
    [
        ("sst2", "bad", True, "sst2 needs 2 distinct non-empty names, in the order of its label values 0, 1"),
        ("sst2", "a,a", True, "needs 2 distinct non-empty names"),
        ("sst2", "a,", True, "needs 2 distinct non-empty names"),
        ("stsb", "low,high", True, "stsb is a regression task"),
        ("sst2", "bad,good", False, "give --save DIR too"),
    ],
)
def test_bad_label_names_are_refused(capsys, tmp_path, tiny_model, glue_dir, task, names, save, message):
    argv = ["train", "--task", task, "--preset", "lora", "--label-names", names]
    argv += [*tiny_run_flags(tiny_model, glue_dir, tmp_path / "s.sqlite")]
    argv += ["--save", str(tmp_path / "ckpt")] if save else []
    assert message in cli_error(capsys, argv)
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store was opened
