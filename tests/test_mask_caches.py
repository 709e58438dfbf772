"""What is made from the mask a layer receives (the prefixed mask, the token mask the gates pool
over) is made once per forward pass and kept on the mask tensor itself: it must follow the mask's
contents, the inference mode, and go when the mask goes."""

import gc

import pytest
import torch
from conftest import build, build_lm, randomize

import unipelt


def _causal_4d(t: int, additive: bool = False) -> torch.Tensor:
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    if not additive:
        return allowed.clone()
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("arch, preset", [("llama", "prefix"), ("llama", "unipelt-ap"), ("bert", "unipelt-ap")])
def test_a_4d_mask_edited_in_place_between_calls_is_read_afresh(arch, preset):
    """Transformers passes a 4-D mask through as it is: a buffer reused across calls arrives as
    the same tensor. Keyed on identity alone, the second call read the first call's contents."""
    model = unipelt.apply(build_lm(arch) if arch == "llama" else build(arch), preset)
    randomize(model, std=0.3)
    ids = torch.tensor([[5, 17, 33, 8, 91, 44], [7, 8, 9, 10, 11, 12]])
    mask = _causal_4d(6).expand(2, 1, 6, 6).clone() if arch == "llama" else torch.ones(2, 1, 6, 6, dtype=torch.bool)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        mask[1, :, :, 3:] = False  # row 1: padded after 3 tokens
        mask[1, :, 3:, :3] = True  # its padded queries see something (no all-masked row)
        reused = model(input_ids=ids, attention_mask=mask).logits
        fresh = model(input_ids=ids, attention_mask=mask.clone()).logits
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)


def test_a_4d_mask_used_in_inference_mode_then_for_training():
    """The prefixed mask made under torch.inference_mode() is an inference tensor, which a training
    step could not save for backward: "Inference tensors cannot be saved for backward"."""
    model = unipelt.apply(build_lm("llama"), "prefix")
    ids = torch.tensor([[5, 17, 33, 8, 91, 44]])
    mask = _causal_4d(6, additive=True)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    assert model.pelt_prefix.nets[0].mlp_out.weight.grad is not None


def _alive(shape) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and tuple(o.shape) == shape)


def test_nothing_made_from_a_mask_outlives_the_forward_pass():
    """A thread kept the last (B, 1, T, l + T) prefixed mask and its source: B·T² per worker
    thread of a server, after the model itself was deleted."""
    model = unipelt.apply(build_lm("llama"), "prefix")
    ids = torch.randint(5, 90, (3, 37))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: a 4-D mask is made
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert _alive((3, 1, 37, 37 + 10)) == 0


def test_a_4d_mask_made_and_edited_in_inference_mode_is_read_afresh():
    """An inference tensor counts no versions and inference mode can write it in place: a mask
    buffer a server reuses under torch.inference_mode() was read with its first contents."""
    model = unipelt.apply(build_lm("llama"), "prefix")
    randomize(model, std=0.3)
    ids = torch.tensor([[5, 17, 33, 8, 91, 44], [7, 8, 9, 10, 11, 12]])
    with torch.inference_mode():
        mask = _causal_4d(6).expand(2, 1, 6, 6).clone()
        model(input_ids=ids, attention_mask=mask)
        mask[1, :, :, 3:] = False
        mask[1, :, 3:, :3] = True
        reused = model(input_ids=ids, attention_mask=mask).logits
        fresh = model(input_ids=ids, attention_mask=mask.clone()).logits
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)
