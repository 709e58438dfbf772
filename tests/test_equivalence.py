"""Correctness of the injected modules against the frozen base model and reference routes."""

import pytest
import torch
from conftest import batch, build, randomize
from transformers import DynamicCache

import unipelt
from unipelt.blocks import Gate
from unipelt.inject import zero_deltas
from unipelt.methods.lora import LoRALinear

NO_PREFIX = [p for p, c in unipelt.PRESETS.items() if not c.of(unipelt.PrefixConfig) and not c.of(unipelt.PromptConfig)]
WITH_PREFIX = [p for p, c in unipelt.PRESETS.items() if c.of(unipelt.PrefixConfig)]


def logits(model, b=None):
    with torch.no_grad():
        return model(**(b or batch())).logits


@pytest.mark.parametrize("preset", NO_PREFIX)
def test_zeroed_modules_leave_the_base_model_unchanged(arch, preset):
    ref = logits(build(arch))
    model = unipelt.apply(build(arch), preset)
    randomize(model, only_pelt=True)  # every module non-trivial, then switch its output off
    zero_deltas(model)
    if preset in ("full", "bitfit"):
        model = unipelt.apply(build(arch), preset)
    assert (logits(model) - ref).abs().max() < 1e-5


def _method(label: str) -> str:
    """The method part of a gate label: "decoder.cross.lora_q" -> "lora_q"."""
    return label.rpartition(".")[2]


@torch.no_grad()
def _close_gates(model, names):
    for name, m in model.named_modules():
        if isinstance(m, Gate) and _method(m.label[1]) in names:
            m.proj.weight.zero_()
            m.proj.bias.fill_(-1e4)  # sigmoid -> exactly 0


def test_closed_gates_switch_adapter_and_lora_off(arch):
    gated = unipelt.apply(build(arch), "unipelt-apl")
    randomize(gated)
    _close_gates(gated, {"adapter", "lora_q", "lora_v"})
    zeroed = unipelt.apply(build(arch), "unipelt-apl")
    zeroed.load_state_dict(gated.state_dict())
    zero_deltas(zeroed)
    assert (logits(gated) - logits(zeroed)).abs().max() < 1e-6
    values = [(_method(k), v) for layer in unipelt.gate_values(gated, batch()).values() for k, v in layer.items()]
    assert {k for k, _ in values} == {"adapter", "lora_q", "lora_v", "prefix"}
    assert all(v == 0.0 for k, v in values if k != "prefix") and all(v > 0 for k, v in values if k == "prefix")


def test_prefix_matches_the_past_key_values_route():
    """Our attention function vs transformers' own cache path, with explicit position ids."""
    model = unipelt.apply(build("bert"), "prefix")
    randomize(model)
    b = batch()
    ours = logits(model, b)
    enc = model.pelt_prefix
    table = enc.table()  # (L, 2, l, d)
    n, length = b["input_ids"].shape[0], table.shape[2]
    cache = DynamicCache()
    for i in range(table.shape[0]):
        k, v = (t.view(length, 4, -1).transpose(0, 1).expand(n, -1, -1, -1) for t in table[i])
        cache.update(k.contiguous(), v.contiguous(), i)
    plain = build("bert")
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "pelt_" not in k})
    mask = torch.cat([torch.ones(n, length, dtype=torch.long), b["attention_mask"]], dim=1)
    positions = torch.arange(b["input_ids"].shape[1]).expand(n, -1)
    with torch.no_grad():
        reference = plain(
            input_ids=b["input_ids"], attention_mask=mask, past_key_values=cache, position_ids=positions
        ).logits
    assert (ours - reference).abs().max() < 1e-5


@pytest.mark.parametrize("preset", WITH_PREFIX + ["prompt"])
def test_padding_does_not_leak_into_real_tokens(arch, preset):
    """The custom attention needs its own mask function, else padding is silently attended."""
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    b = batch()
    n_real = int(b["attention_mask"][2].sum())
    alone = {k: v[2:3, :n_real] for k, v in b.items()}
    assert (logits(model, b)[2] - logits(model, alone)[0]).abs().max() < 1e-5


def test_sdpa_and_eager_agree_with_prefix(arch):
    """Eager uses each model's own eager function (GQA's repeat_kv, T5's position bias)."""
    sdpa = unipelt.apply(build(arch, attn_implementation="sdpa"), "unipelt-apl")
    eager = unipelt.apply(build(arch, attn_implementation="eager"), "unipelt-apl")
    randomize(sdpa)
    eager.load_state_dict(sdpa.state_dict())
    assert eager.config._attn_implementation == "unipelt_eager"
    assert (logits(sdpa) - logits(eager)).abs().max() < 1e-5


@pytest.mark.parametrize("preset", WITH_PREFIX)
def test_folded_prefix_equals_the_reparameterised_graph(arch, preset):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    before = logits(model)
    unipelt.fold(model)
    assert model.pelt_prefix.nets is None
    assert (logits(model) - before).abs().max() < 1e-6
    assert unipelt.count_parameters(model)["total"] == unipelt.count_parameters(model)["inference"]


def test_merged_lora_equals_unmerged_and_removes_the_wrapper(arch):
    model = unipelt.apply(build(arch), "lora")
    randomize(model, std=0.2)
    before = logits(model)
    unipelt.merge(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (logits(model) - before).abs().max() < 1e-5


def test_gated_lora_refuses_to_merge():
    with pytest.raises(unipelt.UniPeltError, match="gated LoRA"):
        unipelt.merge(unipelt.apply(build(), "unipelt-apl"))


def test_masked_gate_mean_ignores_padding_and_official_mean_does_not():
    b = batch()
    n_real = int(b["attention_mask"][2].sum())
    alone = {k: v[2:3, :n_real] for k, v in b.items()}
    padded = {k: v[2:3] for k, v in b.items()}
    for pooling, same in (("masked_mean", True), ("mean", False)):
        cfg = unipelt.PeltConfig(methods=unipelt.PRESETS["unipelt-apl"].methods, gate_pooling=pooling)
        model = unipelt.apply(build(), cfg)
        randomize(model, std=0.5)
        a, p = unipelt.gate_values(model, alone), unipelt.gate_values(model, padded)
        diff = max(abs(a[i][k] - p[i][k]) for i in a for k in a[i])
        assert (diff < 1e-6) == same, (pooling, diff)


def test_gate_values_cover_every_layer_and_submodule():
    model = unipelt.apply(build(), "unipelt-apl")
    values = unipelt.gate_values(model, batch())
    assert sorted(values) == [0, 1]
    assert sorted(values[0]) == ["adapter", "lora_q", "lora_v", "prefix"]
    assert all(0.3 < v < 0.7 for layer in values.values() for v in layer.values())  # N(0, .02) init
    assert unipelt.gate_values(unipelt.apply(build(), "lora"), batch()) == {}
