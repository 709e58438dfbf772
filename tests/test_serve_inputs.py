"""What the server and ``MultiTask.predict`` make of inputs that depend on the tokenizer: a row's
answer is its own whatever the padding side, an empty input is refused, a position table smaller
than its size says (RoBERTa) truncates, and a prompt that leaves no position is refused at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import build, randomize
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import unipelt
from unipelt import UniPeltError, encoding
from unipelt.serve import Engine, Row, TaskSpec
from unipelt.serve.engine import ServeError

LABELS = ("no", "yes")
LONG = " ".join(f"w{i % 40}" for i in range(30))


def tokenizer(specials: dict, template: str | None, **kw) -> PreTrainedTokenizerFast:
    vocab = {**specials, **{f"w{i}": len(specials) + i for i in range(40)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", **kw)


def decoder_tokenizer(bos: bool, padding_side: str) -> PreTrainedTokenizerFast:
    """conftest's ids (0 <s>, 1 <pad>, 2 </s>): Llama-like (bos, pads left) or GPT-2-like (no bos)."""
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<x>": 4}
    return tokenizer(specials, "<s> $A" if bos else None, bos_token="<s>", eos_token="</s>", padding_side=padding_side)


def served(tmp_path: Path, arch: str, tok, presets, config_kw=None) -> Engine:
    kw = dict(num_labels=2, id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)})
    kw.update(config_kw or {})
    build(arch, **kw).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    engine = Engine.from_directory(tmp_path / "base")
    for i, preset in enumerate(presets):
        model = unipelt.apply(build(arch, **kw), preset)
        randomize(model, std=0.1, seed=i + 1)
        unipelt.save(model, tmp_path / preset)
        engine.add(preset, TaskSpec(path=tmp_path / preset))
    return engine


def test_a_rows_answer_is_its_own_when_the_tokenizer_pads_left(tmp_path):
    """Llama's tokenizer pads left: a row's positions would move by its pads, and prefix keys (no
    position) score against them, so the answer would depend on the rows batched with it."""
    presets = ("prefix", "unipelt-apl", "prompt")
    engine = served(tmp_path, "llama", decoder_tokenizer(bos=True, padding_side="left"), presets)
    for preset in presets:
        alone = engine.run([Row(preset, "w1 w2 w3")])[0]
        batched = engine.run([Row(preset, "w1 w2 w3"), Row(preset, LONG)])[0]
        assert alone["scores"] == pytest.approx(batched["scores"], abs=1e-6), preset
        predicted = engine.mt.predict(["w1 w2 w3", LONG], preset, engine.tokenizer)[0]
        assert alone["scores"] == pytest.approx(predicted["scores"], abs=1e-6), preset


def test_an_input_with_no_tokens_is_refused_not_answered_from_padding(tmp_path):
    engine = served(tmp_path, "gpt2", decoder_tokenizer(bos=False, padding_side="right"), ("lora",))
    for text in ("", "  "):
        alone, batched = engine.run([Row("lora", text)])[0], engine.run([Row("lora", text), Row("lora", "w1 w2")])
        assert isinstance(alone, ServeError) and alone.status == 422 and "no tokens" in str(alone)
        assert isinstance(batched[0], ServeError) and isinstance(batched[1], dict)  # the other row is answered
        with pytest.raises(UniPeltError, match=r"inputs\[1\] has no tokens"):
            engine.mt.predict(["w1", text], "lora", engine.tokenizer)


def test_roberta_inputs_are_cut_to_the_positions_its_table_has(tmp_path):
    """RoBERTa's positions start after the padding index: 64 positions hold 62 tokens, and a
    tokenizer that records no limit must not let 63 through (an index error, a 500)."""
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    tok = tokenizer(specials, "<s> $A </s>", bos_token="<s>", eos_token="</s>")
    engine = served(tmp_path, "roberta", tok, ("lora",), {"max_position_embeddings": 64})
    assert engine.limit == 62 and engine.info["lora"].max_length == 62
    for words in (63, 200):
        text = " ".join(f"w{i % 40}" for i in range(words))
        answer = engine.run([Row("lora", text)])[0]
        assert isinstance(answer, dict) and answer["truncated"], answer
        assert engine.mt.predict([text], "lora", engine.tokenizer)[0]["label"] == answer["label"]


def test_a_prompt_that_leaves_no_position_is_refused_at_load(tmp_path):
    specials = {"[PAD]": 0, "<pad>": 1, "[CLS]": 2, "[SEP]": 3, "<unk>": 4}
    tok = tokenizer(specials, "[CLS] $A [SEP]", model_max_length=64)
    engine = served(tmp_path, "bert", tok, (), {"max_position_embeddings": 64})
    model = unipelt.apply(build("bert", num_labels=2, max_position_embeddings=64), unipelt.PromptConfig(length=70))
    unipelt.save(model, tmp_path / "long-prompt")
    with pytest.raises(ServeError, match="prompt of 70 tokens leaves no position") as refused:
        engine.add("p", TaskSpec(path=tmp_path / "long-prompt"))
    assert refused.value.status == 422 and engine.info == {} and engine.mt._tasks == {}


def test_the_library_leaves_a_prompt_its_positions_as_the_server_does(tmp_path):
    """BART adds its learned positions after the prompt joins the tokens: a prompt of 10 leaves 54
    of 64 positions to the input. predict() cut at 64 and indexed past the table."""
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    tok = tokenizer(specials, "<s> $A </s>", bos_token="<s>", eos_token="</s>", model_max_length=64)
    engine = served(tmp_path, "bart", tok, ("prompt",), {"max_position_embeddings": 64})
    assert engine.info["prompt"].max_length == 54
    text = " ".join(f"w{i % 40}" for i in range(80))
    [answer] = engine.run([Row("prompt", text)])
    [library] = engine.mt.predict([text], "prompt", engine.tokenizer)
    assert answer["truncated"] and answer["scores"] == pytest.approx(library["scores"], abs=1e-6)
    with pytest.raises(UniPeltError, match="leaves 54 positions"):
        engine.mt.predict([text], "prompt", engine.tokenizer, max_length=60)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("words", [40, 400, 4000])
def test_long_inputs_keep_the_tokens_training_keeps_on_either_truncation_side(tmp_path, side, words):
    """Both bounds (encoding.py) cut before the tokenizer truncates: on the side it truncates,
    or a left-truncating tokenizer keeps a window from the middle."""
    specials = {"[PAD]": 0, "<pad>": 1, "[CLS]": 2, "[SEP]": 3, "<unk>": 4}
    tok = tokenizer(specials, "[CLS] $A [SEP]", model_max_length=64, truncation_side=side)
    text = " ".join(f"w{i * 7 % 40}" for i in range(words))
    trained = tok(text, truncation=True, max_length=16)["input_ids"]
    assert encoding.encode(tok, text, 16)["input_ids"] == trained
    engine = served(tmp_path, "bert", tok, ("lora",))
    engine.info["lora"] = dataclasses.replace(engine.info["lora"], max_length=16)
    [(kept, cut)] = engine._encode([Row("lora", text)])
    assert kept["input_ids"] == trained and cut


def test_a_long_context_model_cuts_inputs_at_the_default_length_where_no_one_says(tmp_path):
    """Llama 3's own limit (131,072 here too) would let one request of long texts fill the memory."""
    tok = decoder_tokenizer(bos=True, padding_side="right")
    tok.model_max_length = 131_072
    engine = served(tmp_path, "llama", tok, ("lora",), {"max_position_embeddings": 131_072})
    assert engine.limit == 131_072 and engine.info["lora"].max_length == 2048
    text = " ".join(f"w{i % 40}" for i in range(3000))
    [(encoded, cut)] = engine._encode([Row("lora", text)])
    assert len(encoded["input_ids"]) == 2048 and cut


def test_a_batch_runs_in_parts_of_at_most_the_token_budget_with_the_same_answers(tmp_path, monkeypatch):
    specials = {"[PAD]": 0, "<pad>": 1, "[CLS]": 2, "[SEP]": 3, "<unk>": 4}
    tok = tokenizer(specials, "[CLS] $A [SEP]", model_max_length=64)
    engine = served(tmp_path, "bert", tok, ("lora", "adapter"))
    rows = [Row(("lora", "adapter")[i % 2], " ".join(f"w{j}" for j in range(1 + 3 * i))) for i in range(12)]
    whole = engine.run(rows)
    shapes, forward = [], type(engine.mt).__call__

    def counted(mt, input_ids, **kw):
        shapes.append(tuple(input_ids.shape))
        return forward(mt, input_ids, **kw)

    monkeypatch.setattr(type(engine.mt), "__call__", counted)
    engine.max_batch_tokens = 80
    parts = engine.run(rows)
    assert len(shapes) > 1 and all(b * t <= 80 or b == 1 for b, t in shapes)
    assert sum(b for b, _ in shapes) == len(rows)
    for a, b in zip(whole, parts):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
