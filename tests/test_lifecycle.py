"""(IA)³ against its equation, and the model's life cycle: merge, disable/enable, unload."""

import pytest
import torch
from conftest import batch, build, randomize

import unipelt
from unipelt import IA3Config, UniPeltError
from unipelt.methods.ia3 import IA3Linear
from unipelt.wrappers import Wrapper

PRESETS = sorted(unipelt.PRESETS)
# disable() refuses where the base weights themselves train (tests/test_quiet_failures.py)
SWITCHABLE = [p for p in PRESETS if p not in ("bitfit", "full")]


def logits(model, b=None):
    with torch.no_grad():
        return model(**(b or batch())).logits


def test_ia3_rescales_keys_values_and_the_ffn_activation():
    """Liu et al. 2022: k = l_k ⊙ W_k x, v = l_v ⊙ W_v x, FFN = W_out (l_ff ⊙ f(W_in x))."""
    model = unipelt.apply(build(), "ia3")
    randomize(model, std=0.5)
    plain = build()
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "pelt_" not in k})
    for i, layer in enumerate(plain.bert.encoder.layer):
        ours = model.bert.encoder.layer[i]
        lk, lv = ours.attention.self.key.pelt_ia3, ours.attention.self.value.pelt_ia3
        lff = ours.output.dense.pelt_ia3
        layer.attention.self.key.register_forward_hook(lambda m, i, out, l=lk: out * l)
        layer.attention.self.value.register_forward_hook(lambda m, i, out, l=lv: out * l)
        layer.output.dense.register_forward_pre_hook(lambda m, args, l=lff: (args[0] * l,))
    assert (logits(model) - logits(plain)).abs().max() < 1e-5
    assert unipelt.count_parameters(model)["ia3"] == 2 * (32 + 32 + 64)


def test_ia3_merges_exactly(arch):
    model = unipelt.apply(build(arch), IA3Config())
    randomize(model, std=0.5)
    before = logits(model)
    unipelt.merge(model)
    assert not any(isinstance(m, IA3Linear) for m in model.modules())
    assert (logits(model) - before).abs().max() < 1e-5


@pytest.mark.parametrize("preset", SWITCHABLE)
def test_disable_runs_the_base_model_and_enable_brings_the_modules_back(arch, preset):
    base = logits(build(arch))
    model = unipelt.apply(build(arch), preset)
    randomize(model, only_pelt=True, std=0.3)
    adapted = logits(model)
    with unipelt.disable(model):
        assert (logits(model) - base).abs().max() < 1e-5
    assert torch.equal(logits(model), adapted)
    unipelt.disable(model)
    assert (logits(model) - base).abs().max() < 1e-5
    unipelt.enable(model)
    assert torch.equal(logits(model), adapted)


@pytest.mark.parametrize("preset", PRESETS)
def test_unload_returns_the_plain_base_model(arch, preset):
    plain = build(arch)
    model = unipelt.apply(build(arch), preset)
    randomize(model, only_pelt=True)
    model = unipelt.unload(model)
    assert not any(isinstance(m, Wrapper) for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert not model.config._attn_implementation.startswith("unipelt_")
    assert (logits(model) - logits(plain)).abs().max() < 1e-5
    assert all(p.requires_grad for p in model.parameters())
    unipelt.apply(model, "lora")  # a plain model again: it takes a new config


@pytest.mark.parametrize("preset", ["lora", "ia3"])
def test_merge_and_unload_keeps_the_adapted_outputs_in_a_plain_model(arch, preset):
    model = unipelt.apply(build(arch), preset)
    randomize(model, std=0.3)
    before = logits(model)
    plain = unipelt.merge_and_unload(model)
    assert plain.state_dict().keys() == build(arch).state_dict().keys()
    assert (logits(plain) - before).abs().max() < 1e-5


def test_merge_and_unload_refuses_to_drop_modules_it_cannot_fold():
    with pytest.raises(UniPeltError, match="merge_and_unload folds LoRA and \\(IA\\)³ only.*Adapter"):
        unipelt.merge_and_unload(unipelt.apply(build(), "adapter"))
    with pytest.raises(UniPeltError, match="no unipelt modules"):
        unipelt.disable(build())


@pytest.mark.parametrize("head", ["mean", "last"])
def test_merge_and_unload_refuses_to_drop_a_summary_head(head):
    """A plain BERT's classifier reads its pooler: the masked mean or last token would be lost
    and the outputs would change without a word. The model is left as it was."""
    model = unipelt.apply(build(), unipelt.PeltConfig(methods=(unipelt.LoRAConfig(r=4),), head=head))
    randomize(model, std=0.3)
    before = logits(model)
    with pytest.raises(UniPeltError, match=f"merge_and_unload: the task head reads the '{head}' summary"):
        unipelt.merge_and_unload(model)
    assert torch.equal(logits(model), before) and not getattr(model, "pelt_merged", False)


def test_ia3_on_a_projection_another_method_wrapped_is_refused():
    cfg = unipelt.PeltConfig(methods=(unipelt.LoRAConfig(targets=("v",)), IA3Config(targets=("v",))))
    with pytest.raises(UniPeltError, match="same projection"):
        unipelt.apply(build(), cfg)


def test_unload_after_merge_and_merge_while_disabled_are_refused():
    """unload() promises the base model: after merge() its weights hold the updates, so it
    refuses (merge_and_unload keeps them). merge() inside disable() would switch the merged
    LoRA back on while the other modules stay off."""
    model = unipelt.apply(build(), "lora")
    randomize(model, only_pelt=True, std=0.3)
    adapted = logits(model)
    with unipelt.disable(model):
        with pytest.raises(UniPeltError, match="inside disable"):
            unipelt.merge(model)
        assert (logits(model) - logits(build())).abs().max() < 1e-5  # still off, still wrapped
    assert torch.equal(logits(model), adapted)
    unipelt.merge(model)
    with pytest.raises(UniPeltError, match="after merge"):
        unipelt.unload(model)
    assert (logits(unipelt.merge_and_unload(model)) - adapted).abs().max() < 1e-5


MODEL_FUNCTIONS = ["apply", "compile", "count_parameters", "disable", "enable", "fold", "gate_values", "merge",
                   "merge_and_unload", "unload"]  # fmt: skip
NEEDS_MODULES = ["disable", "enable", "fold", "gate_values", "merge", "merge_and_unload", "unload"]


def _call(name: str, model):
    extra = {"apply": ("lora",), "gate_values": (batch(),)}.get(name, ())
    return getattr(unipelt, name)(model, *extra)


@pytest.mark.parametrize("name", MODEL_FUNCTIONS)
@pytest.mark.parametrize("given", [None, "bert-base-uncased"], ids=["None", "str"])
def test_what_is_not_a_model_is_refused_in_one_line(name, given):
    """These used to raise AttributeError ('NoneType' object has no attribute 'modules')."""
    with pytest.raises(UniPeltError, match="expected a transformers model"):
        _call(name, given)


def test_apply_to_a_torch_module_that_is_no_transformers_model_says_so():
    with pytest.raises(UniPeltError, match="expected a transformers model .*got Linear"):
        unipelt.apply(torch.nn.Linear(4, 4), "lora")


@pytest.mark.parametrize("name", NEEDS_MODULES)
def test_a_model_without_unipelt_modules_is_refused_and_left_as_it_was(name):
    """merge and fold on a plain model used to return it unchanged, as if they had done something."""
    model = build()
    before = logits(model)
    with pytest.raises(UniPeltError, match="has no unipelt modules"):
        _call(name, model)
    assert torch.equal(logits(model), before)


def test_gate_values_of_a_causal_layer_average_its_real_tokens():
    """A decoder's gates are per token: their mean took the padding of shorter rows in too."""
    model = unipelt.apply(build("llama"), "unipelt-apl")
    randomize(model, std=0.2)
    ids = torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # right padding: a causal row's tokens ignore it
    both = unipelt.gate_values(model, {"input_ids": ids, "attention_mask": mask})
    first = unipelt.gate_values(model, {"input_ids": ids[:1], "attention_mask": mask[:1]})
    second = unipelt.gate_values(model, {"input_ids": ids[1:, :3], "attention_mask": mask[1:, :3]})
    for layer, values in both.items():
        for name, value in values.items():
            assert value == pytest.approx((5 * first[layer][name] + 3 * second[layer][name]) / 8, abs=1e-6)


@pytest.mark.parametrize("arch", ["bert", "bart", "llama", "t5"])
def test_switching_attention_after_apply_keeps_the_prefix_or_says_so(arch):
    """``set_attn_implementation("eager")`` after apply (to see attention weights) put the stock
    function back, which ignores the prefix keyword: the prefix silently did nothing."""
    model = unipelt.apply(build(arch), "prefix")
    randomize(model, std=0.2)
    b = batch()
    with torch.no_grad():
        want = model(**b).logits
        model.set_attn_implementation("eager")
        with pytest.raises(UniPeltError, match="unipelt_eager"):
            model(**b)
        model.set_attn_implementation("unipelt_eager")
        torch.testing.assert_close(model(**b).logits, want, rtol=1e-5, atol=1e-5)
