"""Half precision for every preset: bf16/fp16 inference close to float32, bf16 autocast training."""

import copy

import pytest
import torch
from conftest import batch, build, randomize

import unipelt

PRESETS = sorted(unipelt.PRESETS)


# one architecture of each kind: post-norm encoder, encoder-decoder with relative positions, decoder
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("arch", ["bert", "t5", "llama"])
def test_half_precision_inference_stays_close_to_float32(arch, preset, dtype):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    half = unipelt.apply(build(arch), preset)
    half.load_state_dict(model.state_dict())
    half = half.to(dtype)
    assert {p.dtype for n, p in half.named_parameters() if "pelt_" in n} <= {dtype}
    with torch.no_grad():
        ref, out = model(**batch()).logits, half(**batch()).logits
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_training_step(preset):
    model = unipelt.apply(build("bert"), preset).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch(), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_ia3_keys_keep_the_base_layer_dtype_under_autocast():
    """A float32 l must not turn bf16 keys into float32 ones: transformers 5.17-5.24's sdpa then fills
    T5's bf16 cross-attention position bias with float32's minimum (an overflow on CUDA)."""
    model = unipelt.apply(build("t5"), "ia3")
    seen = []
    for attention in (
        model.transformer.encoder.block[0].layer[0].SelfAttention,
        model.transformer.decoder.block[0].layer[1].EncDecAttention,
    ):
        attention.k.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(**batch()).logits).all()
    assert seen == [torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize("preset", ["lora", "unipelt-apl-nogate", "prefix", "unipelt-apl"])
@pytest.mark.parametrize("within", ["autocast", "inference_mode"])
def test_merge_and_fold_inside_autocast_or_inference_mode_give_the_plain_result(preset, within):
    """Inside autocast, bf16 rounding stayed in the float32 weights merge and fold wrote (and the
    folded prefix became a bf16 parameter); inside inference_mode the folded prefix was an
    inference tensor, and every later forward pass failed on its version counter."""
    model = unipelt.apply(build(), preset)
    randomize(model, std=0.2)
    model.eval()
    reference = copy.deepcopy(model)
    prepare = unipelt.fold if unipelt.get_preset(preset).gated else unipelt.merge
    prepare(reference)
    scope = torch.autocast("cpu", dtype=torch.bfloat16) if within == "autocast" else torch.inference_mode()
    with scope:
        prepare(model)
    assert all(p.dtype == torch.float32 and not p.is_inference() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch()).logits, reference(**batch()).logits, rtol=0, atol=0)
