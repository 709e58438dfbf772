"""LoRA numerics against HF peft, the reference implementation (minGPT-style exact-match test)."""

import pytest
import torch

import unipelt

from conftest import batch, build

peft = pytest.importorskip("peft")


def test_same_lora_weights_give_the_same_logits_as_peft():
    ours = unipelt.apply(build(), "lora")
    ref = peft.get_peft_model(build(), peft.LoraConfig(r=8, lora_alpha=2, target_modules=["query", "value"],
                                                       lora_dropout=0.0, modules_to_save=["classifier"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, m in ref.named_modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                a = torch.randn(m.lora_A["default"].weight.shape, generator=g) * 0.1
                b = torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.1
                m.lora_A["default"].weight.copy_(a)
                m.lora_B["default"].weight.copy_(b)
                path = name.replace("base_model.model.", "")
                lora = ours.get_submodule(path.replace(".query", ".query").replace(".value", ".value")).pelt_lora
                lora.down[0].copy_(a.T)
                lora.up[0].copy_(b.T)
        got = ours(**batch()).logits
        want = ref(**batch()).logits
    assert (got - want).abs().max() < 1e-5
