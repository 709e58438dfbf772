"""Generation invariants on the decoder-only LMs beyond Llama (conftest.DECODER_LMS): cached ==
uncached decoding token for token after left padding, beam search, the causal mask with prefix keys
in front, and sliding windows (Mistral, Gemma-2) that prefixes leave intact."""

import pytest
import torch
from conftest import CONFIGS, DECODER_LMS, batch, build_lm, randomize

import unipelt

PRESETS = sorted(unipelt.PRESETS)
PREFIXED = ["prefix", "mam", "unipelt-ap", "unipelt-apl"]
# Qwen2/3 and Gemma share Llama's (and Mistral's) module code paths: the presets that touch attention
LLAMA_LIKE = {"qwen2", "qwen3", "gemma"}
ATTENTION_PRESETS = {*PREFIXED, "prompt", "lora", "adapter", "mh-parallel-adapter"}
# Gemma-2 has no sdpa attention in transformers (sdpa cannot soft-cap its logits)
SDPA = sorted(a for a in DECODER_LMS if DECODER_LMS[a]._supports_sdpa)


@pytest.fixture(params=sorted(DECODER_LMS))
def decoder(request):
    return request.param


def _left_padded() -> dict:
    b = batch()
    ids, mask = torch.ones_like(b["input_ids"]), torch.zeros_like(b["attention_mask"])
    for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
        ids[i, -n:], mask[i, -n:] = b["input_ids"][i, :n], 1
    return {"input_ids": ids, "attention_mask": mask}


def _generate(model, use_cache, **kw):
    with torch.no_grad():
        return model.generate(
            **_left_padded(),
            max_new_tokens=5,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=1,
            output_scores=True,
            return_dict_in_generate=True,
            **kw,
        )


def _trained(arch, preset, **kw):
    model = unipelt.apply(build_lm(arch, **kw), preset)
    randomize(model, std=0.05 if preset == "full" else 0.3)
    return model


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_greedy_generation_matches_uncached_decoding(decoder, preset):
    if decoder in LLAMA_LIKE and preset not in ATTENTION_PRESETS:
        pytest.skip("same code path as Mistral's, tested there")
    model = _trained(decoder, preset)
    cached, uncached = (_generate(model, c) for c in (True, False))
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max() for a, b in zip(cached.scores, uncached.scores)) < 1e-4


@pytest.mark.parametrize("preset", PREFIXED)
def test_cached_beam_search_matches_uncached(decoder, preset):
    model = _trained(decoder, preset)
    cached, uncached = (_generate(model, c, num_beams=3) for c in (True, False))
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (cached.sequences_scores - uncached.sequences_scores).abs().max() < 1e-4


@pytest.mark.parametrize("arch", SDPA)
@pytest.mark.parametrize("preset", ["prefix", "unipelt-apl"])
def test_prefix_without_padding_gets_a_causal_mask_aligned_to_the_last_keys(arch, preset):
    ids = batch()["input_ids"][:, :6]
    out = []
    for impl in ("sdpa", "eager"):
        model = unipelt.apply(build_lm(arch, attn_implementation=impl), preset)
        randomize(model, std=0.3)
        with torch.no_grad():
            out.append(model(input_ids=ids).logits)
    assert (out[0] - out[1]).abs().max() < 1e-5


@pytest.mark.parametrize(
    "arch, kw",
    [
        ("mistral", {}),
        ("mistral", {"attn_implementation": "eager"}),
        ("gemma2", {"layer_types": ["sliding_attention"]}),
    ],
)
def test_prefix_keys_are_always_visible_and_the_window_still_hides_old_tokens(arch, kw):
    """One sliding-window layer (window 4): the last query must not see token 0, with or without
    a prefix; prefix keys are seen by every query."""
    model = _trained(arch, "prefix", num_hidden_layers=1, **kw)
    ids = batch()["input_ids"][:1]
    other = ids.clone()
    other[0, 0] = ids[0, 0] + 1
    with torch.no_grad():
        last, last_other = model(input_ids=ids).logits[0, -1], model(input_ids=other).logits[0, -1]
        with unipelt.disable(model):
            plain = model(input_ids=ids).logits[0, -1]
    assert CONFIGS[arch]().sliding_window < ids.shape[1]
    assert (last - last_other).abs().max() == 0  # token 0 is outside the last query's window
    assert (last - plain).abs().max() > 1e-4  # the prefix is inside it
