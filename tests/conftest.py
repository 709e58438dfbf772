"""Tiny random models built in code: no downloads, fast on 2 CPU cores."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, num_labels=3)
ARCHS = {
    "bert": lambda **kw: BertForSequenceClassification(BertConfig(**{**TINY, **kw})),
    "roberta": lambda **kw: RobertaForSequenceClassification(
        RobertaConfig(**{**TINY, "pad_token_id": 1, **kw})),
}


def build(arch: str = "bert", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return ARCHS[arch](**kw).eval()


def batch(seed: int = 1, b: int = 3, t: int = 9) -> dict:
    """Real tokens start at 5 (clear of RoBERTa's pad id); rows 1 and 2 are padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t - 3:] = 0
    mask[2, t - 5:] = 0
    ids[mask == 0] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def randomize(model, std: float = 0.05, seed: int = 2, only_pelt: bool = False) -> None:
    """Give every trainable parameter (or only the added ones) a random value, as if trained."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad and (not only_pelt or "pelt_" in name):
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param
