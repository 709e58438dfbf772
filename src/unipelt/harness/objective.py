"""What a run optimises and how it is scored, as one interface for both objectives:

- ``encode(frame, train=...)``: a split's rows as token-id features (lists, padded per batch);
  evaluation splits are sorted longest first, so their batches hold similar lengths and pad
  little, and the first batch shows the peak memory at once (metrics ignore order);
- ``collate(features, train=...)``: one padded batch, with transformers' collators;
- ``score(trainer, features)``: the task metric of the model on them.

``Classify`` puts a classification (or regression) head on the model; ``Generate``
(``generative.py``) casts the task as label-word generation for a causal LM.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd
from transformers import DataCollatorWithPadding, Trainer

from .metrics import score
from .tasks import Task


class Objective(Protocol):
    def encode(self, frame: pd.DataFrame, *, train: bool) -> list[dict]: ...

    def collate(self, features: list[dict], *, train: bool = True) -> dict: ...

    def score(self, trainer: Trainer, features: list[dict]) -> float: ...


def longest_first(features: list[dict]) -> list[dict]:
    return sorted(features, key=lambda f: -len(f["input_ids"]))  # stable: ties keep the data order


class Classify:
    """The model's head scores the task's labels (one output for regression); padding by
    ``DataCollatorWithPadding``, evaluation by ``Trainer.predict`` (so it is distributed under
    ``accelerate launch`` and autocast under ``--bf16``)."""

    def __init__(self, task: Task, tokenizer, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        tokenizer.padding_side = "right"  # as the server pads (encoding.pad): Llama's tokenizer pads left
        self.pad = DataCollatorWithPadding(tokenizer)

    def encode(self, frame: pd.DataFrame, *, train: bool) -> list[dict]:
        # a pair task's row without a second sentence keeps an empty one: a whole column read as
        # single sentences because one row lacks it would train and score another task
        pairs = list(frame["b"].fillna("")) if self.task.text_b is not None else None
        enc = self.tokenizer(list(frame["a"]), pairs, truncation=True, max_length=self.max_length)
        features = [
            {**dict(zip(enc.keys(), values)), "labels": label}
            for *values, label in zip(*enc.values(), frame["label"].tolist())
        ]
        return features if train else longest_first(features)

    def collate(self, features: list[dict], *, train: bool = True) -> dict:
        return self.pad(features)

    def score(self, trainer: Trainer, features: list[dict]) -> float:
        predicted = trainer.predict(features)
        return score(self.task.metric, predicted.predictions, predicted.label_ids, self.task.is_regression)
