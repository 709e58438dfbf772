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
from transformers import AutoConfig, Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .encode import Encoded
from .errors import HarnessError
from .metrics import score_predictions
from .tasks import Task

OBJECTIVES = ("classify", "generate")
IGNORE = -100  # label id the causal-LM loss skips
UNMATCHED = -1  # predicted class of a continuation that is no label word: wrong under every metric

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


class Prompts:
    """Token ids of prompts and label words for one task and tokenizer."""

    def __init__(self, task: Task, tokenizer, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.words = LABEL_WORDS[task.name]
        ids = partial(tokenizer.encode, add_special_tokens=False)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.targets = [ids(" " + w) + self.eos for w in self.words]
        self.cue = ids(f"\n{CUES.get(task.name, 'Answer')}:")
        self.max_new_tokens = max(len(ids(" " + w)) for w in self.words) + 1

    def prompt(self, a: str, b: str | None) -> list[int]:
        body = f"{a}\n{b}" if b is not None else f"Sentence: {a}"
        budget = self.max_length - len(self.bos) - len(self.cue) - max(map(len, self.targets))
        return self.bos + self.tokenizer.encode(body, add_special_tokens=False)[: max(budget, 1)] + self.cue

    def encode(self, frame: pd.DataFrame, *, train: bool) -> Encoded:
        """Train features: prompt + target, labels only on the target. Eval features: the prompt,
        labels = the gold class id; sorted longest first, as ``encode.encode(by_length=True)``."""
        features = []
        for a, b, label in zip(frame["a"], frame["b"], frame["label"]):
            prompt = self.prompt(a, None if pd.isna(b) else b)
            if train:
                target = self.targets[int(label)]
                ids, labels = prompt + target, [IGNORE] * len(prompt) + target
            else:
                ids, labels = prompt, int(label)
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        if not train:
            features.sort(key=lambda f: -len(f["input_ids"]))
        return Encoded(features)

    def label_of(self, text: str) -> int | None:
        """The label whose word is the continuation's first word (case and punctuation ignored)."""
        words = text.strip().lower().split()
        first = words[0].strip(string.punctuation) if words else ""
        return self.words.index(first) if first in self.words else None


def pad(features: list[dict], pad_id: int, *, left: bool) -> dict[str, torch.Tensor]:
    """A batch padded to its longest example: right for training, left for generation; list
    labels are padded with -100, class-id labels are kept as they are."""
    width = max(len(f["input_ids"]) for f in features)

    def fill(seq, value):
        gap = [value] * (width - len(seq))
        return gap + seq if left else seq + gap

    labels = [f["labels"] for f in features]
    return {
        "input_ids": torch.tensor([fill(f["input_ids"], pad_id) for f in features]),
        "attention_mask": torch.tensor([fill(f["attention_mask"], 0) for f in features]),
        "labels": torch.tensor([fill(l, IGNORE) for l in labels] if isinstance(labels[0], list) else labels),
    }


@torch.no_grad()
def predict(model, prompts: Prompts, dataset: Encoded, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy generation (KV cache on) for every prompt: predicted and gold class ids, UNMATCHED
    where the continuation is no label word."""
    was_training = model.training
    model.eval()
    pad_id = prompts.tokenizer.pad_token_id
    predicted, gold = [], []
    for start in range(0, len(dataset), batch_size):
        batch = pad([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pad_id, left=True)
        out = model.generate(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            max_new_tokens=prompts.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=prompts.eos or None,
        )
        texts = prompts.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for text, label in zip(texts, batch["labels"].tolist()):
            found = prompts.label_of(text)
            predicted.append(UNMATCHED if found is None else found)
            gold.append(label)
    model.train(was_training)
    return np.array(predicted), np.array(gold)


class GenerativeTrainer(Trainer):
    """``Trainer`` whose evaluation generates instead of computing logits; the dev score reaches
    the callbacks (``BestOnDev``) as ``eval_score``, like the classify path's."""

    def __init__(self, *args, prompts: Prompts, eval_batch_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts, self.eval_batch_size = prompts, eval_batch_size

    def score(self, dataset: Encoded) -> float:
        predicted, gold = predict(self.model, self.prompts, dataset, self.eval_batch_size)
        return score_predictions(self.prompts.task.metric, predicted, gold)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = {f"{metric_key_prefix}_score": self.score(eval_dataset or self.eval_dataset)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
