"""Which architectures unipelt takes, asked before any weights load (arch.check_supported)."""

import json

import pytest
from conftest import ARCHS, build

import unipelt
from unipelt import UniPeltError
from unipelt.arch import check_supported, supported


def test_every_row_of_the_test_table_is_a_supported_architecture():
    assert {build(arch).config.model_type for arch in ARCHS} <= set(supported())


@pytest.mark.parametrize("model_type", ["gpt2", "phi3", "modernbert", None])
def test_an_unsupported_model_type_is_refused_naming_the_supported_ones_and_the_docs(model_type):
    with pytest.raises(UniPeltError, match=r"model_type .* yet; supported: bart, bert, .*contributing\.md"):
        check_supported(str(model_type))


def test_a_model_directory_or_its_config_is_checked_from_config_json_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"not weights: never read")
    for where in (tmp_path, tmp_path / "config.json", str(tmp_path)):
        with pytest.raises(UniPeltError, match="model_type 'gpt2'"):
            check_supported(where)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert check_supported(tmp_path) == "mistral"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UniPeltError, match="not a readable model config.json"):
        check_supported(tmp_path)


def test_apply_refuses_an_unsupported_model_with_the_same_message():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50))
    with pytest.raises(UniPeltError, match=r"model_type 'gpt2'.*Adding an architecture"):
        unipelt.apply(model, "lora")
