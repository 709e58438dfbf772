"""Generation checks that belong to one architecture's quirk; the invariants every LM shares
(cached == uncached decoding, beam search, the causal mask with prefix keys in front) run over
the whole table in tests/test_generation.py.

Sliding windows (Mistral, Gemma-2): prefixes stay visible outside the window and leave it intact.
"""

import pytest
import torch
from conftest import CONFIGS, batch, build_lm, randomize

import unipelt


def _trained(arch, preset, **kw):
    model = unipelt.apply(build_lm(arch, **kw), preset)
    randomize(model, std=0.3)
    return model


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
