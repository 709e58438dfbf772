"""Tokenize a split once per run; padding happens per batch (``DataCollatorWithPadding``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch.utils.data import Dataset


class Encoded(Dataset):
    """Tokenized examples as dicts of lists (``input_ids``, ``attention_mask``, …, ``labels``)."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def encode(frame: pd.DataFrame, tokenizer, max_length: int, *, by_length: bool = False) -> Encoded:
    """``by_length`` sorts examples longest first: evaluation batches then hold similar lengths
    and pad little, and the first batch shows the peak memory at once. Metrics ignore order."""
    pairs = frame["b"].notna().all()
    enc = tokenizer(list(frame["a"]), list(frame["b"]) if pairs else None, truncation=True, max_length=max_length)
    labels = frame["label"].tolist()
    features = [{**{k: enc[k][i] for k in enc.keys()}, "labels": labels[i]} for i in range(len(frame))]
    if by_length:
        order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
        features = [features[i] for i in order]
    return Encoded(features)
