"""Trainable parameters on a bert-base-shaped config match the UniPELT paper's Table 4 (SPEC §3)."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import unipelt

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, num_labels=2)
PAPER = {"bitfit": 103_000, "prefix": 184_000, "lora": 295_000, "adapter": 895_000,
         "unipelt-ap": 1_100_000, "unipelt-apl": 1_400_000}


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
    assert c["lora"]["head"] == 768 * 768 + 768 + 768 * 2 + 2  # pooler + classifier
