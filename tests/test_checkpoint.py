import json

import pytest
import torch

import unipelt
from unipelt import UniPeltError

from conftest import batch, build, randomize

PRESETS = sorted(unipelt.PRESETS)


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


@pytest.mark.parametrize("preset", PRESETS)
def test_save_then_load_into_a_fresh_base_reproduces_logits(tmp_path, arch, preset):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build(arch), tmp_path)
    assert (logits(restored) - logits(model)).abs().max() < 1e-6
    assert restored.pelt_config == model.pelt_config


def test_checkpoint_holds_only_pelt_parameters_and_the_head(tmp_path):
    model = unipelt.apply(build(), "unipelt-apl")
    unipelt.save(model, tmp_path)
    from safetensors import safe_open
    with safe_open(tmp_path / "unipelt.safetensors", "pt") as f:
        keys = list(f.keys())
    assert "pelt_prefix.folded" in keys and not any("mlp" in k for k in keys)
    assert all("pelt_" in k or k.startswith(("classifier.", "bert.pooler.")) for k in keys)
    meta = json.loads((tmp_path / "unipelt.json").read_text())
    assert meta["base_model"]["hidden_size"] == 32


def test_loading_into_a_different_base_model_is_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    with pytest.raises(UniPeltError, match="hidden_size: checkpoint 32 vs model 48"):
        unipelt.load(build(hidden_size=48), tmp_path)
    with pytest.raises(UniPeltError, match="embedding weights differ"):
        unipelt.load(build(seed=7), tmp_path)
    with pytest.raises(UniPeltError, match="model_type"):
        unipelt.load(build("roberta"), tmp_path)


def test_loading_into_a_model_with_another_config_is_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    with pytest.raises(UniPeltError, match="different unipelt config"):
        unipelt.load(unipelt.apply(build(), "adapter"), tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_weights_fail_with_a_clear_error(tmp_path, damage):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    path = tmp_path / "unipelt.safetensors"
    data = bytearray(path.read_bytes())
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(UniPeltError, match="truncated or modified"):
        unipelt.load(build(), tmp_path)


def test_damaged_file_is_caught_even_when_the_checksum_is_updated(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    path, meta_path = tmp_path / "unipelt.safetensors", tmp_path / "unipelt.json"
    path.write_bytes(path.read_bytes()[:100])
    meta = json.loads(meta_path.read_text())
    import hashlib
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match="not a readable safetensors file"):
        unipelt.load(build(), tmp_path)


def test_missing_checkpoint_and_unapplied_model_errors(tmp_path):
    with pytest.raises(UniPeltError, match="not a unipelt checkpoint"):
        unipelt.load(build(), tmp_path)
    with pytest.raises(UniPeltError, match="unipelt.apply"):
        unipelt.save(build(), tmp_path)
