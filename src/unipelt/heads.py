"""The task head: which summary of the sequence the classifier reads (SPEC §4).

UniPELT trains a linear classifier on BERT-base's *pretrained* summary, its NSP-trained [CLS]
pooler. On another backbone that role falls to the backbone's own pretrained summary: a
sentence-transformers model declares it in ``1_Pooling/config.json`` (the offline MiniLM: the
masked mean; its BERT pooler was never trained, SPEC §5), a decoder's is its last real token.

- "model": the model class's head as transformers built it.
- "pooler": BERT's pooler, then dropout and the classifier ("model" where there is a pooler).
- "mean": the masked mean of the last hidden states over real tokens (no pooler, no L2
  normalisation), then the head's dropout and linear map.
- "last": the last real token's hidden state, likewise.
- "auto": what ``resolve`` picks from the model itself.

"mean" and "last" go where the model's own head reads its summary: BERT's ``pooler_output``,
else the token ``ArchSpec.summary`` names (RoBERTa's <s>, whose head's dense layer then trains as
part of the head); a decoder's head reads the last token that is not padding by its own rule, so
there every position holds the summary. A forward hook on the base model puts it there,
reading the padding mask from the call's own arguments: concurrent calls share no state.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UniPeltError
from .offline import switched_on

POOLING = Path("1_Pooling") / "config.json"  # sentence-transformers' pooling declaration
SUMMARIES = ("mean", "last")  # the heads that replace what the model's own head reads


def declared(path: str | Path) -> str | None:
    """The summary a sentence-transformers model declares, in its directory or on the hub under
    that name: "mean", "last" or None."""
    file = Path(path) / POOLING if Path(path).is_dir() else _from_hub(str(path))
    if file is None:
        return None
    try:
        data = json.loads(file.read_text("utf-8")) if file.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("pooling_mode_mean_tokens") is True:
        return "mean"
    if data.get("pooling_mode_lasttoken") is True:
        return "last"
    return None


@functools.lru_cache(maxsize=64)
def _from_hub(name: str) -> Path | None:
    """``POOLING`` of the hub model ``name``: from the local cache (where sentence-transformers
    keeps the whole snapshot), else asked of the hub for a model transformers fetched from it
    (its config.json is cached) while the hub is not switched off; None where it has none. Once
    per name and process: a hub that does not answer costs its retries once."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return None  # a path, not a repo id: nothing of it goes to the hub
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    switched_off = constants.HF_HUB_OFFLINE or switched_on("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") is not None
    try:
        cached = try_to_load_from_cache(name, POOLING.as_posix())
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None or switched_off or not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None  # known absent, no hub to ask, or no model of the hub's
        return Path(hf_hub_download(name, POOLING.as_posix(), etag_timeout=5))
    except Exception:  # noqa: BLE001 - not a repo id, no such file, no network: nothing declared
        return None


def classifies(model: nn.Module) -> bool:
    """The model has a task head outside its base model, and it is not a language model's."""
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return model.base_model is not model and lm_head is None


def resolve(model: nn.Module, head: str) -> str:
    """``head`` with "auto" replaced by the backbone's own pretrained summary."""
    if head != "auto":
        return head
    if not classifies(model):
        return "model"
    source = getattr(model.config, "_name_or_path", "") or ""
    return (declared(source) if source else None) or "model"


def place_of(model: nn.Module, spec) -> str | None:
    """Where the model's own head reads its summary: "pooler", "first", "last" or None."""
    return "pooler" if getattr(model.base_model, "pooler", None) is not None else spec.summary


def check(model: nn.Module, head: str, spec) -> None:
    """Refuse a head this model cannot have, before anything is changed."""
    kind = type(model).__name__
    if head in ("model", "auto"):
        return
    if not classifies(model):
        raise UniPeltError(f"head {head!r} needs a classifier (AutoModelForSequenceClassification); {kind} has none")
    if head == "pooler" and getattr(model.base_model, "pooler", None) is None:
        raise UniPeltError(f"head 'pooler': {kind} has no pooler; use 'mean', 'last' or 'model'")
    if head in SUMMARIES and place_of(model, spec) is None:
        raise UniPeltError(
            f"head {head!r} is not offered on {kind}: its classification head reads something else than one "
            "token's state (an eos state, or its own pooling); use head='model'"
        )


def real_tokens(mask: torch.Tensor | None, hidden: torch.Tensor, prompt_at: int) -> torch.Tensor:
    """(B, T) bool over ``hidden``'s positions. A prompt inserted after ``prompt_at`` tokens
    lengthens the hidden states past the caller's mask: its positions count as real."""
    b, t = hidden.shape[:2]
    if mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    extra = t - mask.shape[1]
    if extra > 0:
        ones = mask.new_ones(b, extra)
        mask = torch.cat([mask[:, :prompt_at], ones, mask[:, prompt_at:]], dim=1)
    return mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the position of each row's last real token (right or left padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask * positions).argmax(dim=1)


def summarize(hidden: torch.Tensor, mask: torch.Tensor, head: str) -> torch.Tensor:
    """(B, d): the masked mean over real tokens, or the last real token's state."""
    if head == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index(mask)]


# where a base model's tuple output (return_dict=False) holds what its ModelOutput names
_POSITIONS = {"last_hidden_state": 0, "pooler_output": 1}


def field(out, name: str) -> torch.Tensor:
    return out[_POSITIONS[name]] if isinstance(out, tuple) else out[name]


def _replace(out, name: str, value: torch.Tensor):
    if isinstance(out, tuple):
        i = _POSITIONS[name]
        return (*out[:i], value, *out[i + 1 :])
    out[name] = value
    return out


def put(out, summary: torch.Tensor, place: str, rows: torch.Tensor | None = None):
    """``out`` with ``summary`` where the head reads it, on ``rows`` (all rows when None)."""
    if place == "pooler":
        old = field(out, "pooler_output")
        # under autocast the pooler's output is the Linear's bf16, a mean of LayerNorm outputs float32
        placed = summary if rows is None else old.index_put((rows,), summary.to(old.dtype))
        return _replace(out, "pooler_output", placed)
    hidden = field(out, "last_hidden_state")
    rows = torch.arange(hidden.shape[0], device=hidden.device) if rows is None else rows
    if place == "first":
        return _replace(out, "last_hidden_state", hidden.index_put((rows, torch.zeros_like(rows)), summary))
    # a decoder's head reads the last token that is not the pad id (transformers' rule, not the
    # mask's: pad = eos, or no mask given, puts it elsewhere): every position holds the summary
    every = summary[:, None, :].expand(-1, hidden.shape[1], -1)
    return _replace(out, "last_hidden_state", hidden.index_put((rows,), every))


def mask_argument(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The padding mask a base model was called with (HF heads pass it by name; BERT's order too)."""
    if "attention_mask" in kwargs:
        return kwargs["attention_mask"]
    return args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None


@dataclass(frozen=True)
class Summary:
    """The forward hook that gives the base model's output a "mean" or "last" summary."""

    head: str
    place: str
    prompt_at: int = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, out):
        hidden = field(out, "last_hidden_state")
        mask = real_tokens(mask_argument(args, kwargs), hidden, self.prompt_at)
        return put(out, summarize(hidden, mask, self.head), self.place)


def attach(model: nn.Module, head: str, spec, prompt_at: int = 0) -> None:
    """Give ``model`` the (resolved, checked) ``head``; "model" and "pooler" change nothing."""
    if head in SUMMARIES:
        model.base_model.register_forward_hook(Summary(head, place_of(model, spec), prompt_at), with_kwargs=True)


def detach(model: nn.Module) -> None:
    """Remove the hook ``attach`` added. Found by its type, not a handle: a handle kept on the
    model would, in a deep copy (MultiTask's skeletons), still point at the original's hooks."""
    hooks = model.base_model._forward_hooks
    for key in [k for k, hook in hooks.items() if isinstance(hook, Summary)]:
        del hooks[key]
        model.base_model._forward_hooks_with_kwargs.pop(key, None)
