"""The model side of the server, shared by both backends: one ``MultiTask`` on one tokenizer,
the tasks it serves, and one mixed batch of rows in, one answer (or error) per row out.

Nothing here knows about HTTP or batching; a lock serialises forwards with loading and
unloading tasks, because ``MultiTask`` routes rows through shared modules that ``add`` and
``remove`` rewire.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from ..checkpoint import META
from ..errors import UniPeltError
from ..introspect import count_parameters
from ..multitask import MultiTask
from ..presets import PRESETS

Text = Union[str, tuple[str, str]]


class ServeError(Exception):
    """A request the server refuses: an HTTP status and a message that says what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A task to serve: its checkpoint directory and whether its inputs are sentence pairs."""

    path: Path
    pairs: bool | None = None  # None: what the checkpoint records (task.pairs), else single sentences


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    name: str
    path: str
    preset: str  # the registered preset whose config the checkpoint holds, or "custom"
    labels: list[str] | None  # None for regression
    pairs: bool
    max_length: int  # tokens per input after truncation (its prompt, if any, comes on top)
    parameters: int  # the task's own parameters at inference (PELT modules + head)

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "preset": self.preset,
            "labels": self.labels,
            "pairs": self.pairs,
            "regression": self.labels is None,
            "max_length": self.max_length,
            "parameters": self.parameters,
            "path": self.path,
        }


@dataclass(frozen=True)
class Row:
    task: str
    text: Text


def model_limit(tokenizer, config) -> int:
    """The longest input the model takes: the tokenizer's limit and its position table's size."""
    positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(tokenizer.model_max_length, positions))


def _preset_of(config) -> str:
    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


def _recorded_pairs(directory: Path) -> bool:
    """``task.pairs`` in unipelt.json, where a future checkpoint records it; else single sentences."""
    try:
        value = json.loads((directory / META).read_text("utf-8")).get("task", {}).get("pairs")
    except (OSError, ValueError, AttributeError):
        return False  # MultiTask.add reports the unreadable file
    return value if isinstance(value, bool) else False


class Engine:
    """``run(rows)`` answers a mixed batch; ``add``/``remove`` change the tasks between batches."""

    def __init__(self, model: MultiTask, tokenizer, max_length: int | None = None):
        self.mt, self.tokenizer = model, tokenizer
        self.limit = model_limit(tokenizer, model.model.config)
        if max_length is not None and not 0 < max_length <= self.limit:
            raise UniPeltError(f"--max-length {max_length} must be between 1 and the model's limit {self.limit}")
        self.max_length = max_length or self.limit
        self.info: dict[str, TaskInfo] = {}
        self.lock = threading.Lock()

    @classmethod
    def from_directory(cls, model_dir: str | Path, max_length: int | None = None) -> "Engine":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForSequenceClassification.from_pretrained(model_dir)  # its head is replaced per task
        if tokenizer.pad_token is None:  # decoder tokenizers: pad with eos, as training did
            tokenizer.pad_token = tokenizer.eos_token
        if base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        return cls(MultiTask(base), tokenizer, max_length)

    # ---- tasks
    def add(self, name: str, spec: TaskSpec) -> TaskInfo:
        """Load a checkpoint as task ``name``; on any failure the served tasks are unchanged."""
        with self.lock:
            if name in self.info:
                raise ServeError(409, f"task {name!r} is already loaded; DELETE it first")
            try:
                self.mt.add(name, spec.path)
            except UniPeltError as e:
                raise ServeError(422, f"checkpoint {spec.path} cannot be served: {e}") from None
            except OSError as e:
                raise ServeError(422, f"checkpoint {spec.path} cannot be read: {e}") from None
            task = self.mt._tasks[name]
            prompt = task.prompt_length  # tokens the task inserts: they need positions too
            positions = getattr(self.mt.model.config, "max_position_embeddings", None) or self.limit + prompt
            counts = count_parameters(task.model)
            info = TaskInfo(
                name=name,
                path=str(spec.path),
                preset=_preset_of(task.config),
                labels=None if task.regression else list(task.labels),
                pairs=spec.pairs if spec.pairs is not None else _recorded_pairs(spec.path),
                max_length=min(self.max_length, positions - prompt),
                parameters=counts["inference"] + counts["head"],
            )
            self.info[name] = info
            return info

    def remove(self, name: str) -> None:
        with self.lock:
            if name not in self.info:
                raise ServeError(404, f"unknown task {name!r}; loaded: {', '.join(self.info) or 'none'}")
            self.mt.remove(name)
            del self.info[name]

    def tasks(self) -> list[dict]:
        return [i.as_json() for i in self.info.values()]

    def check(self, task: str, inputs: Sequence[Text]) -> None:
        """Refuse a request the model cannot answer as asked, before it joins a batch."""
        info = self.info.get(task)
        if info is None:
            raise ServeError(404, f"unknown task {task!r}; loaded: {', '.join(self.info) or 'none'}")
        for i, text in enumerate(inputs):
            if isinstance(text, tuple) != info.pairs:
                kind = "sentence pairs [a, b]" if info.pairs else "single strings, not pairs"
                raise ServeError(422, f"inputs[{i}]: task {task!r} takes {kind}")

    # ---- answering a batch
    def run(self, rows: Sequence[Row]) -> list[dict | ServeError]:
        """One mixed batch; a row whose task was unloaded since it was checked gets a 404."""
        with self.lock:
            live = [i for i, r in enumerate(rows) if r.task in self.info]
            out: list[dict | ServeError] = [ServeError(404, f"task {r.task!r} was unloaded") for r in rows]
            if live:
                for i, answer in zip(live, self._forward([rows[i] for i in live])):
                    out[i] = answer
            return out

    def _forward(self, rows: list[Row]) -> list[dict]:
        encoded, cut = self._encode(rows)
        batch = self.tokenizer.pad(encoded, return_tensors="pt")
        logits = self.mt(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            tasks=[r.task for r in rows],
            token_type_ids=batch.get("token_type_ids"),  # BERT's segment ids of pairs, as in training
        )
        answers = []
        for row, z, truncated in zip(rows, logits, cut):
            answer = MultiTask._answer(self.mt._tasks[row.task], z)
            del answer["task"]  # the response names the task once
            if truncated:
                answer["truncated"] = True
            answers.append(answer)
        return answers

    def _encode(self, rows: list[Row]) -> tuple[list[dict], list[bool]]:
        """The tokenizer's encoding of each row (ids, mask, and segment ids where the tokenizer
        makes them), truncated to the task's limit as ``MultiTask.predict`` does.

        Rows are tokenized in one call per kind (fast tokenizers batch in Rust); only rows over
        their limit are tokenized again with truncation, so the common case costs one pass.
        """
        encoded: list[dict] = [{} for _ in rows]
        cut = [False] * len(rows)
        for pairs in (False, True):
            idx = [i for i, r in enumerate(rows) if isinstance(r.text, tuple) == pairs]
            if not idx:
                continue
            texts = [rows[i].text for i in idx]
            args = ([t[0] for t in texts], [t[1] for t in texts]) if pairs else (texts,)
            batch = self.tokenizer(*args, verbose=False)
            for k, i in enumerate(idx):
                row = {key: values[k] for key, values in batch.items()}
                limit = self.info[rows[i].task].max_length
                if len(row["input_ids"]) > limit:
                    text = rows[i].text
                    row = dict(self.tokenizer(*(text if pairs else (text,)), truncation=True, max_length=limit))
                    cut[i] = True
                encoded[i] = row
        return encoded, cut
