"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r), peft's ``use_rslora``."""

import json

import pytest
import torch
from conftest import batch, build

import unipelt
from unipelt import LoRAConfig, PeltConfig
from unipelt.methods.lora import LoRALinear

peft = pytest.importorskip("peft")

RS = LoRAConfig(r=4, alpha=8.0, targets=("q", "v"), use_rslora=True)


def test_the_scale_is_alpha_over_sqrt_r():
    assert RS.scale == 8.0 / 2.0
    assert LoRAConfig(r=4, alpha=8.0).scale == 2.0
    model = unipelt.apply(build(), RS)
    scales = {m.scale.value.item() for m in model.modules() if isinstance(m, LoRALinear)}
    assert scales == {4.0}


def test_the_flag_is_written_only_when_set():
    """Configs from before the option keep their JSON, hence their checkpoints and run keys."""
    plain = unipelt.PRESETS["lora"].to_dict()
    assert "use_rslora" not in json.dumps(plain)
    assert PeltConfig.from_dict(plain) == unipelt.PRESETS["lora"]
    rs = PeltConfig(methods=(RS,)).to_dict()
    assert rs["methods"][0]["use_rslora"] is True
    assert PeltConfig.from_dict(rs).methods[0] == RS


def test_gated_lora_refuses_the_flag():
    with pytest.raises(unipelt.UniPeltError, match="gated LoRA replaces"):
        LoRAConfig(composition="gated", use_rslora=True)
    with pytest.raises(unipelt.UniPeltError, match="true or false"):
        LoRAConfig(use_rslora=1)


def _peft_rslora(model):
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=True, modules_to_save=["classifier"]
    )
    return peft.get_peft_model(model, cfg)


def test_same_weights_give_the_same_logits_as_peft_use_rslora():
    ours, ref = unipelt.apply(build(), RS), _peft_rslora(build())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, m in ref.named_modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                a = torch.randn(m.lora_A["default"].weight.shape, generator=g) * 0.1
                b = torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.1
                m.lora_A["default"].weight.copy_(a)
                m.lora_B["default"].weight.copy_(b)
                lora = ours.get_submodule(name.replace("base_model.model.", "")).pelt_lora
                lora.down[0].copy_(a.T)
                lora.up[0].copy_(b.T)
        got, want, base = ours(**batch()).logits, ref(**batch()).logits, build()(**batch()).logits
    assert (got - base).abs().max() > 1e-3
    assert (got - want).abs().max() < 1e-5


def test_a_peft_rslora_checkpoint_round_trips(tmp_path):
    ref = _peft_rslora(build())
    with torch.no_grad():
        for p in ref.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path / "peft")
    ours = unipelt.from_peft(build(), tmp_path / "peft")
    assert ours.pelt_config.methods[0] == RS
    with torch.no_grad():
        assert (ours(**batch()).logits - ref.eval()(**batch()).logits).abs().max() < 1e-5
    unipelt.to_peft(ours, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["use_rslora"] is True
