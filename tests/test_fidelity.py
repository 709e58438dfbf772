"""Each method against its paper's equation, computed by hand on a plain copy of the base model.

The reference never runs unipelt's wrappers: forward hooks on the plain model's own modules add
the paper's Δh, with the trained module's weights read out as tensors. Tiny BERT (post-norm,
where Pfeiffer's and Houlsby's placements differ), eval mode, so dropout is the identity.
"""

import pytest
import torch
from conftest import CONFIGS, NO_BIASES, batch, build, randomize
from transformers import T5Config, T5EncoderModel

import unipelt
from unipelt import AdapterConfig, LoRAConfig, PeltConfig, PrefixConfig, PromptConfig, UniPeltError
from unipelt.inject import zero_deltas
from unipelt.methods.adapter import Adapter
from unipelt.methods.lora import LoRALinear


def plain_copy(model, arch="bert", **kw):
    """The base model alone, with the PELT model's (frozen) base weights."""
    plain = build(arch, **kw)
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "pelt_" not in k})
    return plain


def logits(model, b):
    with torch.no_grad():
        return model(**b).logits


def bottleneck(adapter, z):
    """A(z) = W_up relu(W_down z + b_down) + b_up."""
    blk = adapter.block
    return torch.relu(z @ blk.down[0] + blk.down_bias[0]) @ blk.up[0] + blk.up_bias


def adapters(model) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, Adapter)}


def trained(preset_or_config, arch="bert", std=0.2, **kw):
    model = unipelt.apply(build(arch, **kw), preset_or_config)
    randomize(model, std=std)
    return model


def capture_input(module, store: dict, key: str):
    module.register_forward_pre_hook(
        lambda m, args, kwargs: store.__setitem__(key, args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )


def assert_same(model, plain, b=None):
    b = b or batch()
    assert (logits(model, b) - logits(plain, b)).abs().max() < 1e-5


# 1. The task head
def test_bert_pooler_is_frozen_and_modules_to_save_trains_it(tmp_path):
    model = unipelt.apply(build(), "lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "pelt_" in n} | {"classifier.weight", "classifier.bias"}
    counts = unipelt.count_parameters(model)
    assert counts["head"] == 32 * 3 + 3 and "modules_to_save" not in counts

    cfg = PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler",))
    model = unipelt.apply(build(), cfg)
    assert model.bert.pooler.dense.weight.requires_grad
    counts = unipelt.count_parameters(model)
    assert counts["modules_to_save"] == 32 * 32 + 32
    assert counts["trainable"] == counts["lora"] + counts["modules_to_save"] + counts["head"]
    randomize(model)
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build(), tmp_path)
    assert torch.equal(restored.bert.pooler.dense.weight, model.bert.pooler.dense.weight)
    with pytest.raises(UniPeltError, match="modules_to_save names 'pooler2'.*embeddings, encoder, pooler"):
        unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler2",)))


@pytest.mark.parametrize(
    "preset, saved",
    [
        ("unipelt-apl", "encoder.layer.1.output"),
        ("unipelt-apl", "encoder.layer.0.attention.self.query"),
        ("prefix", "encoder.layer.0.attention.self.query"),
    ],
)
def test_modules_to_save_inside_a_wrapped_layer_train_and_save(tmp_path, preset, saved):
    """Paths are the base model's as loaded: below a wrapper (a gated layer's, the prefix's) the
    parameter names carry ``.base_layer``, and such a module trained nothing, silently."""
    cfg = PeltConfig(methods=unipelt.get_preset(preset).methods, modules_to_save=(saved,))
    model = unipelt.apply(build(), cfg)
    module = build().bert.get_submodule(saved)
    numel = sum(p.numel() for p in module.parameters())
    assert unipelt.count_parameters(model)["modules_to_save"] == numel
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    opt.step()
    model.eval()
    moved = {n for n, p in model.named_parameters() if "pelt_" not in n and not n.startswith("classifier")}
    moved = {n for n in moved if not torch.equal(before[n], dict(model.named_parameters())[n])}
    assert moved and all(unipelt.wrappers.plain_path(n).startswith(f"bert.{saved}.") for n in moved)
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build(), tmp_path).eval()
    assert torch.equal(logits(restored, batch()), logits(model, batch()))


# 2. NoGate is UniPELT (AP) without gates; the APL variant keeps LoRA at alpha/r
def test_nogate_presets_are_the_papers_ablation():
    ap = unipelt.get_preset("unipelt-ap-nogate")
    assert unipelt.get_preset("unipelt-nogate") is ap and "unipelt-nogate" not in unipelt.PRESETS
    assert ap.methods == (unipelt.PRESETS["adapter"].methods[0], unipelt.PRESETS["prefix"].methods[0])
    apl = unipelt.get_preset("unipelt-apl-nogate")
    assert not apl.gated and apl.methods[:2] == ap.methods
    model = trained("unipelt-apl-nogate")
    lora = next(m for m in model.modules() if isinstance(m, LoRALinear))
    x = torch.randn(2, 5, 32)
    a, b = lora.pelt_lora.down[0], lora.pelt_lora.up[0]
    expected = x @ lora.base_layer.weight.T + lora.base_layer.bias + (2.0 / 8) * (x @ a @ b)  # alpha/r
    assert (lora(x) - expected).abs().max() < 1e-6


# 3. Houlsby: LN(x + h + A(h)) at both sublayers; Pfeiffer: LN(s + A(LN(s))) at the FFN
def test_houlsby_adapter_reads_h_before_the_residual_and_layer_norm():
    model = trained("adapter-houlsby")
    plain, found = plain_copy(model), adapters(model)
    for i, layer in enumerate(plain.bert.encoder.layer):
        for sub, dense in (("attention.output", layer.attention.output.dense), ("output", layer.output.dense)):
            a = found[f"bert.encoder.layer.{i}.{sub}.LayerNorm.pelt_adapter_houlsby.0"]
            dense.register_forward_hook(lambda m, inp, h, a=a: h + bottleneck(a, h))  # then x + ·, LN
    assert_same(model, plain)


def test_pfeiffer_adapter_reads_the_normalised_sum():
    model = trained("adapter")
    plain, found = plain_copy(model), adapters(model)
    for i, layer in enumerate(plain.bert.encoder.layer):
        a = found[f"bert.encoder.layer.{i}.output.LayerNorm.pelt_adapter_sequential.0"]
        ln = layer.output.LayerNorm
        ln.register_forward_pre_hook(
            lambda m, args, a=a, ln=ln: (
                args[0]
                + bottleneck(
                    a, torch.nn.functional.layer_norm(args[0], ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                ),
            )
        )
    assert_same(model, plain)


def test_houlsby_and_pfeiffer_differ_on_a_post_norm_model():
    cfg = lambda placement: PeltConfig(methods=(AdapterConfig(target="attn", placement=placement),))  # noqa: E731
    a, b = trained(cfg("houlsby")), unipelt.apply(build(), cfg("pfeiffer"))
    weights = {k.replace(".base_layer", "").replace("houlsby", "sequential"): v for k, v in a.state_dict().items()}
    b.load_state_dict({k: weights[k.replace(".base_layer", "")] for k in b.state_dict()})
    assert (logits(a, batch()) - logits(b, batch())).abs().max() > 1e-3


# 4. Multi-head PA: head i's bottleneck reads head i's slice of x W_q, added before W_o
def test_multi_head_adapter_reads_each_heads_query_projection():
    model = trained("mh-parallel-adapter")
    plain, found, seen = plain_copy(model), adapters(model), {}
    for i, layer in enumerate(plain.bert.encoder.layer):
        a = found[f"bert.encoder.layer.{i}.attention.output.dense.pelt_adapter_head"]
        capture_input(layer.attention.self, seen, i)
        query = layer.attention.self.query

        def add_heads(m, args, a=a, i=i, query=query):
            q = query(seen[i]).chunk(4, dim=-1)  # per head: x W_q^(h), (B, T, dh)
            blk = a.block
            delta = torch.cat([torch.relu(q[h] @ blk.down[h] + blk.down_bias[h]) @ blk.up[h] for h in range(4)], -1)
            return (args[0] + delta + blk.up_bias,)

        layer.attention.output.dense.register_forward_pre_hook(add_heads)
    assert_same(model, plain)
    counts = unipelt.count_parameters(model)  # the same budget as a d/Nh slice: 2·r·d + Nh·r + d
    assert counts["adapter"] == 2 * (2 * 48 * 32 + 4 * 48 + 32)


# 5. Composition: interpolation (1 - λ)h + λΔh, prefix as interpolation, and prefix "-gating"
def test_interpolating_parallel_adapter():
    model = trained(AdapterConfig(target="ffn", insertion="parallel", r=4, composition="interpolate"), std=0.5)
    plain, found, seen = plain_copy(model), adapters(model), {}
    for i, layer in enumerate(plain.bert.encoder.layer):
        a = found[f"bert.encoder.layer.{i}.output.LayerNorm.pelt_adapter_parallel.0"]
        capture_input(layer.intermediate, seen, i)

        def interpolate(m, inp, h, a=a, i=i):
            lam = torch.sigmoid(seen[i] @ a.pelt_gate.proj.weight.T + a.pelt_gate.proj.bias)  # (B, T, 1)
            return (1 - lam) * h + lam * bottleneck(a, seen[i])

        layer.output.dense.register_forward_hook(interpolate)
    assert_same(model, plain)


def _heads(t):  # (B, T, d) -> (B, H, T, dh)
    return t.unflatten(-1, (4, 8)).transpose(1, 2)


def _prefix_hooks(model, plain, b, combine):
    """Replace each plain self-attention's output by ``combine(q, k, v, pk, pv, key_mask)``."""
    table, seen = model.pelt_prefix.table().detach(), {}
    key_mask = (1.0 - b["attention_mask"][:, None, None, :].float()) * -1e9  # (B, 1, 1, T)
    for i, layer in enumerate(plain.bert.encoder.layer):
        att = layer.attention.self
        capture_input(att, seen, i)

        def replace(m, inp, out, i=i, att=att):
            x = seen[i]
            q, k, v = (_heads(f(x)) for f in (att.query, att.key, att.value))
            pk, pv = (_heads(t.expand(x.shape[0], -1, -1)) for t in table[i])
            h = combine(q * 8**-0.5, k, v, pk, pv, key_mask)  # (B, H, T, dh)
            return (h.transpose(1, 2).flatten(2), *out[1:])

        att.register_forward_hook(replace)


def test_prefix_tuning_is_he_et_al_gated_addition():
    """He et al. Eq. 5: (1 - λ) Attn(q, K, V) + λ Attn(q, P_k, P_v), λ the prefix's softmax mass."""
    model, b = trained("prefix", std=0.5), batch()
    plain = plain_copy(model)

    def eq5(q, k, v, pk, pv, key_mask):
        tok, pre = q @ k.transpose(-1, -2) + key_mask, q @ pk.transpose(-1, -2)
        lam = torch.sigmoid(pre.logsumexp(-1, keepdim=True) - tok.logsumexp(-1, keepdim=True))
        return (1 - lam) * (tok.softmax(-1) @ v) + lam * (pre.softmax(-1) @ pv)

    _prefix_hooks(model, plain, b, eq5)
    assert_same(model, plain, b)


def test_prefix_without_gating_adds_attention_over_the_prefix_alone():
    model, b = trained("prefix-nogating", std=0.5), batch()
    plain = plain_copy(model)

    def added(q, k, v, pk, pv, key_mask):
        return (q @ k.transpose(-1, -2) + key_mask).softmax(-1) @ v + (q @ pk.transpose(-1, -2)).softmax(-1) @ pv

    _prefix_hooks(model, plain, b, added)
    assert_same(model, plain, b)


# 6. MAM as He et al. ran it: prefix MLP width 800, one network per kind of attention
def test_mam_has_one_prefix_network_per_kind_of_attention():
    mam = unipelt.PRESETS["mam"].of(PrefixConfig)[0]
    assert (mam.length, mam.mid_dim, mam.networks) == (30, 800, "per_attention")
    model = unipelt.apply(build("bart"), "mam")
    nets = model.pelt_prefix.nets
    assert len(nets) == 3 and all(n.mlp_in.out_features == 800 for n in nets)
    l, d = 30, 32  # 2 encoder self-, 2 decoder self-, 2 cross-attention sublayers: 2 slots per network
    net = l * d + (d * 800 + 800) + (800 * 2 * 2 * d + 2 * 2 * d)
    assert unipelt.count_parameters(model)["prefix"] == 3 * net
    shared = unipelt.apply(build("bart"), PeltConfig(methods=(PrefixConfig(length=30, mid_dim=800),)))
    assert len(shared.pelt_prefix.nets) == 1
    randomize(model)
    before = logits(model, batch())
    unipelt.fold(model)
    assert (logits(model, batch()) - before).abs().max() < 1e-6


# 7. Prompt tuning prepends; BERT's family keeps [CLS] first
def test_prompt_goes_in_front_on_t5():
    torch.manual_seed(0)
    model = unipelt.apply(T5EncoderModel(T5Config(**{**_T5, "num_labels": 2})).eval(), PromptConfig(length=3))
    randomize(model)
    plain = T5EncoderModel(T5Config(**_T5)).eval()
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "pelt_" not in k})
    b = batch()
    prompt = model.encoder.embed_tokens.pelt_prompt.expand(3, -1, -1)
    embeds = torch.cat([prompt, plain.encoder.embed_tokens(b["input_ids"])], dim=1)
    mask = torch.cat([torch.ones(3, 3, dtype=torch.long), b["attention_mask"]], dim=1)
    with torch.no_grad():
        ours = model(**b).last_hidden_state
        ref = plain(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert (ours - ref).abs().max() < 1e-5


def test_bert_prompt_follows_cls():
    model = trained("prompt")
    plain, b = plain_copy(model), batch()
    prompt = model.bert.embeddings.pelt_prompt
    plain.bert.embeddings.register_forward_hook(
        lambda m, inp, e: torch.cat([e[:, :1], prompt.expand(e.shape[0], -1, -1), e[:, 1:]], dim=1)
    )
    ones = torch.ones(3, prompt.shape[0], dtype=torch.long)
    mask = b["attention_mask"]
    with torch.no_grad():
        ref = plain(input_ids=b["input_ids"], attention_mask=torch.cat([mask[:, :1], ones, mask[:, 1:]], 1)).logits
    assert (logits(model, b) - ref).abs().max() < 1e-5


# 8. Bugs: modules follow the model's mode; T5's encoder alone
_T5 = {
    k: v
    for k, v in CONFIGS["t5"]().to_dict().items()
    if k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "pad_token_id", "eos_token_id")
}


def test_apply_to_an_eval_model_gives_deterministic_outputs(tmp_path):
    cfg = PeltConfig(methods=(AdapterConfig(dropout=0.5), LoRAConfig(dropout=0.5), PrefixConfig(length=3)))
    model = unipelt.apply(build(hidden_dropout_prob=0.3), cfg)  # build() returns an eval model
    assert not any(m.training for m in model.modules())
    b = batch()
    assert torch.equal(logits(model, b), logits(model, b))
    plain = build(hidden_dropout_prob=0.3)
    plain.save_pretrained(tmp_path / "base")
    unipelt.save(model, tmp_path / "ckpt")
    from transformers import AutoModelForSequenceClassification

    loaded = unipelt.load(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "ckpt")
    assert torch.equal(logits(loaded, b), logits(loaded, b))
    assert unipelt.apply(build().train(), "lora").classifier.training  # a training model stays training


@pytest.mark.parametrize("preset", sorted(set(unipelt.PRESETS) - {"bitfit"}))  # T5 has no biases
def test_t5_encoder_model_takes_every_preset(preset):
    torch.manual_seed(0)
    base = T5EncoderModel(T5Config(**_T5)).eval()
    with torch.no_grad():
        ref = base(**batch()).last_hidden_state
    model = unipelt.apply(base, preset)
    randomize(model, only_pelt=True)
    with torch.no_grad():
        out = model(**batch()).last_hidden_state
    assert out.shape[-1] == 32 and torch.isfinite(out).all()
    if not unipelt.PRESETS[preset].of(PrefixConfig) and preset != "prompt":
        zero_deltas(model)
        with torch.no_grad():
            assert (model(**batch()).last_hidden_state - ref).abs().max() < 1e-5


def test_a_pooler_the_summary_head_replaces_is_not_trained_as_if_it_were_read():
    """With head 'mean' BERT's pooler output is replaced: a pooler in modules_to_save would get no
    gradient and still be counted, saved and served as trained."""
    for head in ("mean", "last"):
        cfg = PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler",), head=head)
        model = build()
        with pytest.raises(UniPeltError, match=f"modules_to_save names \\['pooler'\\], which the '{head}' head"):
            unipelt.apply(model, cfg)
        assert getattr(model, "pelt_config", None) is None
    unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler",), head="pooler"))


def test_a_checkpoint_saved_before_that_refusal_still_loads(tmp_path):
    """load() applies the saved config as it was saved: the refusal is for new configs only."""
    from unipelt.inject import applied

    cfg = PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler",), head="mean")
    old = applied(build(), cfg, new=False)
    randomize(old, std=0.1)
    unipelt.save(old, tmp_path / "old")
    loaded = unipelt.load(build(), tmp_path / "old")
    assert loaded.pelt_config == old.pelt_config


@pytest.mark.parametrize(
    "method",
    [
        LoRAConfig(attention=("cross",)),
        unipelt.DoRAConfig(attention=("cross",)),
        unipelt.IA3Config(targets=("k",), attention=("cross",)),
        PrefixConfig(attention=("cross",)),
    ],
    ids=["lora", "dora", "ia3", "prefix"],
)
def test_a_config_that_matches_no_module_is_refused(method):
    """BERT has no cross-attention: such a config would train the head alone, silently."""
    model = build()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(UniPeltError, match="matches no"):
        unipelt.apply(model, PeltConfig(methods=(method,)))
    assert getattr(model, "pelt_config", None) is None
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    unipelt.apply(build("t5"), PeltConfig(methods=(method,)))  # T5's decoder has one


@pytest.mark.parametrize("arch", NO_BIASES)
def test_bitfit_on_a_model_without_biases_is_refused(arch):
    """Llama, T5 and the others have no bias vectors: BitFit trained the head alone, silently
    (and a causal LM nothing at all: an optimizer over no parameters)."""
    model = build(arch)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(UniPeltError, match="selects no weight .* no bias vectors"):
        unipelt.apply(model, "bitfit")
    assert getattr(model, "pelt_config", None) is None
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_bitfit_trains_the_biases_a_model_has():
    """Qwen2 has biases on q, k and v alone: those train, and apply accepts it."""
    model = unipelt.apply(build("qwen2"), "bitfit")
    base = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("score")]
    assert base and all(n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for n in base)


def test_a_checkpoint_saved_before_the_no_match_refusal_still_loads(tmp_path):
    from unipelt.inject import applied

    cfg = PeltConfig(methods=(LoRAConfig(attention=("cross",)),), head="model")
    unipelt.save(applied(build(), cfg, new=False), tmp_path / "old")
    assert unipelt.load(build(), tmp_path / "old").pelt_config == cfg
