"""One frozen backbone, many tasks: batches whose rows belong to different tasks, in one pass.

``MultiTask(base_model)`` holds one copy of the base weights. ``add(name, directory)`` loads a
``unipelt.save`` checkpoint into a skeleton of the base model whose base tensors *are* the shared
ones (no copy), then hands the skeleton's modules to ``Site`` wrappers in the shared model, one
per place where any task has a module. A site runs its base module once for the whole batch and
each task's modules on that task's rows only:

- LoRA, (IA)³, BitFit's bias differences: added to (or scaling) the shared output on the rows;
- adapters: applied to the rows of the sublayer's output; post-norm and multi-head placements
  recompute their small LayerNorm / output projection on those rows;
- prefixes of any length: one padded key/value block, each row seeing only its task's prefix
  (``Prefix.visible``); UniPELT gates pool over their own rows (``MaskSlot.rows``);
- prompts: each row is laid out as ``[first tokens, its prompt, the rest, padding]``, so no row's
  positions move; decoder-only prompts are served as prefixes;
- heads: each row goes through its task's head, logits cut to that task's size.

Inference only (gradients are not defined through the in-place row updates). Calls from several
threads at once are safe: a call's rows, masks and taps are the calling thread's own
(blocks.PerCall); ``add`` and ``remove`` rewire shared modules, so callers serialise them with
calls (the server's engine holds a lock). A full fine-tuning checkpoint has no shared backbone
and is refused; merged LoRA cannot be mixed with other tasks and is never used here (checkpoints
hold LoRA unmerged).
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import transformers
from torch import nn

from . import encoding, heads
from .arch import spec_for
from .attention import Prefix, attend, token_mask, use_pelt_attention
from .blocks import Gate, PerCall, per_call
from .checkpoint import META, load
from .config import PeltConfig
from .errors import UniPeltError
from .methods.bitfit import BitFitConfig, FullFineTuning
from .methods.ia3 import IA3Linear
from .methods.lora import LoRALinear
from .methods.prefix import PrefixConfig
from .methods.prompt import CausalPrompt, PeltEmbeddings, PeltPositions, PromptConfig
from .participation import probe_inputs
from .wrappers import PeltHeadOutput, PeltLayer, PeltPostNorm, PeltSublayer, Wrapper


class Router(PerCall):
    """Which rows each task owns in the current batch, shared by every site.

    Per call (blocks.PerCall): each thread's mixed batch has its own rows and prompt layout.
    ``rows``: task -> its rows; ``prompt``: (B,) prompt length of every row; ``widest_prompt``
    and ``prompt_at``: where the prompts go (``MultiTask._mask``). All None outside a call.
    """

    rows = per_call("rows")
    prompt = per_call("prompt")
    widest_prompt = per_call("widest_prompt")
    prompt_at = per_call("prompt_at")


@dataclass
class BiasDelta:
    """A BitFit task's bias minus the shared one, for a module the task does not wrap."""

    delta: torch.Tensor


def _slots(module) -> set:
    return {g.slot for g in module.modules() if isinstance(g, Gate)} if isinstance(module, nn.Module) else set()


class _OnRows:
    """Point every gate slot (and the given taps) of a task's module at its rows for a while."""

    def __init__(self, entry, rows: torch.Tensor, taps=()):
        self.slots, self.rows, self.taps = _slots(entry), rows, [t for t in taps if t is not None]

    def __enter__(self):
        for s in self.slots:
            s.rows = self.rows
        self.saved = [t.value for t in self.taps]
        for t in self.taps:
            t.value = t.value[self.rows]

    def __exit__(self, *exc):
        for s in self.slots:
            s.rows = None
        for t, v in zip(self.taps, self.saved):
            t.value = v


def _changes_output(entry) -> bool:
    if isinstance(entry, PeltPositions):
        return False
    if isinstance(entry, PeltSublayer):
        return bool(entry.pelt_adapter_parallel or entry.pelt_adapter_sequential)
    if isinstance(entry, IA3Linear):
        return entry.on == "output"
    return not isinstance(entry, PeltLayer)


def _taps(entry) -> list:
    tap = getattr(entry, "tap", None)
    return [tap] if tap is not None else []


class Site(Wrapper):
    """A shared base module and, per task, what that task puts at the same place."""

    def __init__(self, base_layer: nn.Module, router: Router):
        super().__init__(base_layer)
        self.__dict__["router"] = router
        self.__dict__["entries"] = {}  # task -> list of its entries here; not registered: the tasks own them

    def forward(self, *args, **kwargs):
        rows = self.router.rows
        active = [(t, e, rows[t]) for t, es in self.entries.items() for e in es if rows and t in rows]
        if not active:
            return self.base_layer(*args, **kwargs)
        x, batch = args[0] if args else kwargs.get("hidden_states"), sum(len(r) for r in rows.values())
        if x is not None and x.shape[0] != batch:  # else h[rows] would index the wrong dimension
            raise UniPeltError(
                f"a {type(self.base_layer).__name__} with per-task changes receives one input for the whole "
                f"batch ({x.shape[0]} rows, the batch has {batch}), as DeBERTa's relative-position projections "
                "do (BitFit on their biases): it cannot differ per row; serve such a task in batches of its own"
            )
        args, kwargs, prefix = self._before(active, args, kwargs)
        out = attend(self.base_layer, args, kwargs, prefix)
        x = args[0] if args else kwargs.get("hidden_states")
        return self._after(active, x, out)

    def _before(self, active, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        lengthen = next((e for _, e, _ in active if isinstance(e, PeltPositions)), None)
        if lengthen is not None:  # rotary positions for the widest prompt: every row's layout has them
            return (x, lengthen.lengthen(x, args[1]), *args[2:]), kwargs, None
        scaled = [(e, r) for _, e, r in active if isinstance(e, IA3Linear) and e.on == "input"]
        if scaled:
            x = x.clone()
            for e, r in scaled:
                x[r] = x[r] * e.pelt_ia3
            args = (x, *args[1:]) if args else args
            kwargs = kwargs if args else {**kwargs, "hidden_states": x}
        for _, e, _ in active:
            if isinstance(e, PeltLayer):
                pos = e.mask_position - 1
                mask = args[pos + 1] if len(args) > pos + 1 else kwargs.get("attention_mask")
                e.slot.mask = token_mask(mask, x.shape[1])
            if isinstance(e, PeltSublayer) and e.tap is not None:
                e.tap.value = x
        return args, kwargs, self._prefix(active, x)

    def _prefix(self, active, x: torch.Tensor) -> Prefix | None:
        """Every task's prefix in one padded block; each row sees only its own."""
        parts = []
        for _, e, r in active:
            if isinstance(e, PeltSublayer) and e.pelt_prefix is not None:
                with _OnRows(e.pelt_prefix, r):
                    p = e.pelt_prefix(x[r])
                if p is not None:
                    parts.append((r, p))
        if not parts:
            return None
        b, (_, first) = x.shape[0], parts[0]
        width = max(p.keys.shape[2] for _, p in parts)
        shape = (b, first.keys.shape[1], width, first.keys.shape[3])
        keys, values = first.keys.new_zeros(shape), first.values.new_zeros(shape)
        visible = torch.zeros(b, width, dtype=torch.bool, device=x.device)
        gated = any(p.query_gate is not None for _, p in parts)
        gate = first.keys.new_ones(b, 1, x.shape[1], 1) if gated else None
        for r, p in parts:
            n = p.keys.shape[2]
            keys[r, :, :n], values[r, :, :n], visible[r, :n] = p.keys, p.values, True
            if p.query_gate is not None:
                gate[r] = p.query_gate
        return Prefix(keys, values, query_gate=gate, visible=visible)

    def _after(self, active, x, out):
        if any(isinstance(e, PeltEmbeddings) for _, e, _ in active):
            return self._lay_out_prompts(active, out)
        active = [a for a in active if _changes_output(a[1])]
        if not active:
            return out
        h = out[0] if isinstance(out, tuple) else out  # fresh from the base module: updated in place
        for _, e, r in sorted(active, key=lambda a: isinstance(a[1], IA3Linear)):  # scaling last
            if isinstance(e, BiasDelta):
                h[r] += e.delta
            elif isinstance(e, LoRALinear):
                with _OnRows(e, r):
                    h[r] += e.delta(x[r])
            elif isinstance(e, IA3Linear) and e.on == "output":
                h[r] *= e.factor()
            elif isinstance(e, PeltSublayer):
                h[r] = self._adapters(e, x[r], h[r], r)
            elif isinstance(e, (PeltPostNorm, PeltHeadOutput)):
                with _OnRows(e, r, _taps(e)):  # recompute the small module on the task's rows
                    h[r] = e(x[r])
        return (h, *out[1:]) if isinstance(out, tuple) else h

    @staticmethod
    def _adapters(e: PeltSublayer, x: torch.Tensor, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if e.source is not None:
            x = e.source.value[r]
        with _OnRows(e, r):
            for adapter in e.pelt_adapter_parallel:
                h = h + adapter(x, h)
            for adapter in e.pelt_adapter_sequential:
                h = h + adapter(h, h)
        return h

    def _lay_out_prompts(self, active, e: torch.Tensor) -> torch.Tensor:
        """Row b: [e[:at], its prompt, e[at:], zeros]: every token keeps its place after the prompt."""
        router, at = self.router, self.router.prompt_at
        b, t, d = e.shape
        out = e.new_zeros(b, t + router.widest_prompt, d)
        out[:, :at] = e[:, :at]
        lengths = router.prompt
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().flatten()
            out[rows, at + n : t + n] = e[rows, at:]
        for _, entry, r in active:
            n = entry.pelt_prompt.shape[0]
            out[r, at : at + n] = entry.pelt_prompt.to(e.dtype)
        return out


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
        hidden = out["last_hidden_state"]
        mask = heads.real_tokens(heads.mask_argument(args, kwargs), hidden, 0)  # the mask has the prompts' ones
        for task, rows in self.router.rows.items():
            head = self.heads.get(task)
            if head in heads.SUMMARIES:
                out = heads.put(out, heads.summarize(hidden[rows], mask[rows], head), mask, self.place, rows)
        return out


@dataclass
class Task:
    name: str
    model: nn.Module  # the skeleton: shared base tensors, the task's modules and head
    config: object
    num_labels: int
    labels: list[str]
    regression: bool
    prompt_length: int  # tokens its prompt inserts (0 for none, or a decoder's prompt-as-prefix)
    pairs: bool = False  # whether its inputs are sentence pairs (the checkpoint's task.pairs)
    max_length: int | None = None  # tokens per input it was trained at, where the checkpoint records it


def check_input(task: Task, row, i: int) -> None:
    """Refuse input ``i`` if it is of the other kind than the task takes: a pair given to a
    single-sentence task (or one sentence to a pair task) would be answered as what it is not."""
    if isinstance(row, (list, tuple)) != task.pairs:
        kind = "sentence pairs [a, b]" if task.pairs else "single strings, not pairs"
        raise UniPeltError(f"inputs[{i}]: task {task.name!r} takes {kind}")


def _canonical(name: str) -> str:
    return name.replace(".base_layer", "")


def _encode_input(tokenizer, row, limit: int, i: int) -> dict:
    """Input ``i`` tokenized at a cost bounded by ``limit`` (encoding.py: a long pair would cost
    memory quadratic in its length), or a UniPeltError naming it when the tokenizer refuses it
    (a lone surrogate such as "\\udfff" cannot be encoded)."""
    text = tuple(row) if isinstance(row, (list, tuple)) else row
    try:
        return encoding.encode(tokenizer, text, limit)
    except (TypeError, ValueError, UnicodeError) as e:
        raise UniPeltError(f"inputs[{i}] cannot be tokenized: {e}") from None


class MultiTask:
    """One base model, many tasks' modules and heads; ``mt(input_ids=..., attention_mask=...,
    tasks=[name per row])`` returns one logits tensor per row."""

    def __init__(self, base_model: nn.Module):
        if getattr(base_model, "pelt_config", None) is not None:
            raise UniPeltError("MultiTask takes the plain base model; its tasks come from checkpoints (add)")
        if getattr(base_model, "base_model", base_model) is base_model:  # checked before anything is changed
            raise UniPeltError(
                f"{type(base_model).__name__} has no task head: MultiTask serves classifiers "
                "(AutoModelForSequenceClassification), not a bare backbone (AutoModel)"
            )
        self.spec = spec_for(base_model)
        self.model = base_model.eval().requires_grad_(False)
        self.router = Router()
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
        records, else single sentences)."""
        if not isinstance(name, str) or not name:
            raise UniPeltError(f"a task needs a non-empty name, got {name!r}")
        if name in self._tasks:
            raise UniPeltError(f"task {name!r} is already loaded; remove it first")
        if pairs is not None and not isinstance(pairs, bool):
            raise UniPeltError(f"add(pairs=...) must be True, False or None, got {pairs!r}")
        task = self._build(name, Path(directory))
        if pairs is not None:
            task.pairs = pairs
        self._graft(task)
        self._tasks[name] = task
        if task.model.config._attn_implementation.startswith("unipelt_"):
            use_pelt_attention(self.model)
        try:
            self._check_served(task)
        except Exception:
            self.remove(name)
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
            meta = json.loads((directory / META).read_text("utf-8"))
            cfg = PeltConfig.from_dict(meta["config"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # UniPeltError is a ValueError
            return {}, None
        if cfg.of(FullFineTuning):
            raise UniPeltError(f"{directory}: a full fine-tuning checkpoint has no shared backbone to serve")
        if cfg.modules_to_save:
            raise UniPeltError(
                f"{directory}: the task trains base modules {list(cfg.modules_to_save)}, which "
                "every other task shares: it cannot join a mixed batch"
            )
        if any(p.composition == "add" for p in cfg.of(PrefixConfig)):
            raise UniPeltError(
                f"{directory}: prefix composition 'add' (the -gating ablation) is not served in mixed batches"
            )
        return (meta.get("task") if isinstance(meta.get("task"), dict) else {}), cfg

    def _skeleton(self, task_meta: dict, bitfit: bool) -> nn.Module:
        """A model of the base's class on the shared base tensors, with a new head of the task's size."""
        cfg = copy.deepcopy(self.model.config)
        if isinstance(task_meta.get("num_labels"), int):
            cfg.num_labels = task_meta["num_labels"]
            cfg.problem_type = task_meta.get("problem_type")
            labels = task_meta.get("id2label") or {}
            cfg.id2label = {int(k): v for k, v in labels.items()} if len(labels) == cfg.num_labels else None
        with torch.device("meta"):
            skeleton = type(self.model)(cfg)
        base = copy.deepcopy(self._pristine, dict(self._shared))
        setattr(skeleton, self.model.base_model_prefix, base)
        device = next(self.model.parameters()).device
        for name, child in skeleton.named_children():
            if child is not base:
                child.to_empty(device=device)  # the checkpoint fills the head
        if bitfit:  # the task's biases are its own; the shared ones stay as they are
            for m in base.modules():
                if isinstance(getattr(m, "bias", None), nn.Parameter):
                    m.bias = nn.Parameter(m.bias.detach().clone())
        return skeleton.eval()

    def _build(self, name: str, directory: Path) -> Task:
        task_meta, config = self._meta(directory)
        skeleton = self._skeleton(task_meta, bool(config and config.of(BitFitConfig)))
        load(skeleton, directory)
        cfg = skeleton.config
        n = cfg.num_labels
        labels = (
            [str(cfg.id2label.get(i, f"LABEL_{i}")) for i in range(n)] if cfg.id2label else [str(i) for i in range(n)]
        )
        prompt = skeleton.pelt_config.of(PromptConfig)
        inserted = prompt[0].length if prompt and self.spec.embeddings is not None else 0
        return Task(
            name=name,
            model=skeleton,
            config=skeleton.pelt_config,
            num_labels=n,
            labels=labels,
            regression=cfg.problem_type == "regression" or n == 1,
            prompt_length=inserted,
            pairs=task_meta.get("pairs", False),  # load() has checked its type
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
        wrappers = [(n, m) for n, m in task.model.named_modules() if isinstance(m, Wrapper)]
        at: dict[str, list] = {}
        for name, module in wrappers:
            at.setdefault(_canonical(name), []).append(module)
        for path, modules in at.items():  # LoRA and (IA)³ on different parts of one fused map add up
            if len(modules) > 1 and not all(isinstance(m, (LoRALinear, IA3Linear)) for m in modules):
                raise UniPeltError(f"task {task.name!r} puts two modules at {path}: not offered in mixed batches")
        entries = [(_canonical(n), m) for n, m in wrappers]
        if task.config.of(BitFitConfig):
            recomputed = {p for p, m in entries if isinstance(m, (PeltPostNorm, PeltHeadOutput))}
            entries += self._bias_deltas(task, recomputed)
        for path, entry in entries:
            self._site_at(path).entries.setdefault(task.name, []).append(entry)
        for head_name, site in self._heads.items():
            site.heads[task.name] = (getattr(task.model, head_name), task.num_labels)
        self._summary.heads[task.name] = task.config.head

    def _bias_deltas(self, task: Task, recomputed: set[str]) -> list[tuple[str, BiasDelta]]:
        """Every bias of a BitFit task, as a difference to the shared one, at the modules that no
        wrapper of the task recomputes on its rows (post-norm LayerNorms, multi-head projections)."""
        shared = dict(self._pristine.named_modules())
        prefix = self.model.base_model_prefix
        out = []
        for name, m in task.model.base_model.named_modules():
            plain, bias = _canonical(name), getattr(m, "bias", None)
            path = f"{prefix}.{plain}" if plain else prefix
            if isinstance(bias, nn.Parameter) and plain in shared and path not in recomputed:
                out.append((path, BiasDelta((bias - shared[plain].bias).detach())))
        return out

    # ---- running mixed batches
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: Sequence[str] = (),
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        tasks = list(tasks)
        if len(tasks) != input_ids.shape[0]:
            raise UniPeltError(f"tasks names {len(tasks)} rows, the batch has {input_ids.shape[0]}")
        if unknown := sorted(set(tasks) - self._tasks.keys()):
            raise UniPeltError(f"unknown task(s) {unknown}; loaded: {', '.join(self._tasks) or 'none'}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = input_ids.device
        names = list(dict.fromkeys(tasks))
        rows = {t: torch.tensor([i for i, x in enumerate(tasks) if x == t], device=device) for t in names}
        self.router.rows = rows
        self.router.prompt = torch.tensor([self._tasks[t].prompt_length for t in tasks], device=device)
        self.router.widest_prompt = int(self.router.prompt.max())
        self.router.prompt_at = self.spec.prompt_at
        for t in names:
            prompt = getattr(self._tasks[t].model, "pelt_prompt", None)
            if isinstance(prompt, CausalPrompt):
                prompt.refresh()
        try:
            with torch.no_grad():
                # segment ids stay as long as input_ids: BERT adds them before the prompt is inserted
                extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
                logits = self.model(input_ids=input_ids, attention_mask=self._mask(attention_mask), **extra).logits
        finally:
            self.router.rows = None
        return [logits[i, : self._tasks[t].num_labels] for i, t in enumerate(tasks)]

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The padding mask of the prompt layout: [first tokens, ones for the prompt, rest, zeros]."""
        widest, at = self.router.widest_prompt, self.router.prompt_at
        if widest == 0:
            return mask
        lengths = self.router.prompt
        b, t = mask.shape
        full = mask.new_zeros(b, t + widest)
        full[:, :at] = mask[:, :at]
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().flatten()
            full[rows, at : at + n] = 1
            full[rows, at + n : t + n] = mask[rows, at:]
        return full

    def predict(self, inputs: Sequence, tasks: Sequence[str], tokenizer, max_length: int | None = None) -> list[dict]:
        """Texts (or (text, text) pairs) for the named tasks: each row's label and scores, or value.
        A bare string is one input, and a bare task name applies to every input."""
        if isinstance(inputs, str):  # iterating it would make each character an input
            inputs = [inputs]
        if isinstance(tasks, str):
            tasks = [tasks] * len(inputs)
        if len(inputs) != len(tasks):
            raise UniPeltError(f"{len(inputs)} inputs but {len(tasks)} task names")
        if not inputs:
            raise UniPeltError("predict() needs at least one input (inputs and tasks are empty)")
        unknown = sorted(set(tasks) - set(self._tasks))
        if unknown:
            raise UniPeltError(f"unknown task {unknown[0]!r}; loaded: {', '.join(self._tasks) or 'none'}")
        for i, (row, name) in enumerate(zip(inputs, tasks)):
            check_input(self._tasks[name], row, i)
        model_limit = min(tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", 512))
        encoded = [
            _encode_input(tokenizer, row, max_length or self._tasks[name].max_length or model_limit, i)
            for i, (row, name) in enumerate(zip(inputs, tasks))
        ]
        batch = tokenizer.pad(encoded, return_tensors="pt")
        logits = self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            tasks=tasks,
            token_type_ids=batch.get("token_type_ids"),
        )
        return [self._answer(self._tasks[t], z) for t, z in zip(tasks, logits)]

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
