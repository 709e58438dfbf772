"""The shared invariants over He et al.'s design dimensions, not only over the presets: every
functional form, insertion, placement, target, composition, init, dropout > 0, learned scale and
LoRA target, on every architecture of the test table."""

import pytest
import torch
import transformers
from conftest import ARCHS, CLASSIFIERS, batch, build, randomize

import unipelt
from unipelt import AdapterConfig, DoRAConfig, IA3Config, LoRAConfig, PeltConfig, PrefixConfig
from unipelt.blocks import Gate
from unipelt.errors import UniPeltError
from unipelt.inject import zero_deltas
from unipelt.participation import check_participation, idle_modules

A = dict(r=4)
CASES = {
    **{f"activation-{f}": AdapterConfig(activation=f, **A) for f in ("relu", "gelu", "tanh", "identity")},
    **{
        f"sequential-{p}-{t}": AdapterConfig(target=t, placement=p, **A)
        for p in ("pfeiffer", "houlsby")
        for t in ("attn", "ffn")
    },
    **{f"parallel-{t}": AdapterConfig(target=t, insertion="parallel", **A) for t in ("attn", "head", "ffn")},
    **{
        f"composition-{c}": AdapterConfig(insertion="parallel", composition=c, **A)
        for c in ("add", "scaled", "gated", "interpolate")
    },
    "composition-interpolate-houlsby": AdapterConfig(
        target="attn", placement="houlsby", composition="interpolate", **A
    ),
    "composition-interpolate-head": AdapterConfig(target="head", insertion="parallel", composition="interpolate", **A),
    "learned-scale": AdapterConfig(insertion="parallel", composition="scaled", scale=2.0, learn_scale=True, **A),
    "init-lora": AdapterConfig(init="lora", **A),
    "adapter-dropout": AdapterConfig(dropout=0.3, **A),
    "lora-k-o": LoRAConfig(r=2, targets=("k", "o")),
    "lora-ffn": LoRAConfig(r=2, targets=("ffn_in", "ffn_out")),
    "lora-gated-dropout": LoRAConfig(r=2, targets=("q", "v"), composition="gated", dropout=0.3),
    "lora-rslora": LoRAConfig(r=4, targets=("q", "v"), use_rslora=True),
    "dora-q-v-dropout": DoRAConfig(r=2, targets=("q", "v"), dropout=0.3),
    "dora-k-o-ffn": DoRAConfig(r=2, targets=("k", "o", "ffn_in", "ffn_out"), use_rslora=True),
    **{f"prefix-{c}": PrefixConfig(length=3, composition=c) for c in ("interpolate", "add", "gated")},
    "prefix-per-attention": PrefixConfig(length=3, networks="per_attention", mid_dim=16),
    "prefix-no-reparameterization": PrefixConfig(length=3, reparameterize=False),
    "ia3-kv": IA3Config(targets=("k", "v")),
    "ia3-ffn": IA3Config(targets=("ffn",)),
}
# A prefix changes every attention's softmax even with zero values: it has no "off" state.
SWITCHABLE = [name for name, cfg in CASES.items() if not isinstance(cfg, PrefixConfig)]


def logits(model, b=None):
    with torch.no_grad():
        return model(**(b or batch())).logits


def trained(arch, name):
    model = unipelt.apply(build(arch, hidden_dropout_prob=0.2), PeltConfig(methods=(CASES[name],)))
    randomize(model, std=0.2, only_pelt=True)
    return model


@pytest.mark.parametrize("name", SWITCHABLE)
def test_switched_off_modules_give_the_base_model(arch, name):
    ref = logits(build(arch, hidden_dropout_prob=0.2))
    model = trained(arch, name)
    assert (logits(model) - ref).abs().max() > 1e-6  # randomized: it acts
    zero_deltas(model)  # Δh = 0, λ = 0, (IA)³ = 1: h' = h whatever the composition
    assert (logits(model) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_load_and_eval_determinism(tmp_path, arch, name):
    model = trained(arch, name)
    model.train()
    model(**batch())  # a training pass in between must leave no state behind
    model.eval()
    first = logits(model)
    assert torch.equal(first, logits(model))
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build(arch, hidden_dropout_prob=0.2), tmp_path)
    assert (logits(restored) - first).abs().max() < 1e-6


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_the_added_parameters_and_the_head_get_gradients(name):
    model = trained("bert", name).train()
    model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("pelt_" in n or n.startswith("classifier.") for n in with_grad)
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    assert all(g.proj.weight.grad is not None for g in gates)


@pytest.mark.parametrize("preset", sorted(unipelt.PRESETS))
def test_every_added_module_takes_part_in_the_forward_pass(arch, preset):
    """apply() runs this check itself (participation.py): a transformers release that bypasses a
    hook (T5's stacks kept their stock attention under 5.17) fails here, not silently in training."""
    model = unipelt.apply(build(arch), preset)
    assert idle_modules(model) == []


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_a_bypassed_prefix_is_an_error_naming_the_module_and_the_version(arch):
    model = unipelt.apply(build(arch), "prefix")
    for m in model.modules():  # every stack back to the stock attention, as 5.17 left T5's
        if hasattr(m, "set_attn_implementation"):
            m.set_attn_implementation("sdpa")
    # the attention call refuses, naming the module and the version, before any idle module is seen
    with pytest.raises(
        UniPeltError, match=rf"Attention runs the attention 'sdpa'.*transformers {transformers.__version__}"
    ):
        check_participation(model)


def test_the_table_covers_every_architecture():
    assert set(ARCHS) == set(CLASSIFIERS) >= {"bert", "roberta", "bart", "t5", "llama"}
