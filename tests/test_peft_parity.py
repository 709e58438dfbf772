"""LoRA numerics against HF peft, the reference implementation (minGPT-style exact-match test)."""

import pytest
import torch
from conftest import HEADS, batch, build

import unipelt
from unipelt.arch import spec_for

peft = pytest.importorskip("peft")


def _qv_leaves(arch: str) -> list[str]:
    attention = spec_for(build(arch)).stacks[0].attention[0]
    return [getattr(attention, t).rpartition(".")[2] for t in ("q", "v")]


def test_same_lora_weights_give_the_same_logits_as_peft(arch):
    """peft matches the leaf names everywhere: BART's and T5's cross-attention get LoRA too,
    as unipelt's default ``attention=("self", "cross")`` does."""
    ours = unipelt.apply(build(arch), "lora")
    ref = peft.get_peft_model(
        build(arch),
        peft.LoraConfig(
            r=8, lora_alpha=2, target_modules=_qv_leaves(arch), lora_dropout=0.0, modules_to_save=[HEADS[arch]]
        ),
    )
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
        got = ours(**batch()).logits
        want = ref(**batch()).logits
    assert (got - want).abs().max() < 1e-5


def test_a_peft_lora_checkpoint_imports_with_identical_logits(tmp_path, arch):
    ref = peft.get_peft_model(
        build(arch), peft.LoraConfig(r=4, lora_alpha=8, target_modules=_qv_leaves(arch), modules_to_save=[HEADS[arch]])
    )
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path)
    ours = unipelt.from_peft(build(arch), tmp_path)
    with torch.no_grad():
        assert (ours(**batch()).logits - ref.eval()(**batch()).logits).abs().max() < 1e-5
    assert ours.pelt_config.methods[0] == unipelt.LoRAConfig(r=4, alpha=8.0, targets=("q", "v"))


def test_unsupported_peft_checkpoints_are_refused(tmp_path):
    peft.get_peft_model(build(), peft.LoraConfig(r=4, target_modules=["dense"])).save_pretrained(tmp_path)
    with pytest.raises(unipelt.UniPeltError, match="no unipelt equivalent"):
        unipelt.from_peft(build(), tmp_path)
    with pytest.raises(unipelt.UniPeltError, match="not a peft checkpoint"):
        unipelt.from_peft(build(), tmp_path / "nowhere")
