"""The model side of the server, shared by both backends: one ``MultiTask`` on one tokenizer,
the tasks it serves, and one mixed batch of rows in, one answer (or error) per row out.

Nothing here knows about HTTP or batching; a lock serialises forwards with loading and
unloading tasks, because ``MultiTask`` routes rows through shared modules that ``add`` and
``remove`` rewire.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .. import encoding
from ..encoding import Text
from ..errors import SharedInputError, UniPeltError
from ..introspect import count_parameters
from ..multitask import MultiTask, Task, check_input
from ..presets import PRESETS

log = logging.getLogger(__name__)

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # what a URL path segment and a metrics label can carry
MAX_TASKS = 64
# Tokens per input where neither --max-length nor the checkpoint says: a long-context model's own
# limit (131,072 for Llama 3) would let one request of long texts fill the memory.
DEFAULT_LENGTH = 2048
# Padded tokens per forward (rows × the longest row): a batch of long rows runs in parts.
BATCH_TOKENS = 1 << 16


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
    # the task ``Engine.check`` checked it against: a task of the same name loaded since (DELETE,
    # then POST) may take other inputs, so the row is refused rather than answered by it
    checked: Task | None = field(default=None, compare=False, repr=False)
    cut: bool = False  # whether ``rows`` cut the text to its task's character budget


CALL_CHARS = 1 << 16  # characters per tokenizer call: what one call holds stays a few MB


def model_limit(tokenizer, config) -> int:
    """The longest input the model takes: the tokenizer's limit and its position table's size."""
    return int(min(tokenizer.model_max_length, encoding.position_limit(config) or tokenizer.model_max_length))


def _preset_of(config) -> str:
    """The preset a checkpoint's config is, whatever head it was trained with (presets say "auto")."""
    config = dataclasses.replace(config, head="auto")
    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


class Engine:
    """``run(rows)`` answers a mixed batch; ``add``/``remove`` change the tasks between batches."""

    def __init__(
        self,
        model: MultiTask,
        tokenizer,
        max_length: int | None = None,
        compile: bool | dict = False,  # noqa: A002
        max_tasks: int = MAX_TASKS,
        max_batch_tokens: int = BATCH_TOKENS,
    ):
        """``compile``: run the shared model under ``unipelt.compile`` (True, or its options as a
        dict, e.g. ``{"backend": "aot_eager"}``); tasks added later recompile it on first use.
        ``max_tasks``: how many tasks it holds at once (each holds its modules and head in memory).
        ``max_batch_tokens``: padded tokens per forward; a longer batch runs in parts."""
        if type(max_tasks) is not int or max_tasks < 1:
            raise UniPeltError(f"--max-tasks must be a whole number of at least 1, got {max_tasks!r}")
        if type(max_batch_tokens) is not int or max_batch_tokens < 1:
            raise UniPeltError(f"--max-batch-tokens must be a whole number of at least 1, got {max_batch_tokens!r}")
        self.mt, self.tokenizer, self.max_tasks, self.max_batch_tokens = model, tokenizer, max_tasks, max_batch_tokens
        if compile:
            from ..compiling import compile as compile_model

            compile_model(model.model, **(compile if isinstance(compile, dict) else {}))
        self.limit = model_limit(tokenizer, model.model.config)
        if max_length is not None and not 0 < max_length <= self.limit:
            raise UniPeltError(f"--max-length {max_length} must be between 1 and the model's limit {self.limit}")
        self.max_length = max_length or self.limit
        # a task whose checkpoint records no length: the flag's, else the model's capped
        self.untold = max_length or min(self.limit, DEFAULT_LENGTH)
        self.info: dict[str, TaskInfo] = {}
        self.lock = threading.Lock()
        # one checkpoint is read and built at a time: each may hold up to the added-parameter cap
        # (checkpoint.ADDED_FLOOR) before it is folded, so concurrent loads must not multiply that
        self.loading = threading.Lock()

    @classmethod
    def from_directory(
        cls,
        model_dir: str | Path,
        max_length: int | None = None,
        compile: bool | dict = False,  # noqa: A002
        max_tasks: int = MAX_TASKS,
        device: str | torch.device = "cpu",
        max_batch_tokens: int = BATCH_TOKENS,
    ) -> "Engine":
        """The model at ``model_dir`` on ``device``; tasks added later join it there."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..offline import quiet_load

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        with quiet_load():  # its head is replaced per task: transformers' "newly initialized" report is noise
            base = AutoModelForSequenceClassification.from_pretrained(model_dir)
        if tokenizer.pad_token is None:  # decoder tokenizers: pad with eos, as training did
            tokenizer.pad_token = tokenizer.eos_token
        if base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        return cls(
            MultiTask(base.to(device)),
            tokenizer,
            max_length,
            compile=compile,
            max_tasks=max_tasks,
            max_batch_tokens=max_batch_tokens,
        )

    # ---- tasks
    def add(self, name: str, spec: TaskSpec) -> TaskInfo:
        """Load a checkpoint as task ``name``; on any failure the served tasks are unchanged."""
        with self.loading:
            return self._add(name, spec)

    def _add(self, name: str, spec: TaskSpec) -> TaskInfo:
        if name in self.info:
            raise ServeError(409, f"task {name!r} is already loaded; DELETE it first")
        if len(self.info) >= self.max_tasks:
            limit = f"its limit of {self.max_tasks} tasks (--max-tasks)"
            raise ServeError(409, f"the server holds {limit}; DELETE one first")
        # read and checked outside the lock (its values last: load refuses NaN), batches go on meanwhile
        task = self._served(spec.path, lambda: self.mt.prepare(name, spec.path, pairs=spec.pairs))
        info = self._served(spec.path, lambda: self._info(name, spec, task))
        with self.lock:  # adds are serialised by self.loading: no other can have taken the name
            self._served(spec.path, lambda: self.mt.commit(task))
            self.info[name] = info
            return info

    def _info(self, name: str, spec: TaskSpec, task: Task) -> TaskInfo:
        prompt = task.prompt_length  # tokens the task inserts: they need positions too
        positions = encoding.position_limit(self.mt.model.config) or self.limit + prompt
        max_length = min(self.max_length, positions - prompt, task.max_length or self.untold)
        if max_length < 1:
            raise UniPeltError(f"its prompt of {prompt} tokens leaves no position for an input ({positions} in all)")
        counts = count_parameters(task.model)
        return TaskInfo(
            name=name,
            path=str(spec.path),
            preset=_preset_of(task.config),
            labels=None if task.regression else list(task.labels),
            pairs=task.pairs,
            max_length=max_length,
            parameters=counts["inference"] + counts["head"],
        )

    @staticmethod
    def _served(path, step):
        """A step of ``MultiTask.add``, every failure a 422 that says why: a checkpoint comes from
        outside, and whatever it holds (a malformed task block, JSON nested too deep, a size that
        cannot be allocated) must not become a 500."""
        try:
            return step()
        except UniPeltError as e:
            raise ServeError(422, f"checkpoint {path} cannot be served: {e}") from None
        except OSError as e:
            raise ServeError(422, f"checkpoint {path} cannot be read: {e}") from None
        except Exception as e:  # noqa: BLE001 - see above; the traceback goes to the log
            log.warning("loading checkpoint %s failed", path, exc_info=True)
            raise ServeError(422, f"checkpoint {path} cannot be served: {type(e).__name__}: {e}") from None

    def remove(self, name: str) -> None:
        with self.lock:
            if name not in self.info:
                raise ServeError(404, f"unknown task {name!r}; loaded: {', '.join(self.info) or 'none'}")
            del self.info[name]  # first: check() runs without the lock, and reads info first
            self.mt.remove(name)

    def tasks(self) -> list[dict]:
        return [i.as_json() for i in list(self.info.values())]  # a copy: tasks change on other threads

    def check(self, task: str, inputs: Sequence[Text]) -> Task:
        """Refuse a request the model cannot answer as asked, before it joins a batch; the task
        it was checked against (``Row.checked``). Runs without the lock, beside add and remove."""
        served = self.mt._tasks.get(task) if task in self.info else None
        if served is None:
            raise ServeError(404, f"unknown task {task!r}; loaded: {', '.join(list(self.info)) or 'none'}")
        for i, text in enumerate(inputs):
            try:
                check_input(served, text, i)
            except UniPeltError as e:
                raise ServeError(422, str(e)) from None
        return served

    def rows(self, task: str, inputs: Sequence[Text], checked: Task) -> list[Row]:
        """The checked inputs as rows, each side cut to the character budget of the task's limit
        (encoding.py) now: a row waits in the queue with what its task reads, not what arrived
        (8,192 queued rows of almost 1 MiB each would hold 8 GiB)."""
        info = self.info.get(task)  # removed since check() (on a worker thread): as run() says it
        if info is None:
            raise ServeError(404, f"task {task!r} was unloaded")
        limit, end = info.max_length, encoding.from_end(self.tokenizer)
        bounded = [encoding.bounded(text, limit, end) for text in inputs]
        return [Row(task, text, checked=checked, cut=cut) for text, cut in bounded]

    # ---- answering a batch
    def run(self, rows: Sequence[Row]) -> list[dict | ServeError]:
        """One mixed batch; a row whose task was unloaded since it was checked gets a 404."""
        with self.lock:
            live = [i for i, r in enumerate(rows) if self._live(r)]
            out: list[dict | ServeError] = [ServeError(404, f"task {r.task!r} was unloaded") for r in rows]
            if live:
                for i, answer in zip(live, self._answer([rows[i] for i in live])):
                    out[i] = answer
            return out

    def _live(self, row: Row) -> bool:
        """Whether the row's task is loaded, and is the one it was checked against (under the lock)."""
        return row.task in self.info and (row.checked is None or row.checked is self.mt._tasks[row.task])

    def _answer(self, rows: list[Row]) -> list[dict | ServeError]:
        """Every row's answer from one forward, so that a row that fails only fails its own
        request (the batcher would fail them all): a failed forward is split (``_halves``)."""
        out: list = self._encode(rows)
        ok = [i for i, e in enumerate(out) if not isinstance(e, ServeError)]
        if not ok:
            return out
        for part in self._parts(ok, {i: self._length(rows[i], out[i]) for i in ok}):
            for i, answer in zip(part, self._halves([rows[i] for i in part], [out[i] for i in part])):
                out[i] = answer
        return out

    def _length(self, row: Row, encoded: tuple[dict, bool]) -> int:
        """The positions a row takes in a forward: its tokens and the prompt its task inserts."""
        task = self.mt._tasks.get(row.task)
        return len(encoded[0]["input_ids"]) + (task.prompt_length if task is not None else 0)

    def _parts(self, ok: list[int], lengths: dict[int, int]) -> list[list[int]]:
        """The rows ``ok`` in forwards of at most ``max_batch_tokens`` padded positions each (a
        prompt's included), longest first (rows of like length pad least together); a row longer
        than that runs alone."""
        order = sorted(ok, key=lambda i: -lengths[i])
        parts: list[list[int]] = []
        for i in order:
            if parts and (len(parts[-1]) + 1) * lengths[parts[-1][0]] <= self.max_batch_tokens:
                parts[-1].append(i)
            else:
                parts.append([i])
        return parts

    def _halves(self, rows: list[Row], encoded: list[tuple[dict, bool]]) -> list[dict | ServeError]:
        """The rows' answers; if their forward fails, each half's, down to the failing rows' 500s:
        one bad row in n costs about 2·log2(n) forwards. A task that cannot share a batch (BitFit
        on DeBERTa's relative positions: ``SharedInputError``) is answered in batches of its own."""
        try:
            return self._forward(rows, encoded)
        except Exception as e:  # noqa: BLE001 - a bug or a broken task: its rows' 500, the others go on
            by_task = isinstance(e, SharedInputError)
            if len(rows) == 1:
                log.exception("task %r failed on one input", rows[0].task)
                return [
                    ServeError(500, f"internal error on this input of task {rows[0].task!r}: {type(e).__name__}: {e}")
                ]
            log.warning("a batch of %d rows failed (%s: %s); answering it in parts", len(rows), type(e).__name__, e)
        tasks = list(dict.fromkeys(r.task for r in rows))
        if by_task and len(tasks) > 1:
            out: list = [None] * len(rows)
            for task in tasks:
                mine = [i for i, r in enumerate(rows) if r.task == task]
                for i, answer in zip(mine, self._halves([rows[i] for i in mine], [encoded[i] for i in mine])):
                    out[i] = answer
            return out
        half = len(rows) // 2
        return self._halves(rows[:half], encoded[:half]) + self._halves(rows[half:], encoded[half:])

    def _forward(self, rows: list[Row], encoded: list[tuple[dict, bool]]) -> list[dict | ServeError]:
        batch = encoding.pad(self.tokenizer, [e for e, _ in encoded]).to(self.mt.model.device)
        logits = self.mt(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            tasks=[r.task for r in rows],
            token_type_ids=batch.get("token_type_ids"),  # BERT's segment ids of pairs, as in training
        )
        answers: list[dict | ServeError] = []
        for row, z, (_, was_cut) in zip(rows, [z.cpu() for z in logits], encoded):
            if not bool(z.isfinite().all()):  # JSON has no NaN: say why instead of a 500 text/plain
                answers.append(ServeError(500, f"task {row.task!r} computed non-finite scores for this input"))
                continue
            answer = MultiTask._answer(self.mt._tasks[row.task], z)
            del answer["task"]  # the response names the task once
            if was_cut:
                answer["truncated"] = True
            answers.append(answer)
        return answers

    def _encode(self, rows: list[Row]) -> list[tuple[dict, bool] | ServeError]:
        """Each row's encoding (ids, mask, and segment ids where the tokenizer makes them),
        truncated to its task's limit as ``MultiTask.predict`` does, and whether it was cut; or
        the 422 of a row the tokenizer refuses.

        Every side is first cut to a character budget (encoding.py: the tokenizer's cost stays
        linear in the limit). Rows are tokenized in few calls per kind (fast tokenizers batch in
        Rust); only rows over their limit are tokenized again with truncation.
        """
        out: list = [None] * len(rows)
        for pairs in (False, True):
            idx = [i for i, r in enumerate(rows) if isinstance(r.text, tuple) == pairs]
            limits = [self.info[rows[i].task].max_length for i in idx]
            end = encoding.from_end(self.tokenizer)
            texts = [encoding.bounded(rows[i].text, n, end) for i, n in zip(idx, limits)]  # (text, cut)
            full = self._tokenize([t for t, _ in texts], pairs)
            for i, (text, cut), encoded, limit in zip(idx, texts, full, limits):
                out[i] = self._within(limit, text, cut or rows[i].cut, encoded)
        return out

    def _within(self, limit: int, text: Text, cut: bool, encoded: dict | ServeError) -> tuple[dict, bool] | ServeError:
        """``encoded`` when it fits in ``limit`` tokens, else ``text`` tokenized again with truncation."""
        if isinstance(encoded, ServeError):
            return encoded
        if not encoded["input_ids"]:  # a decoder's tokenizer adds no token to an empty text
            return ServeError(422, f"an input has no tokens once tokenized: {str(text)[:60]!r}")
        if len(encoded["input_ids"]) <= limit:
            return encoded, cut
        encoded = self._tokenize_one(lambda: encoding.truncated(self.tokenizer, text, limit), text)
        return encoded if isinstance(encoded, ServeError) else (encoded, True)

    def _tokenize(self, texts: list[Text], pairs: bool) -> Iterator[dict | ServeError]:
        """The full encoding of every text, in calls of about ``CALL_CHARS`` characters, one call's
        at a time: a fast tokenizer holds every token's encoding until the call returns, and the
        full encodings are dropped once cut (64 pairs at MiniLM's character budget, one token per
        character, took 440 MB in one call). One call per text where a call fails."""
        start, size = 0, 0
        for end, text in enumerate(texts, 1):
            size += sum(map(len, _sides(text)))
            if size >= CALL_CHARS or end == len(texts):
                yield from self._tokenize_call(texts[start:end], pairs)
                start, size = end, 0

    def _tokenize_call(self, texts: list[Text], pairs: bool) -> list[dict | ServeError]:
        args = ([t[0] for t in texts], [t[1] for t in texts]) if pairs else (texts,)
        try:
            batch = self.tokenizer(*args, verbose=False)
        except Exception:  # noqa: BLE001 - some text is refused: find which, alone
            one = lambda t: encoding.call(self.tokenizer, _sides(t), verbose=False)  # noqa: E731
            return [self._tokenize_one(lambda t=t: one(t), t) for t in texts]
        return [{key: values[k] for key, values in batch.items()} for k in range(len(texts))]

    @staticmethod
    def _tokenize_one(call, text: Text) -> dict | ServeError:
        try:
            return dict(call())
        except Exception as e:  # noqa: BLE001 - the tokenizer's refusals have no common type
            return ServeError(422, f"an input cannot be tokenized ({type(e).__name__}: {e}): {str(text)[:60]!r}")


def _sides(text: Text) -> tuple:
    return text if isinstance(text, tuple) else (text,)
