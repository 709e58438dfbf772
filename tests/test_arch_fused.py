"""Fused projections (GPT-2's Conv1D ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``,
ModernBERT's ``Wqkv``): LoRA and (IA)³ on a part change that part's rows only, checked against
the method's equation applied by hand to a plain copy of the model (no unipelt code in the
reference)."""

import pytest
import torch
from conftest import batch, build, randomize

import unipelt
from unipelt import IA3Config, LoRAConfig, PeltConfig, UniPeltError
from unipelt.methods.lora import LoRALinear

FUSED = {  # arch -> (fused attention map, (q, k, v) widths, W stored (in, out))
    "gpt2": ("attn.c_attn", (32, 32, 32), True),
    "phi3": ("self_attn.qkv_proj", (32, 16, 16), False),  # 4 query heads, 2 key/value heads of 8
    "modernbert": ("attn.Wqkv", (32, 32, 32), False),
}
LAYERS = {"gpt2": "transformer.h", "phi3": "model.layers", "modernbert": "model.layers"}


def _rows(arch, part):
    widths = FUSED[arch][1]
    start = sum(widths[:part])
    return slice(start, start + widths[part])


def _out_in(linear, transposed):
    return linear.weight.T if transposed else linear.weight  # (d_out, d_in) view


def _logits(model):
    with torch.no_grad():
        return model(**batch()).logits


@pytest.mark.parametrize("arch", sorted(FUSED))
def test_lora_on_q_and_v_adds_s_b_a_to_those_rows_of_the_fused_weight(arch):
    cfg = LoRAConfig(r=2, alpha=3.0, targets=("q", "v"))
    model = unipelt.apply(build(arch), cfg)
    randomize(model, std=0.2, only_pelt=True)
    plain = build(arch)
    path, _, transposed = FUSED[arch]
    with torch.no_grad():
        for i, layer in enumerate(plain.get_submodule(LAYERS[arch])):
            w = _out_in(layer.get_submodule(path), transposed)
            wrapped = model.get_submodule(LAYERS[arch])[i].get_submodule(path)
            for part in (2, 0):  # v wraps q: the outer wrapper is the last target placed
                lora = wrapped.pelt_lora
                w[_rows(arch, part)] += 1.5 * (lora.down[0] @ lora.up[0]).T  # s = alpha / r
                wrapped = wrapped.base_layer
            assert not isinstance(wrapped, LoRALinear)
        plain.get_submodule(_head(arch)).load_state_dict(model.get_submodule(_head(arch)).state_dict())
    ours = _logits(model)
    assert (ours - _logits(build(arch))).abs().max() > 1e-3  # the LoRA acts
    assert (ours - _logits(plain)).abs().max() < 1e-5
    merged = unipelt.merge_and_unload(model)
    assert (_logits(merged) - _logits(plain)).abs().max() < 1e-5


def _head(arch):
    return {"gpt2": "score", "phi3": "score", "modernbert": "classifier"}[arch]


@pytest.mark.parametrize("arch", sorted(FUSED))
def test_ia3_scales_the_key_and_value_rows_of_the_fused_output(arch):
    model = unipelt.apply(build(arch), IA3Config(targets=("k", "v")))
    randomize(model, std=0.3, only_pelt=True)
    plain = build(arch)
    path = FUSED[arch][0]
    for i, layer in enumerate(plain.get_submodule(LAYERS[arch])):
        l = model.get_submodule(LAYERS[arch])[i].get_submodule(path).pelt_ia3.detach()
        k, v = _rows(arch, 1), _rows(arch, 2)
        assert l.numel() == (k.stop - k.start) + (v.stop - v.start)

        def hook(module, args, out, l=l, k=k, v=v):
            out = out.clone()
            out[..., k.start : v.stop] *= l  # [q; l_k ⊙ k; l_v ⊙ v]: k and v are contiguous
            return out

        layer.get_submodule(path).register_forward_hook(hook)
    plain.get_submodule(_head(arch)).load_state_dict(model.get_submodule(_head(arch)).state_dict())
    assert (_logits(model) - _logits(build(arch))).abs().max() > 1e-3
    assert (_logits(model) - _logits(plain)).abs().max() < 1e-5


def test_lora_on_q_and_ia3_on_k_v_share_one_fused_map_and_merge_exactly():
    cfg = PeltConfig(methods=(LoRAConfig(r=2, targets=("q",)), IA3Config(targets=("k", "v"))))
    model = unipelt.apply(build("gpt2"), cfg)
    randomize(model, std=0.3, only_pelt=True)
    before = _logits(model)
    assert (before - _logits(build("gpt2"))).abs().max() > 1e-3
    assert (_logits(unipelt.merge_and_unload(model)) - before).abs().max() < 1e-5


def test_two_methods_on_the_same_rows_of_a_fused_map_are_refused():
    cfg = PeltConfig(methods=(LoRAConfig(targets=("v",)), IA3Config(targets=("v",))))
    with pytest.raises(UniPeltError, match="same projection 'attn.c_attn'"):
        unipelt.apply(build("gpt2"), cfg)


def test_phi3_ffn_lora_is_one_lora_per_part_as_llama_has_one_per_linear():
    """gate_up_proj = [gate; up]: LoRA ffn_in puts one LoRA on each half, so Phi-3 and Llama of
    the same size train the same number of LoRA parameters."""
    cfg = LoRAConfig(r=2, targets=("ffn_in",))
    counts = {a: unipelt.count_parameters(unipelt.apply(build(a), cfg))["lora"] for a in ("phi3", "llama")}
    assert counts["phi3"] == counts["llama"] == 2 * 2 * 2 * (32 + 64)  # layers · parts · r · (d_in + d_out)
    model = unipelt.apply(build("phi3"), cfg)
    outer = model.model.layers[0].mlp.gate_up_proj
    assert (outer.rows, outer.base_layer.rows) == ((64, 128), (0, 64))


def test_modernbert_prefix_is_seen_by_every_token_and_the_local_window_still_hides_far_ones():
    """One local layer (window 4: two tokens each side): the [CLS] the classifier reads cannot see
    the last token, with or without a prefix; the prefix keys, prepended visible, it does see."""
    model = unipelt.apply(build("modernbert", num_hidden_layers=1, layer_types=["sliding_attention"]), "prefix")
    randomize(model, std=0.3, only_pelt=True)
    ids = batch()["input_ids"][:1]
    other = ids.clone()
    other[0, -1] = ids[0, -1] + 1
    with torch.no_grad():
        first, first_other = model(input_ids=ids).logits, model(input_ids=other).logits
        with unipelt.disable(model):
            plain = model(input_ids=ids).logits
    assert model.config.sliding_window * 2 < ids.shape[1]
    assert (first - first_other).abs().max() == 0  # the last token is outside [CLS]'s window
    assert (first - plain).abs().max() > 1e-4  # the prefix is inside it


def test_modernbert_prompt_takes_ordinary_positions_after_cls():
    """The prompt joins the embeddings' output after [CLS]; the rotary embedding then sees
    positions 0..T+l-1, as if the prompt were tokens: the plain model fed the same hidden states
    through a hook on its embeddings, with an all-ones mask over the prompt, gives the same logits."""
    model, plain = unipelt.apply(build("modernbert"), "prompt"), build("modernbert")
    randomize(model, std=0.3)
    plain.classifier.load_state_dict(model.classifier.state_dict())
    plain.head.load_state_dict(model.head.state_dict())
    prompt = model.model.embeddings.pelt_prompt.detach()
    b = batch()
    n = b["input_ids"].shape[0]

    def insert(module, args, out):
        return torch.cat([out[:, :1], prompt.expand(n, -1, -1), out[:, 1:]], dim=1)

    plain.model.embeddings.register_forward_hook(insert)
    mask = torch.cat(
        [b["attention_mask"][:, :1], b["attention_mask"].new_ones(n, len(prompt)), b["attention_mask"][:, 1:]], 1
    )
    positions = torch.arange(mask.shape[1])[None]
    with torch.no_grad():
        ours = model(**b).logits
        theirs = plain(input_ids=b["input_ids"], attention_mask=mask, position_ids=positions).logits
    assert (ours - theirs).abs().max() < 1e-5


def test_peft_export_takes_conv1d_lora_and_refuses_lora_on_part_of_a_fused_map(tmp_path):
    peft = pytest.importorskip("peft")
    with pytest.raises(UniPeltError, match=r"part of a fused projection \(transformer.h.0.attn.c_attn\)"):
        unipelt.to_peft(unipelt.apply(build("gpt2"), "lora"), tmp_path / "qv")
    ours = unipelt.apply(build("gpt2"), LoRAConfig(r=4, alpha=8.0, targets=("ffn_in", "ffn_out")))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path / "ffn")  # Conv1D: peft's fan_in_fan_out
    ref = peft.PeftModel.from_pretrained(build("gpt2"), tmp_path / "ffn").eval()
    assert (_logits(ours) - _logits(build("gpt2"))).abs().max() > 1e-3
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5
    assert (_logits(unipelt.from_peft(build("gpt2"), tmp_path / "ffn")) - _logits(ours)).abs().max() < 1e-6
    fused = peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    peft.get_peft_model(build("gpt2"), fused).save_pretrained(tmp_path / "c_attn")
    with pytest.raises(UniPeltError, match=r"peft adapts a fused map with one A and B"):
        unipelt.from_peft(build("gpt2"), tmp_path / "c_attn")
