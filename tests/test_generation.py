"""Generation with every preset on every tiny LM of the table (conftest.LMS: encoder-decoders
and decoder-only models alike).

The reference for cached decoding is uncached decoding (``use_cache=False``), which recomputes
the whole sequence every step: prefixes, masks, positions and gates must agree between the two.
Decoder-only models generate after left padding. Architecture-specific generation checks
(sliding windows) are in tests/test_arch_generation.py.
"""

import pytest
import torch
from conftest import DECODER_LMS, LMS, batch, build, build_lm, randomize
from transformers import DynamicCache

import unipelt
from unipelt import UniPeltError
from unipelt.arch import spec_for

PRESETS = sorted(unipelt.PRESETS)
PREFIXED = ["prefix", "mam", "unipelt-ap", "unipelt-apl"]
# Qwen2/3 and Gemma run Llama's (and Mistral's) module code paths: there only the presets that
# touch attention, where their quirks are (q/k norms, head_dim, scaled embeddings)
LLAMA_LIKE = {"qwen2", "qwen3", "gemma"}
ATTENTION_PRESETS = {*PREFIXED, "prompt", "lora", "adapter", "mh-parallel-adapter"}
# Gemma-2 has no sdpa attention in transformers (sdpa cannot soft-cap its logits)
SDPA = sorted(a for a in LMS if LMS[a]._supports_sdpa)


def _inputs(arch: str) -> dict:
    """The padded test batch; decoder-only models generate after left padding."""
    b = batch()
    if arch not in DECODER_LMS:
        return b
    ids, mask = torch.ones_like(b["input_ids"]), torch.zeros_like(b["attention_mask"])
    for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
        ids[i, -n:], mask[i, -n:] = b["input_ids"][i, :n], 1
    return {"input_ids": ids, "attention_mask": mask}


def _generate(model, inputs, use_cache, **kw):
    with torch.no_grad():
        return model.generate(
            **inputs,
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
    randomize(model, std=0.05 if preset == "full" else 0.3)  # large enough to move the tokens
    return model


@pytest.fixture(params=sorted(LMS))
def lm_arch(request):
    return request.param


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_greedy_generation_matches_uncached_decoding(lm_arch, preset):
    if lm_arch in LLAMA_LIKE and preset not in ATTENTION_PRESETS:
        pytest.skip("same code path as Llama's and Mistral's, tested there")
    model = _trained(lm_arch, preset)
    cached, uncached = (_generate(model, _inputs(lm_arch), c) for c in (True, False))
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max() for a, b in zip(cached.scores, uncached.scores)) < 1e-4


@pytest.mark.parametrize("preset", [*PREFIXED, "prompt"])
@pytest.mark.parametrize("arch", sorted(set(LMS) - set(DECODER_LMS)))
def test_a_decoder_longer_than_its_padded_encoder_input(arch, preset):
    """Targets longer than their sources (and uncached generation past the source's length):
    each row is what it is alone, without the padding. The cross-attention's mask is the
    encoder's, whatever the decoder's length."""
    model, b = _trained(arch, preset), batch(t=4)  # rows of 4, 1 and 3 real tokens
    decoder = torch.arange(5, 30).repeat(3, 1)  # 25 > 4 + any prompt's 10
    with torch.no_grad():
        out = model(**b, decoder_input_ids=decoder).logits
        for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
            alone = model(input_ids=b["input_ids"][i : i + 1, :n], decoder_input_ids=decoder[i : i + 1]).logits
            torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-4, atol=1e-5)
    uncached = model.generate(**b, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    cached = model.generate(**b, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("preset", PREFIXED)
def test_cached_beam_search_matches_uncached(lm_arch, preset):
    model = _trained(lm_arch, preset)
    cached, uncached = (_generate(model, _inputs(lm_arch), c, num_beams=3) for c in (True, False))
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (cached.sequences_scores - uncached.sequences_scores).abs().max() < 1e-4


@pytest.mark.parametrize("arch", SDPA)
@pytest.mark.parametrize("preset", ["prefix", "unipelt-apl"])
def test_prefix_without_padding_gets_a_causal_mask_behind_its_columns(arch, preset):
    """Without padding sdpa gets mask=None and is_causal=True, which, once prefix keys are
    prepended, would hide them from the first queries; eager attention always gets a materialised mask."""
    ids = batch()["input_ids"][:, :6]
    inputs = {"input_ids": ids} if arch in DECODER_LMS else {"input_ids": ids, "decoder_input_ids": ids}
    out = []
    for impl in ("sdpa", "eager"):
        model = unipelt.apply(build_lm(arch, attn_implementation=impl), preset)
        randomize(model, std=0.3)
        with torch.no_grad():
            out.append(model(**inputs).logits)
    assert (out[0] - out[1]).abs().max() < 1e-5


@pytest.mark.parametrize("arch", sorted(set(SDPA) & set(DECODER_LMS)))
@pytest.mark.parametrize("preset", ["prefix", "unipelt-ap"])
def test_a_static_cache_prefill_with_a_prefix_matches_uncached_decoding(arch, preset):
    """An empty static cache's prefill gives sdpa mask=None with keys padded to the cache's
    length: its is_causal mask is aligned top-left, and so must the one built for the prefix be
    (aligned to the last keys, every prompt token saw later ones and the empty slots)."""
    model = _trained(arch, preset)
    inputs = {"input_ids": batch()["input_ids"][:1, :6]}
    uncached = _generate(model, inputs, False)
    static = _generate(model, inputs, True, cache_implementation="static")
    assert torch.equal(static.sequences, uncached.sequences)
    assert max((a - b).abs().max() for a, b in zip(static.scores, uncached.scores)) < 1e-4


def test_llama_prefix_matches_the_past_key_values_route():
    """Grouped-query prefixes, prepended after rotary embeddings, equal transformers' own cache
    path fed with the same keys and explicit position ids."""
    model = _trained("llama", "prefix")
    ids = batch()["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        table = model.pelt_prefix.table()  # (L, 2, l, H_kv·dh)
        n, length, head_dim = ids.shape[0], table.shape[2], model.config.head_dim
        cache = DynamicCache()
        for i in range(table.shape[0]):
            k, v = (t.view(length, -1, head_dim).transpose(0, 1).expand(n, -1, -1, -1).contiguous() for t in table[i])
            assert k.shape[1] == model.config.num_key_value_heads
            cache.update(k, v, i)
        plain = build_lm("llama")
        plain.load_state_dict(
            {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "pelt_" not in k}
        )
        reference = plain(
            input_ids=ids,
            attention_mask=torch.ones(n, length + ids.shape[1], dtype=torch.long),
            past_key_values=cache,
            position_ids=torch.arange(ids.shape[1]).expand(n, -1),
        ).logits
    assert (ours - reference).abs().max() < 1e-5


def test_gates_in_causal_layers_do_not_see_later_tokens():
    """Per-token gates keep a decoder causal: a token's logits ignore what follows it."""
    model = _trained("llama", "unipelt-apl")
    ids = batch()["input_ids"]
    with torch.no_grad():
        full, head = model(input_ids=ids).logits, model(input_ids=ids[:, :4]).logits
    assert (full[:, :4] - head).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_causal_prompt_equals_the_prompt_in_front_of_the_input(arch):
    """A decoder's prompt, served as per-layer keys/values, gives the logits that running the
    plain model on [prompt; input] gives at the input's positions. Rotary models: the prompt at
    0..l-1 and the input after it; learned absolute positions (GPT-2): the input keeps its own
    positions (arch.ArchSpec.absolute_positions)."""
    model, plain = unipelt.apply(build_lm(arch), "prompt"), build_lm(arch)
    randomize(model, std=1.0)
    inputs = _inputs(arch)  # left padded: the prompt then sits right before the first real token
    prompt = model.pelt_prompt.embeddings.detach()
    b, length = inputs["input_ids"].shape[0], prompt.shape[0]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as generate() gives left-padded rows: 0 at the first real token
    shift = 0 if spec_for(model).absolute_positions else length
    with torch.no_grad():
        ours = model(**inputs, position_ids=positions).logits
        real = torch.cat([prompt.expand(b, -1, -1), plain.get_input_embeddings()(ids)], dim=1)
        positions = torch.cat([torch.arange(length).expand(b, -1), shift + positions], dim=1)
        mask = torch.cat([mask.new_ones(b, length), mask], dim=1)
        theirs = plain(inputs_embeds=real, attention_mask=mask, position_ids=positions).logits[:, length:]
    keep = inputs["attention_mask"].bool()
    assert (ours - theirs)[keep].abs().max() < 1e-5
    assert (ours - plain(**inputs, position_ids=positions[:, length:]).logits)[keep].abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_a_causal_prompt_keeps_every_position_on_sliding_window_layers(arch):
    """The prompt pass's own cache would keep a sliding-window layer's last window - 1 positions
    (3 of 10 here): the prompt's other keys and values would be lost."""
    model = unipelt.apply(build_lm(arch), unipelt.PromptConfig(length=10))
    with torch.no_grad():
        model(**_inputs(arch))
    assert [k.shape[1] for k, _ in model.pelt_prompt._last] == [10] * model.config.num_hidden_layers


@pytest.mark.parametrize("arch", ["t5", "bart", "bert"])
def test_an_inserted_prompt_refuses_left_padded_inputs(arch):
    """The prompt sits at a fixed column: a left-padded row would have its padding between the
    prompt and its tokens (on T5 its output would depend on the batch's longest row)."""
    model = unipelt.apply(build_lm(arch) if arch != "bert" else build(arch), "prompt")
    b = batch()
    left = {"input_ids": b["input_ids"].flip(1), "attention_mask": b["attention_mask"].flip(1)}
    extra = {"decoder_input_ids": b["input_ids"][:, :3]} if arch != "bert" else {}
    with torch.no_grad():
        model(**b, **extra)  # right padded: fine
        with pytest.raises(UniPeltError, match="must be padded on the right"):
            model(**left, **extra)


def _prompt_gradient(**checkpointing) -> torch.Tensor:
    model = unipelt.apply(build_lm("llama"), "prompt").train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    inputs = batch()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    return model.pelt_prompt.embeddings.grad


def test_causal_prompt_trains_with_activation_checkpointing():
    plain = _prompt_gradient()
    assert plain.abs().sum() > 0
    assert torch.allclose(plain, _prompt_gradient(use_reentrant=False), atol=1e-6)
    with pytest.raises(UniPeltError, match="non-reentrant"):
        _prompt_gradient(use_reentrant=True)


def test_prompt_and_prefix_together_are_refused_on_decoder_only_models():
    cfg = unipelt.PeltConfig(methods=(unipelt.PromptConfig(), unipelt.PrefixConfig()))
    with pytest.raises(UniPeltError, match="prompt and prefix tuning together"):
        unipelt.apply(build_lm("llama"), cfg)
