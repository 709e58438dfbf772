"""What the library says where a method cannot run on an architecture (conftest.NOT_SUPPORTED),
and the invariants those architectures keep without it."""

import copy

import pytest
import torch
from conftest import NOT_SUPPORTED, batch, build
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

import unipelt
from unipelt import AdapterConfig, LoRAConfig, PeltConfig, UniPeltError

PRESET_CASES = [(arch, name) for arch, names in NOT_SUPPORTED.items() for name in names if name in unipelt.PRESETS]


@pytest.mark.parametrize("refused", PRESET_CASES, ids="-".join)  # not "arch"/"preset": conftest would skip it
def test_an_unsupported_method_is_refused_at_apply_with_its_reason(refused):
    arch, preset = refused
    with pytest.raises(UniPeltError, match="not available on|would train nothing"):
        unipelt.apply(build(arch), preset)


GATED = PeltConfig(
    methods=(
        AdapterConfig(composition="gated", r=4),
        LoRAConfig(r=2, composition="gated"),
        AdapterConfig(target="attn", insertion="parallel", r=4, composition="gated"),
    )
)


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra"])
def test_an_encoder_run_as_a_decoder_is_refused(arch):
    """BertLMHeadModel with is_decoder=True: the modules are placed as in an encoder, whose gates
    pool over the whole sequence, so later tokens changed earlier ones and cached generation
    differed from uncached."""
    from conftest import TINY
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, **{**TINY, "is_decoder": True})
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UniPeltError, match="is_decoder=True"):
        unipelt.apply(model, "unipelt-apl")
    assert getattr(model, "pelt_config", None) is None


def test_deberta_gates_read_its_product_mask_and_ignore_padding():
    """DeBERTa hands layers m_i·m_j: a padded last query row sees nothing, yet its gates must
    average over the real tokens, as on every other encoder."""
    model = unipelt.apply(build("deberta-v2"), GATED)
    b = batch()
    n_real = int(b["attention_mask"][2].sum())
    alone = {k: v[2:3, :n_real] for k, v in b.items()}
    with torch.no_grad():
        assert (model(**b).logits[2] - model(**alone).logits[0]).abs().max() < 1e-5
    padded, real = unipelt.gate_values(model, {k: v[2:3] for k, v in b.items()}), unipelt.gate_values(model, alone)
    assert max(abs(padded[i][k] - real[i][k]) for i in real for k in real[i]) < 1e-6


def test_deberta_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = unipelt.apply(build("deberta-v2"), GATED)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(0)
        model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "pelt_" in n and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_deberta_gates_on_its_relative_positions_take_every_position_even_in_one_row_of_that_length():
    """With share_att_key DeBERTa sends its 2·buckets relative-position embeddings through q and k,
    as one row. A padded batch of one row of 2·buckets tokens has their very shape: the gate used
    to pool them over that row's padding. It is the mean over every position (the formula here)."""
    model = unipelt.apply(
        build("deberta-v2", share_att_key=True, position_buckets=8),
        PeltConfig(methods=(LoRAConfig(r=2, composition="gated", targets=("q", "k")),)),
    )
    b = batch(b=3, t=16)  # 16 = 2 * buckets
    one = {k: v[1:2] for k, v in b.items()}  # three padded positions
    assert one["attention_mask"].sum() == 13
    layer = model.deberta.encoder.layer[0]
    gate = layer.base_layer.attention.self.query_proj.pelt_gate
    seen = []
    handle = gate.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        model(**one)
        handle.remove()
        rel = model.deberta.encoder.get_rel_embedding()[:16]  # what disentangled_attention_bias projects
        want = torch.sigmoid(gate.proj(rel)).mean()
    tokens, positions = seen[0], seen[1]
    assert tokens.shape == positions.shape == (1, 1, 1)
    assert abs(positions.item() - want.item()) < 1e-6


def test_a_copy_of_a_marked_deberta_attention_runs_its_position_pass_on_its_own_weights():
    """nn.DataParallel's replicas copy a module's __dict__: a marker kept there, holding the module,
    sent every replica's positions through the first device's q and k."""
    model = unipelt.apply(build("deberta-v2", share_att_key=True), GATED)
    attention = model.deberta.encoder.layer[0].base_layer.attention.self
    while hasattr(attention, "base_layer"):
        attention = attention.base_layer
    for copied in (attention._replicate_for_data_parallel(), copy.copy(attention), copy.deepcopy(attention)):
        assert copied.disentangled_attention_bias.__self__ is copied
    unipelt.unload(model)
    assert type(attention).disentangled_attention_bias is DisentangledSelfAttention.disentangled_attention_bias
