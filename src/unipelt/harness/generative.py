"""The ``generate`` objective: a GLUE classification task cast as text generation for a causal LM.

Each example becomes a short prompt (``"Sentence: {a}\\nSentiment:"``, or ``"{a}\\n{b}\\nAnswer:"``
for pair tasks) whose target is the label word (`` positive``) and EOS. Training is the causal-LM
loss on the target tokens only (labels -100 on the prompt and the padding); evaluation greedily
generates a few tokens with the key/value cache from left-padded prompts and maps the first word of
the continuation to a label, an unmatched one counting as wrong.
"""

from __future__ import annotations

import string
from functools import partial

import numpy as np
import pandas as pd
import torch
from transformers import AutoConfig, DataCollatorForSeq2Seq, Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .errors import HarnessError
from .metrics import UNMATCHED, score_predictions
from .objective import longest_first
from .tasks import Task

OBJECTIVES = ("classify", "generate")
IGNORE = -100  # label id the causal-LM loss skips

# One word per label, in the order of Task.labels.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("no", "yes"),
    "qqp": ("no", "yes"),
    "mnli": ("yes", "maybe", "no"),
    "qnli": ("yes", "no"),
    "rte": ("yes", "no"),
}
CUES = {"cola": "Grammar", "sst2": "Sentiment"}  # single-sentence tasks; pair tasks ask "Answer"


def check_objective(objective: str, task: Task) -> None:
    if objective not in OBJECTIVES:
        raise HarnessError(f"unknown objective {objective!r}; known objectives: {', '.join(OBJECTIVES)}")
    if objective == "generate" and task.name not in LABEL_WORDS:
        raise HarnessError(
            f"--objective generate needs label words, and {task.name} is "
            f"{'a regression task' if task.is_regression else 'not a classification task'}: "
            f"use --objective classify"
        )


def check_can_generate(path: str, config=None) -> None:
    """Refuse encoder models (BERT, RoBERTa, ...): they have no causal-LM head to generate with."""
    config = config or AutoConfig.from_pretrained(path)
    kind = config.model_type
    if (
        kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        or getattr(config, "is_encoder_decoder", False)
    ):
        raise HarnessError(
            f"--objective generate needs a decoder-only causal LM (e.g. Llama), "
            f"but {path} is a {kind!r} model: use --objective classify"
        )


def longest_first_cut(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """``a`` and ``b`` cut from their ends to ``budget`` tokens together, a token at a time from the
    longer one (transformers' ``longest_first``): a long first sentence never pushes out the second."""
    keep_a, keep_b = len(a), len(b)
    while keep_a + keep_b > budget:  # counts, then one slice each: slicing per token copied the lists
        if keep_a >= keep_b:
            keep_a -= 1
        else:
            keep_b -= 1
    return a[:keep_a], b[:keep_b]


class Generate:
    """The generate objective (``objective.py``'s interface) for one task and tokenizer: token
    ids of prompts and label words, batches padded by transformers (right for training, the
    labels with -100; left for generation), scored by greedy generation."""

    def __init__(self, task: Task, tokenizer, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.words = LABEL_WORDS[task.name]
        ids = partial(tokenizer.encode, add_special_tokens=False)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.targets = [ids(" " + w) + self.eos for w in self.words]
        self.cue = ids(f"\n{CUES.get(task.name, 'Answer')}:")
        self.max_new_tokens = max(len(ids(" " + w)) for w in self.words) + 1
        # tokens left to the text: max_length less the bos, the cue and the longest answer
        self.budget = max_length - len(self.bos) - len(self.cue) - max(map(len, self.targets))
        if self.budget < 2:
            raise HarnessError(
                f"--max-length {max_length} leaves the text no room: this tokenizer's prompt cue and "
                f"longest answer take {max_length - self.budget} tokens"
            )
        tokenizer.padding_side = "right"  # training: the target follows its prompt; generation pads left per call
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)

    def prompt(self, a: str, b: str | None) -> list[int]:
        budget = self.budget
        ids = partial(self.tokenizer.encode, add_special_tokens=False)
        body = ids(f"{a}\n{b}" if b is not None else f"Sentence: {a}")
        if len(body) > budget and b is not None:  # the longer sentence gives way, as classify's longest_first
            first, second = longest_first_cut(ids(a), ids(f"\n{b}"), budget)
            body = first + second
        return self.bos + body[:budget] + self.cue

    def encode(self, frame: pd.DataFrame, *, train: bool) -> list[dict]:
        """Train features: prompt + target, labels only on the target. Eval features: the prompt,
        labels = the gold class id, longest first."""
        features = []
        for a, b, label in zip(frame["a"], frame["b"], frame["label"]):
            prompt = self.prompt(a, None if pd.isna(b) else b)
            if train:
                target = self.targets[int(label)]
                ids, labels = prompt + target, [IGNORE] * len(prompt) + target
            else:
                ids, labels = prompt, int(label)
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        return features if train else longest_first(features)

    def collate(self, features: list[dict], *, train: bool = True) -> dict[str, torch.Tensor]:
        """A batch padded to its longest example: right for training (labels with -100), left
        for generation (class-id labels kept as they are)."""
        if train:
            return self.pad(features)
        return self.tokenizer.pad(features, padding_side="left", return_tensors="pt")

    def score(self, trainer: Trainer, features: list[dict]) -> float:
        predicted, gold = predict(trainer.model, self, features, trainer.args.per_device_eval_batch_size)
        return score_predictions(self.task.metric, predicted, gold)

    def label_of(self, text: str) -> int | None:
        """The label whose word is the continuation's first word (case and punctuation ignored)."""
        words = text.strip().lower().split()
        first = words[0].strip(string.punctuation) if words else ""
        return self.words.index(first) if first in self.words else None


@torch.no_grad()
def predict(model, objective: Generate, features: list[dict], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy generation (KV cache on) for every prompt: predicted and gold class ids, UNMATCHED
    where the continuation is no label word."""
    was_training = model.training
    model.eval()
    tokenizer = objective.tokenizer
    predicted, gold = [], []
    for start in range(0, len(features), batch_size):
        batch = objective.collate(features[start : start + batch_size], train=False)
        out = model.generate(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            max_new_tokens=objective.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=objective.eos or None,
        )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for text, label in zip(texts, batch["labels"].tolist()):
            found = objective.label_of(text)
            predicted.append(UNMATCHED if found is None else found)
            gold.append(label)
    model.train(was_training)
    return np.array(predicted), np.array(gold)
