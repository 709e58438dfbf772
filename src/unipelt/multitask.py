"""One frozen backbone, many tasks: batches whose rows belong to different tasks, in one pass.

``MultiTask(base_model)`` holds one copy of the base weights. ``add(name, directory)`` loads a
``unipelt.save`` checkpoint into a skeleton of the base model whose base tensors *are* the shared
ones (no copy), then hands the skeleton's modules to ``Site`` wrappers in the shared model, one
per place where any task has a module. A site runs its base module once for the whole batch and
lets each task's modules there change that task's rows only, through their row hooks
(``rows_before``/``rows_after``, wrappers.py); what a method needs besides its modules (tokens it
inserts, base parameters of its own, work before each batch) it says in its ``Mixed`` (the
registry, methods/__init__.py). So this file knows no method: each one's file says how it runs
on its rows. Each row goes through its task's head, logits cut to that task's size.

Inference only (gradients are not defined through the in-place row updates). Calls from several
threads at once are safe: a call's rows, masks and taps are the calling thread's own
(blocks.PerCall); ``add`` and ``remove`` rewire shared modules, so callers serialise them with
calls (the server's engine holds a lock), all but ``add``'s reading and building of the
checkpoint, which ``prepare`` does apart from ``commit``. A method may refuse (full fine-tuning has no shared
backbone), as may a checkpoint whose ``modules_to_save`` train shared modules; merged LoRA cannot
be mixed with other tasks and is never used here (checkpoints hold LoRA unmerged).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import transformers
from torch import nn

from . import encoding, heads
from .arch import spec_for
from .attention import ANY_PROMPT, attend, mark_position_passes, use_pelt_attention
from .blocks import Gate, PerCall, per_call
from .checkpoint import load, read_config
from .config import PeltConfig
from .errors import SharedInputError, UniPeltError
from .inject import all_or_nothing
from .methods import configured
from .participation import probe_inputs
from .wrappers import RowsCall, Wrapper, insert, plain_path


class Router(PerCall):
    """Which rows each task owns in the current batch (task -> its rows), shared by every site.
    Per call (blocks.PerCall): each thread's mixed batch has its own; None outside a call."""

    rows = per_call("rows")


class Site(Wrapper):
    """A shared base module and, per task, what that task puts at the same place."""

    def __init__(self, base_layer: nn.Module, router: Router):
        super().__init__(base_layer)
        self.__dict__["router"] = router
        self.__dict__["entries"] = {}  # task -> its entries here, outermost first; not registered: the tasks own them

    def forward(self, *args, **kwargs):
        rows = self.router.rows
        active = [(e, rows[t]) for t, es in self.entries.items() if rows and t in rows for e in es]
        if not active:
            return self.base_layer(*args, **kwargs)
        x, batch = args[0] if args else kwargs.get("hidden_states"), sum(len(r) for r in rows.values())
        shared = x is not None and x.shape[0] != batch  # else h[rows] would index the wrong dimension
        if shared and len(rows) == 1 and not any(_gated(e) for e, _ in active):
            # one task owns the batch: its change applies to the input every row shares (a gate
            # would pool over one row's mask there, where the task's own model pools over none)
            active = [(e, torch.arange(x.shape[0], device=x.device)) for e, _ in active]
        elif shared:
            raise SharedInputError(
                f"a {type(self.base_layer).__name__} with per-task changes receives one input for the whole "
                f"batch ({x.shape[0]} rows, the batch has {batch}), as DeBERTa's relative-position projections "
                "do (BitFit on their biases): it cannot differ per row; serve such a task in batches of its own"
            )
        call = RowsCall(args, kwargs)
        for entry, r in active:  # an outer wrapper changes the input before the ones inside it
            entry.rows_before(call, r)
        call.combine()
        call.out = attend(self.base_layer, call.args, call.kwargs, call.prefix)
        for entry, r in reversed(active):  # each changes what the modules inside it gave its rows
            entry.rows_after(call, r)
        call.combine()
        return call.out


def _gated(entry) -> bool:
    return isinstance(entry, nn.Module) and any(isinstance(m, Gate) for m in entry.modules())


class HeadSite(nn.Module):
    """Each row through its task's head; logits padded to the widest head, cut per row later."""

    def __init__(self, router: Router):
        super().__init__()
        self.__dict__["router"] = router
        self.__dict__["heads"] = {}  # task -> (module, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [(r, self.heads[task][0](x[r])) for task, r in self.router.rows.items()]
        width = max(y.shape[-1] for _, y in parts)
        out = parts[0][1].new_zeros(x.shape[0], *parts[0][1].shape[1:-1], width)  # (B, [T,] widest)
        for r, y in parts:
            out[r, ..., : y.shape[-1]] = y
        return out


class SummarySite:
    """The base model's forward hook that gives each task's rows its head's summary (heads.py):
    the shared base runs once, and a "mean" task reads the mean where a "model" task reads [CLS]."""

    def __init__(self, router: Router, place: str | None):
        self.router, self.place = router, place
        self.heads: dict[str, str] = {}  # task -> its head

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, out):
        hidden = heads.field(out, "last_hidden_state")
        mask = heads.real_tokens(heads.mask_argument(args, kwargs), hidden, 0)  # the mask has the prompts' ones
        for task, rows in self.router.rows.items():
            head = self.heads.get(task)
            if head in heads.SUMMARIES:
                out = heads.put(out, heads.summarize(hidden[rows], mask[rows], head), self.place, rows)
        return out


@dataclass
class Task:
    name: str
    model: nn.Module  # the skeleton: shared base tensors, the task's modules and head
    config: object
    num_labels: int
    labels: list[str]
    regression: bool
    prompt_length: int  # tokens its methods insert into each row (a prompt; 0 for a decoder's prompt-as-prefix)
    prepare: list[Callable[[nn.Module], None]]  # its methods' work before each batch with its rows
    pairs: bool = False  # whether its inputs are sentence pairs (the checkpoint's task.pairs)
    max_length: int | None = None  # tokens per input it was trained at, where the checkpoint records it


def _check_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise UniPeltError(f"a task needs a non-empty name, got {name!r}")


def check_input(task: Task, row, i: int) -> None:
    """Refuse input ``i`` if it is of the other kind than the task takes: a pair given to a
    single-sentence task (or one sentence to a pair task) would be answered as what it is not."""
    pair = isinstance(row, (list, tuple))
    if pair != task.pairs or (pair and len(row) != 2):
        kind = "sentence pairs [a, b]" if task.pairs else "single strings, not pairs"
        raise UniPeltError(f"inputs[{i}]: task {task.name!r} takes {kind}")


_ID_DTYPES = (torch.int64, torch.int32)  # what an embedding takes as indices


def _check_batch(input_ids, attention_mask, tasks: list, token_type_ids, vocab: int) -> None:
    """What ``MultiTask.__call__`` is given, as one line each: rows of token ids in the vocabulary,
    a mask and segment ids like them, one task name per row (each failed deep inside the model)."""
    if not (isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.dtype in _ID_DTYPES):
        raise UniPeltError("input_ids must be a 2-D tensor of token ids (batch, tokens), int64 or int32")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise UniPeltError(f"input_ids has shape {tuple(input_ids.shape)}: at least one row of one token")
    if bool(((input_ids < 0) | (input_ids >= vocab)).any()):  # one device sync per batch, not two
        raise UniPeltError(f"input_ids holds ids outside the model's vocabulary (0 to {vocab - 1})")
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape
    ):
        raise UniPeltError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}")
    if token_type_ids is not None and not (
        isinstance(token_type_ids, torch.Tensor)
        and token_type_ids.shape == input_ids.shape
        and token_type_ids.dtype in _ID_DTYPES
    ):
        raise UniPeltError(f"token_type_ids must be a tensor of segment ids, input_ids' shape {tuple(input_ids.shape)}")
    if not all(isinstance(t, str) for t in tasks):
        raise UniPeltError("tasks must be task names, one per row (or one name for every row)")


def _by_eos_count(input_ids: torch.Tensor, eos: int | None) -> list[list[int]]:
    """The rows grouped by how many eos tokens they hold, where that differs between rows (a pair
    task's rows beside a single-sentence task's), else []."""
    counts = input_ids.eq(eos).sum(1).tolist() if isinstance(eos, int) else []
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(counts):
        groups.setdefault(n, []).append(i)
    return list(groups.values()) if len(groups) > 1 else []


def _encode_input(tokenizer, row, limit: int, i: int) -> dict:
    """Input ``i`` tokenized at a cost bounded by ``limit`` (encoding.py: a long pair would cost
    memory quadratic in its length), or a UniPeltError naming it when the tokenizer refuses it
    (a lone surrogate such as "\\udfff" cannot be encoded)."""
    text = tuple(row) if isinstance(row, (list, tuple)) else row
    try:
        encoded = encoding.encode(tokenizer, text, limit)
    except (TypeError, ValueError, UnicodeError) as e:
        raise UniPeltError(f"inputs[{i}] cannot be tokenized: {e}") from None
    if not encoded["input_ids"]:  # a decoder's tokenizer adds no token to an empty text
        raise UniPeltError(f"inputs[{i}] has no tokens once tokenized")
    return encoded


class MultiTask:
    """One base model, many tasks' modules and heads; ``mt(input_ids=..., attention_mask=...,
    tasks=[name per row])`` returns one logits tensor per row."""

    def __init__(self, base_model: nn.Module):
        if getattr(base_model, "pelt_config", None) is not None:
            raise UniPeltError("MultiTask takes the plain base model; its tasks come from checkpoints (add)")
        if getattr(base_model, "get_output_embeddings", lambda: None)() is not None:  # no task's own head
            raise UniPeltError(
                f"{type(base_model).__name__} is a language model: MultiTask serves classifiers "
                "(AutoModelForSequenceClassification); generate with each task's own model (unipelt.load)"
            )
        if getattr(base_model, "base_model", base_model) is base_model:  # checked before anything is changed
            raise UniPeltError(
                f"{type(base_model).__name__} has no task head: MultiTask serves classifiers "
                "(AutoModelForSequenceClassification), not a bare backbone (AutoModel)"
            )
        self.spec = spec_for(base_model)
        self.model = base_model.eval().requires_grad_(False)
        self.router = Router()
        mark_position_passes(base_model)  # a task's gates then know DeBERTa's position pass, as in its own model
        tensors = itertools.chain(base_model.parameters(), base_model.buffers())
        self._shared = {id(t): t for t in tensors}
        self._pristine = copy.deepcopy(base_model.base_model, dict(self._shared))  # modules only
        self._heads = {
            name: HeadSite(self.router)
            for name, m in base_model.named_children()
            if m is not base_model.base_model and any(True for _ in m.parameters())
        }
        if not self._heads:
            raise UniPeltError(
                f"{type(base_model).__name__} has no task head: MultiTask serves classifiers "
                "(AutoModelForSequenceClassification)"
            )
        for name, head in self._heads.items():
            setattr(self.model, name, head)
        self._summary = SummarySite(self.router, heads.place_of(base_model, self.spec))
        self.model.base_model.register_forward_hook(self._summary, with_kwargs=True)
        self._tasks: dict[str, Task] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    # ---- adding and removing tasks
    def add(self, name: str, directory: str | Path, *, pairs: bool | None = None) -> None:
        """Load a ``unipelt.save`` checkpoint as task ``name``; all-or-nothing. ``pairs`` says
        whether its inputs are sentence pairs where the checkpoint does not (None: what it
        records, else single sentences). ``prepare`` then ``commit``."""
        _check_name(name)
        if name in self._tasks:  # before reading anything
            raise UniPeltError(f"task {name!r} is already loaded; remove it first")
        self.commit(self.prepare(name, directory, pairs=pairs))

    def prepare(self, name: str, directory: str | Path, *, pairs: bool | None = None) -> Task:
        """Read and build task ``name`` from a checkpoint without changing the shared model, so
        other threads may run it meanwhile (a server reads a checkpoint while batches go on);
        ``commit`` then joins it."""
        _check_name(name)
        if pairs is not None and not isinstance(pairs, bool):
            raise UniPeltError(f"add(pairs=...) must be True, False or None, got {pairs!r}")
        return self._build(name, Path(directory), pairs)

    def commit(self, task: Task) -> None:
        """Join a prepared task to the shared model; all-or-nothing. It rewires shared modules:
        serialise it with calls, as ``add`` and ``remove``."""
        if task.name in self._tasks:  # another task of that name joined since it was prepared
            raise UniPeltError(f"task {task.name!r} is already loaded; remove it first")
        # a failure puts back the sites it created and the attention it switched, not only its entries
        with all_or_nothing(self.model):
            try:
                self._graft(task)
                self._tasks[task.name] = task
                if task.model.config._attn_implementation.startswith("unipelt_"):
                    use_pelt_attention(self.model, ANY_PROMPT)
                self._check_served(task)
            except BaseException:
                self._tasks.pop(task.name, None)
                self._summary.heads.pop(task.name, None)
                raise

    def _check_served(self, task: Task) -> None:
        """The task's model alone and its rows in the shared model agree on a 2-token probe: a
        site that transformers bypasses is an error, not a silent no-op (participation.py; ``load``
        has already checked that each of the task's modules takes part in its own model)."""
        probe = probe_inputs(task.model)
        probe = {k: probe[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            want = task.model(**probe).logits[0]
        got = self(**probe, tasks=[task.name])[0]
        tol = 1e-4 if want.dtype == torch.float32 else 2e-2
        if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol):
            raise UniPeltError(
                f"MultiTask.add({task.name!r}): its rows in the shared model differ from its own model by "
                f"{(got.float() - want.float()).abs().max().item():.3g} (transformers {transformers.__version__}): "
                "some of its modules take no part in the shared forward pass"
            )

    def remove(self, name: str) -> None:
        if name not in self._tasks:
            raise UniPeltError(f"unknown task {name!r}; loaded: {', '.join(self._tasks) or 'none'}")
        del self._tasks[name]
        self._summary.heads.pop(name, None)
        for module in self.model.modules():
            if isinstance(module, Site):
                module.entries.pop(name, None)
            if isinstance(module, HeadSite):
                module.heads.pop(name, None)

    def _meta(self, directory: Path) -> tuple[dict, PeltConfig | None]:
        """The checkpoint's ``task`` block and config, read once; ``(..., None)`` when unreadable,
        for ``load`` to refuse with the precise reason."""
        try:
            meta, cfg = read_config(directory, self.model)  # what load() applies: format 1's pooler too
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # UniPeltError is a ValueError
            return {}, None
        for method, configs in configured(cfg):
            if why := method.mixed.refused(configs):
                raise UniPeltError(f"{directory}: {why}")
        if cfg.modules_to_save:
            raise UniPeltError(
                f"{directory}: the task trains base modules {list(cfg.modules_to_save)}, which "
                "every other task shares: it cannot join a mixed batch"
            )
        return meta.get("task") or {}, cfg  # read_config has checked it: an object or absent

    @torch.inference_mode(False)  # a head made under a server's inference_mode could not be loaded (checked)
    def _skeleton(self, task_meta: dict, config: PeltConfig | None) -> nn.Module:
        """A model of the base's class on the shared base tensors, with a new head of the task's size;
        the base parameters its methods train (BitFit's biases) are its own copies."""
        cfg = copy.deepcopy(self.model.config)
        if isinstance(task_meta.get("num_labels"), int):
            cfg.num_labels = task_meta["num_labels"]
            cfg.problem_type = task_meta.get("problem_type")
            labels = task_meta.get("id2label") or {}
            n = cfg.num_labels  # transformers reads it off id2label: set both, never None
            cfg.id2label = (
                {int(k): v for k, v in labels.items()} if len(labels) == n else {i: f"LABEL_{i}" for i in range(n)}
            )
        with torch.device("meta"):
            skeleton = type(self.model)(cfg)
        base = copy.deepcopy(self._pristine, dict(self._shared))
        setattr(skeleton, self.model.base_model_prefix, base)
        ref = next(self.model.parameters())
        for name, child in skeleton.named_children():
            if child is not base:  # the checkpoint fills the head; in the base's dtype (a bf16 base)
                child.to_empty(device=ref.device).to(ref.dtype)
        rules = [m.trains for m, _ in configured(config)] if config is not None else []
        for name, p in list(base.named_parameters()):
            if any(rule is not None and rule(f"{self.model.base_model_prefix}.{name}") for rule in rules):
                path, _, leaf = name.rpartition(".")
                setattr(base.get_submodule(path), leaf, nn.Parameter(p.detach().clone()))
        return skeleton.eval()

    def _build(self, name: str, directory: Path, pairs: bool | None = None) -> Task:
        task_meta, config = self._meta(directory)
        skeleton = self._skeleton(task_meta, config)
        load(skeleton, directory)
        recorded = task_meta.get("pairs")  # load() has checked its type
        if pairs is not None and recorded is not None and pairs != recorded:
            kind = "sentence pairs" if recorded else "single sentences"
            raise UniPeltError(
                f"{directory} records that its task takes {kind} (pairs={recorded}): "
                f"pairs={pairs} is for a checkpoint that does not say; leave it out"
            )
        cfg = skeleton.config
        n = cfg.num_labels
        labels = (
            [str(cfg.id2label.get(i, f"LABEL_{i}")) for i in range(n)] if cfg.id2label else [str(i) for i in range(n)]
        )
        methods = configured(skeleton.pelt_config)
        return Task(
            name=name,
            model=skeleton,
            config=skeleton.pelt_config,
            num_labels=n,
            labels=labels,
            regression=cfg.problem_type == "regression" or n == 1,
            prompt_length=sum(m.mixed.inserts(configs, self.spec) for m, configs in methods),
            prepare=[m.mixed.prepare for m, _ in methods],
            pairs=bool(recorded if recorded is not None else pairs),
            max_length=task_meta.get("max_length"),
        )

    def _site_at(self, path: str) -> Site:
        """The site at ``path`` (a plain-model path) in the shared model, created on first use."""
        parent, leaf = self.model, path
        if "." in path:
            parent_path, _, leaf = path.rpartition(".")
            parent = self.model
            for part in parent_path.split("."):
                parent = getattr(parent.base_layer if isinstance(parent, Site) else parent, part)
            parent = parent.base_layer if isinstance(parent, Site) else parent
        module = getattr(parent, leaf)
        if not isinstance(module, Site):
            module = Site(module, self.router)
            setattr(parent, leaf, module)
        return module

    def _graft(self, task: Task) -> None:
        """Every wrapper of the task (outermost first at each place, as the site runs them) and what
        its methods add besides wrappers, at the shared model's sites."""
        entries = [(plain_path(n), m) for n, m in task.model.named_modules() if isinstance(m, Wrapper)]
        prefix = self.model.base_model_prefix
        for method, _ in configured(task.config):
            for path, entry in method.mixed.entries(task.model.base_model, self._pristine):
                entries.append((f"{prefix}.{path}" if path else prefix, entry))
        for path, entry in entries:
            self._site_at(path).entries.setdefault(task.name, []).append(entry)
        for head_name, site in self._heads.items():
            site.heads[task.name] = (getattr(task.model, head_name), task.num_labels)
        self._summary.heads[task.name] = task.config.head

    # ---- running mixed batches
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: Sequence[str] = (),
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        tasks = [tasks] * len(input_ids) if isinstance(tasks, str) else list(tasks or ())  # one name: every row
        _check_batch(input_ids, attention_mask, tasks, token_type_ids, self.model.get_input_embeddings().num_embeddings)
        if len(tasks) != input_ids.shape[0]:
            raise UniPeltError(f"tasks names {len(tasks)} rows, the batch has {input_ids.shape[0]}")
        if unknown := sorted(set(tasks) - self._tasks.keys()):
            raise UniPeltError(f"unknown task(s) {unknown}; loaded: {', '.join(self._tasks) or 'none'}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.spec.eos_head and (parts := _by_eos_count(input_ids, self.model.config.eos_token_id)):
            out = [None] * len(tasks)
            for r in parts:
                segments = None if token_type_ids is None else token_type_ids[r]
                for i, y in zip(r, self(input_ids[r], attention_mask[r], [tasks[i] for i in r], segments)):
                    out[i] = y
            return out
        device = input_ids.device
        names = list(dict.fromkeys(tasks))
        rows = {t: torch.tensor([i for i, x in enumerate(tasks) if x == t], device=device) for t in names}
        inserted = torch.tensor([self._tasks[t].prompt_length for t in tasks], device=device)
        if inserted.any():  # the layout of the inserted tokens: [first tokens, ones for them, rest, zeros]
            attention_mask = insert(attention_mask, self.spec.prompt_at, inserted, fill=1)
        self.router.rows = rows
        try:
            with torch.no_grad():  # a decoder prompt's pass too: no graph kept for a backward that never comes
                for t in names:
                    for prepare in self._tasks[t].prepare:
                        prepare(self._tasks[t].model)
                # segment ids stay as long as input_ids: BERT adds them before the prompt is inserted
                extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        finally:
            self.router.rows = None
        return [logits[i, : self._tasks[t].num_labels] for i, t in enumerate(tasks)]

    def predict(self, inputs: Sequence, tasks: Sequence[str], tokenizer, max_length: int | None = None) -> list[dict]:
        """Texts (or (text, text) pairs) for the named tasks: each row's label and scores, or value.
        A bare string is one input, and a bare task name applies to every input."""
        if isinstance(inputs, str):  # iterating it would make each character an input
            inputs = [inputs]
        if not isinstance(inputs, Iterable) or not isinstance(tasks, Iterable):
            raise UniPeltError("predict() takes a list of inputs and a task name (or one per input)")
        inputs = list(inputs)  # a generator too
        tasks = [tasks] * len(inputs) if isinstance(tasks, str) else list(tasks)
        if not all(isinstance(t, str) for t in tasks):
            raise UniPeltError("tasks must be task names, one per input (or one name for every input)")
        if len(inputs) != len(tasks):
            raise UniPeltError(f"{len(inputs)} inputs but {len(tasks)} task names")
        if not inputs:
            raise UniPeltError("predict() needs at least one input (inputs and tasks are empty)")
        unknown = sorted(set(tasks) - set(self._tasks))
        if unknown:
            raise UniPeltError(f"unknown task {unknown[0]!r}; loaded: {', '.join(self._tasks) or 'none'}")
        for i, (row, name) in enumerate(zip(inputs, tasks)):
            check_input(self._tasks[name], row, i)
        model_limit = min(tokenizer.model_max_length, encoding.position_limit(self.model.config) or 512)
        if max_length is not None and not (type(max_length) is int and 1 <= max_length <= model_limit):
            raise UniPeltError(
                f"max_length must be a whole number from 1 to the model's {model_limit}, got {max_length!r}"
            )
        encoded = [
            _encode_input(tokenizer, row, self._input_limit(self._tasks[name], max_length, model_limit), i)
            for i, (row, name) in enumerate(zip(inputs, tasks))
        ]
        batch = encoding.pad(tokenizer, encoded).to(self.model.device)
        logits = self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            tasks=tasks,
            token_type_ids=batch.get("token_type_ids"),
        )
        return [self._answer(self._tasks[t], z) for t, z in zip(tasks, logits)]

    def _input_limit(self, task: Task, max_length: int | None, model_limit: int) -> int:
        """The tokens an input of ``task`` keeps: ``max_length``, else what the task was trained at,
        else the model's limit; less its prompt's tokens where the model has a position table
        (BART numbers them with the input's), as the server cuts (serve/engine.py)."""
        positions = encoding.position_limit(self.model.config)
        room = positions - task.prompt_length if positions else model_limit
        if room < 1 or (max_length is not None and max_length > room):
            raise UniPeltError(
                f"task {task.name!r}: its prompt of {task.prompt_length} tokens leaves {max(room, 0)} positions "
                f"for an input ({positions} in all)"
            )
        return min(max_length or task.max_length or model_limit, room)

    @staticmethod
    def _answer(task: Task, logits: torch.Tensor) -> dict:
        if task.regression:
            return {"task": task.name, "value": float(logits[0])}
        p = logits.float().softmax(-1)
        return {
            "task": task.name,
            "label": task.labels[int(p.argmax())],
            "scores": {label: float(v) for label, v in zip(task.labels, p)},
        }
