from dataclasses import FrozenInstanceError, replace

import pytest

import unipelt
from unipelt import AdapterConfig, LoRAConfig, PeltConfig, PrefixConfig, UniPeltError


def test_presets_have_learning_rates_and_round_trip_through_dicts():
    for name, cfg in unipelt.PRESETS.items():
        assert unipelt.DEFAULT_LEARNING_RATES[name] > 0
        assert PeltConfig.from_dict(cfg.to_dict()) == cfg


def test_unipelt_is_the_union_of_single_methods_with_gates_on():
    apl = unipelt.PRESETS["unipelt-apl"]
    assert [type(m) for m in apl.methods] == [AdapterConfig, PrefixConfig, LoRAConfig]
    assert all(m.composition == "gated" for m in apl.methods)
    assert replace(apl.methods[0], composition="add") == unipelt.PRESETS["adapter"].methods[0]
    mam = unipelt.PRESETS["mam"]
    assert mam.of(PrefixConfig)[0].length == 30
    pa = mam.of(AdapterConfig)[0]
    assert (pa.insertion, pa.r, pa.composition, pa.scale) == ("parallel", 512, "scaled", 4.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AdapterConfig(target="head", insertion="sequential"), "only insertion='parallel'"),
        (lambda: AdapterConfig(target="mlp"), "not one of"),
        (lambda: AdapterConfig(r=0), "positive integer"),
        (lambda: AdapterConfig(scale=4.0), "composition='scaled'"),
        (lambda: LoRAConfig(targets=()), "non-empty"),
        (lambda: LoRAConfig(targets=("q", "q")), "duplicates"),
        (lambda: LoRAConfig(targets=("query",)), "not one of"),
        (lambda: PrefixConfig(length=-1), "positive integer"),
        (lambda: PrefixConfig(attention=("encoder",)), "not one of"),
        (lambda: PrefixConfig(attention=()), "non-empty"),
        (lambda: AdapterConfig(target="ffn", attention=("self",)), "only applies to attention"),
        (lambda: LoRAConfig(targets=("ffn_in",), attention=("cross",)), "only applies to attention"),
        (lambda: PeltConfig(methods=()), "empty"),
        (lambda: PeltConfig(methods=(unipelt.FullFineTuning(), LoRAConfig())), "cannot be combined"),
        (lambda: PeltConfig(methods=(PrefixConfig(), PrefixConfig())), "more than one PrefixConfig"),
        (lambda: PeltConfig(methods=(AdapterConfig(), AdapterConfig(r=8))), "share a (target, insertion)"),
        (lambda: PeltConfig(methods=(LoRAConfig(), LoRAConfig(targets=("v", "k")))), "same projection"),
        (lambda: PeltConfig(methods=(LoRAConfig(attention=("cross",)), LoRAConfig(targets=("q",)))), "same projection"),
        (lambda: PeltConfig(methods=(LoRAConfig(),), gate_pooling="max"), "not one of"),
        (lambda: PeltConfig.from_dict({"methods": [{"method": "lora", "rank": 8}]}), "no field"),
        (lambda: PeltConfig.from_dict({"methods": [{"method": "ia4"}]}), "unknown method"),
        (lambda: unipelt.get_preset("unipelt-xyz"), "known presets: adapter"),
    ],
)
def test_invalid_configs_are_rejected_at_construction(make, message):
    with pytest.raises(UniPeltError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_configs_are_frozen():
    with pytest.raises(FrozenInstanceError):
        unipelt.PRESETS["lora"].methods[0].r = 16


def test_lora_on_self_and_cross_attention_can_come_from_two_configs():
    cfg = PeltConfig(methods=(LoRAConfig(r=4, attention=("self",)), LoRAConfig(r=16, attention=("cross",))))
    assert PeltConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["methods"][0]["attention"] == ["self"]
