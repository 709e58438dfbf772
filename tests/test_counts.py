"""Trainable parameters on a bert-base-shaped config match the UniPELT paper's Table 4 (SPEC §3)."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import unipelt

BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=30522,
    num_labels=2,
)
PAPER = {
    "bitfit": 103_000,
    "prefix": 184_000,
    "lora": 295_000,
    "adapter": 895_000,
    "unipelt-ap": 1_100_000,
    "unipelt-apl": 1_400_000,
}


@pytest.fixture(scope="module")
def bert_base_counts():
    counts = {}
    for preset in PAPER:
        with torch.device("meta"):  # shapes only: no 110M random weights to fill
            model = BertForSequenceClassification(BertConfig(**BERT_BASE))
        counts[preset] = unipelt.count_parameters(unipelt.apply(model, preset))
    return counts


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_inference_parameters_match_the_paper_within_one_percent(bert_base_counts, preset):
    assert abs(bert_base_counts[preset]["inference"] / PAPER[preset] - 1) < 0.01


def test_exact_arithmetic(bert_base_counts):
    c = bert_base_counts
    assert c["prefix"]["inference"] == 2 * 12 * 10 * 768
    assert c["lora"]["total"] == 12 * 2 * (2 * 768 * 8)
    assert c["adapter"]["total"] == 12 * (768 * 48 + 48 + 48 * 768 + 768)
    assert c["unipelt-ap"]["gate"] == 12 * 2 * 769  # adapter + prefix gate per layer
    assert c["unipelt-apl"]["gate"] == 12 * 4 * 769  # + one gate each for LoRA q and v
    assert c["prefix"]["total"] > c["prefix"]["inference"]  # the reparameterisation trains more
    assert c["lora"]["head"] == 768 * 2 + 2  # the classifier: the pooler stays frozen (SPEC §3)
    assert c["lora"]["trainable"] == c["lora"]["total"] + c["lora"]["head"]


# He et al. 2022 (§4.4) on a bart-large-shaped model: 12 + 12 layers, 36 attention sublayers
# (encoder self, decoder self, decoder cross), 24 FFN sublayers.
D, ATTENTION, FFN_SUBLAYERS = 1024, 36, 24
BART_LARGE = dict(
    d_model=D,
    encoder_layers=12,
    decoder_layers=12,
    encoder_attention_heads=16,
    decoder_attention_heads=16,
    encoder_ffn_dim=4 * D,
    decoder_ffn_dim=4 * D,
    vocab_size=50265,
)


@pytest.fixture(scope="module")
def bart_large_counts():
    from transformers import BartConfig, BartForConditionalGeneration

    counts = {}
    for preset in ("mam", "pa-attn-ffn", "prefix-lora-ffn"):
        with torch.device("meta"):  # shapes only, and the added modules are built on meta too
            model = unipelt.apply(BartForConditionalGeneration(BartConfig(**BART_LARGE)), preset)
        counts[preset] = unipelt.count_parameters(model)
        counts[preset]["base"] = sum(p.numel() for n, p in model.named_parameters() if "pelt_" not in n)
    return counts


def test_mam_and_its_variants_match_he_et_al_formulas(bart_large_counts):
    c = bart_large_counts
    prefix = ATTENTION * 2 * 30 * D  # 2·l·d per attention sublayer, after folding
    pa_ffn = FFN_SUBLAYERS * (2 * 512 * D + 512 + D)  # 2·r·d + biases per FFN sublayer
    assert (c["mam"]["inference"], c["mam"]["adapter"]) == (prefix + pa_ffn, pa_ffn)
    assert c["pa-attn-ffn"]["adapter"] == ATTENTION * (2 * 30 * D + 30 + D) + pa_ffn
    assert c["prefix-lora-ffn"]["lora"] == FFN_SUBLAYERS * 10 * 102 * D  # r·(d + 4d) for fc1 and for fc2
    assert c["prefix-lora-ffn"]["inference"] == prefix + FFN_SUBLAYERS * 10 * 102 * D
    assert round(100 * c["mam"]["inference"] / c["mam"]["base"], 1) == 6.7  # the paper's 6.7%
    assert all(v["head"] == 0 for v in c.values())  # the tied LM head stays frozen
