"""Everything that depends on transformers' attention and mask interfaces, in one file, and the
one transformers layer class the methods must recognise (GPT-2's ``Conv1D``, see ``weight_out_in``).

Prefix tuning needs the attention computation itself. Transformers 5 models call a function
looked up in ``ALL_ATTENTION_FUNCTIONS`` with the attention module first and the layer's extra
keyword arguments last; we register "unipelt_sdpa" and "unipelt_eager", which prepend the prefix
keys/values passed as the ``pelt_prefix`` keyword and extend the mask, then call the stock
function. A custom name also needs a mask function registered, or transformers silently passes
``mask=None`` and padding is ignored (SPEC §7). An attention that scores itself and calls no
such function (DeBERTa's disentangled attention) gets its prefix through ``attend``, which runs
this file's forward for that class instead (``_OWN_ATTENTION``).

The prefix is prepended after the model has updated its key/value cache and applied rotary
embeddings, so the cache holds real tokens only and position ids never count the prefix: cached
generation needs no bookkeeping beyond what transformers already does.

The transformers internals this file relies on, and the releases they were checked against
(the test suites pass on 5.17.0, the floor in pyproject.toml and .ci/run, and on 5.25.0):
- ``AttentionInterface`` / ``ALL_ATTENTION_FUNCTIONS``: models look up
  ``config._attn_implementation`` and call it as ``f(module, q, k, v, mask, **kwargs)``, passing
  the layer's extra keyword arguments through (5.17-5.25).
- ``set_attn_implementation``: 5.17-5.19 skip nested models whose config has the outer model's
  class, T5's stacks (``set_attention``); 5.20-5.25 reach them.
- ``AttentionMaskInterface`` with ``sdpa_mask``/``eager_mask`` called by keyword
  (``attention_mask``, ``q_length``, ``kv_length``) (5.17-5.25).
- ``sdpa_attention_forward`` with T5's ``position_bias`` keyword, merged into the mask by
  ``create_position_bias_mask``; until 5.24 that fills with the key dtype's minimum, which
  overflows a bf16 bias when the keys are float32 (5.25 fixed it; methods/ia3.py keeps keys in
  the base layer's dtype). Each model module's own ``eager_attention_forward`` (``_eager_for``).
- The output's ``cache`` (5.24+) or ``past_key_values``, and ``DynamicCache.layers[i].keys``.
- DeBERTa-v2's ``DisentangledSelfAttention``, which scores itself and calls no attention function:
  its forward's arguments and steps, ``transpose_for_scores``, ``disentangled_attention_bias``,
  ``pos_att_type``, ``pos_dropout`` and its module's ``scaled_size_sqrt`` (``_deberta_attention``;
  the class reads the same in 5.17 and 5.25, where 5.17 also TorchScripts the helpers).
- ``gradient_checkpointing`` and ``_gradient_checkpointing_func`` on the layers;
  ``pytorch_utils.Conv1D`` (5.17-5.25).
"""

from __future__ import annotations

import inspect
import sys
from typing import NamedTuple

import torch
import transformers
from torch import nn
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
from transformers.pytorch_utils import Conv1D

from .blocks import projecting_positions
from .errors import UniPeltError

PREFIX_KWARG = "pelt_prefix"


class Prefix(NamedTuple):
    keys: torch.Tensor  # (B, H_kv, l, dh)
    values: torch.Tensor  # (B, H_kv, l, dh)
    query_gate: torch.Tensor | None = None  # (B, 1, T, 1): a gate per query (causal layers), else None
    separate: bool = False  # attend to the prefix in a softmax of its own and add (no gating)
    visible: torch.Tensor | None = None  # (B, l) bool: which prefix positions each row sees (mixed-task batches)


def _eager_for(module: nn.Module):
    """The model's own eager attention: it knows the model's quirks (GQA's repeat_kv, T5's
    position bias), which a borrowed one would silently drop."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UniPeltError(f"{type(module).__name__} has no eager attention function; use attn_implementation='sdpa'")
    return fn


def _visible(mask: torch.Tensor, b: int, q: int, n: int) -> torch.Tensor:
    """n mask columns that let every query see its key: True (bool masks) or 0.0 (additive masks)."""
    make = torch.ones if mask.dtype == torch.bool else torch.zeros
    return make(b, mask.shape[1], q, n, dtype=mask.dtype, device=mask.device)


def _causal(query: torch.Tensor, key: torch.Tensor, additive: bool) -> torch.Tensor:
    """(1, 1, q, kv) causal mask over the input's keys, the prefix's columns going in front of it:
    the mask sdpa's is_causal would apply, which is aligned top-left. Transformers hands sdpa
    mask=None for several queries only where that alignment is right: keys and queries coincide,
    or an empty static cache's prefill, whose keys run on into the cache's unfilled slots."""
    mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()[None, None]
    if additive:
        return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~mask, torch.finfo(query.dtype).min
        )
    return mask


_PASSES = [0]  # forward passes of models with unipelt modules begun in this process


def new_pass() -> None:
    """A model's forward pass begins (``wrappers.BeforeModel``)."""
    _PASSES[0] += 1


def kept_on(tensor: torch.Tensor, name: str, held, key, make):
    """``make()``, kept on ``tensor`` itself for the next call with the same ``held`` (by identity)
    and ``key`` while ``tensor``'s contents (its version counter) and the inference mode are the
    same. Transformers hands every layer of a forward pass the same mask tensor, so what is made
    from it is made once per pass, and it goes when the mask goes: no thread or model holds it. A
    compiled graph makes it in-graph, where the compiler can share it."""
    if torch.compiler.is_compiling():
        return make()
    # an inference tensor counts no versions, and inference mode can write it in place: one pass
    version = ("pass", _PASSES[0]) if tensor.is_inference() else tensor._version
    key = (key, version, torch.is_inference_mode_enabled())
    hit = getattr(tensor, name, None)
    if hit is not None and hit[0] is held and hit[1] == key:
        return hit[2]
    value = make()
    setattr(tensor, name, (held, key, value))
    return value


def _prefixed_mask(mask: torch.Tensor, n: int, visible: torch.Tensor | None, b: int) -> torch.Tensor:
    """``mask`` with n columns in front that let every query see the prefix (or, with ``visible``,
    the prefix positions its row sees); made once per forward pass (``kept_on``)."""
    return kept_on(mask, "_pelt_prefixed", visible, (n, b), lambda: _prefix_columns(mask, n, visible, b))


def _prefix_columns(mask: torch.Tensor, n: int, visible: torch.Tensor | None, b: int) -> torch.Tensor:
    if visible is not None:
        mask = mask.expand(b, -1, -1, -1)
    columns = _visible(mask, mask.shape[0], mask.shape[2], n)
    if visible is not None:  # (B, l) -> (B, 1, 1, l), True/0.0 where seen
        seen = visible[:, None, None, :]
        columns = (
            seen
            if mask.dtype == torch.bool
            else torch.zeros_like(columns).masked_fill(~seen, torch.finfo(mask.dtype).min)
        )
        columns = columns.expand(mask.shape[0], mask.shape[1], mask.shape[2], n)
    return torch.cat([columns, mask], dim=-1)


def _prepend_prefix(module, query, key, value, mask, pk, pv, additive: bool, kwargs: dict, visible=None):
    n = pk.shape[2]
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    if mask is None and query.shape[2] > 1 and is_causal:
        mask = _causal(query, key, additive)
    key = torch.cat([pk.to(key.dtype), key], dim=2)  # (B, H_kv, l + S, dh)
    value = torch.cat([pv.to(value.dtype), value], dim=2)
    if visible is not None and mask is None:  # rows see different prefix positions: a mask is needed
        shape = (query.shape[0], 1, query.shape[2], key.shape[2] - n)
        mask = (
            torch.zeros(shape, dtype=query.dtype, device=query.device)
            if additive
            else torch.ones(shape, dtype=torch.bool, device=query.device)
        )
    if mask is not None:
        mask = _prefixed_mask(mask, n, visible, query.shape[0])
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5's relative position bias: none for the prefix positions
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:3], n), bias], dim=-1)
    return key, value, mask


def _widen_for_query_gate(query, key, value, prefix: Prefix, kwargs: dict):
    """Scale the prefix keys and values by a per-query gate g with the stock attention kernels.

    Every head gets a second half: token keys/values [k, 0] / [v, 0], prefix ones [0, p_k] /
    [0, p_v], queries [q, g·q]. Scores are then q·k for tokens and g·(q·p_k) for the prefix, and
    the output halves are Σa·v and Σa·p_v, recombined by ``_narrow`` as first + g·second: exactly
    attention over (g·p_k, g·p_v).
    """
    g = prefix.query_gate.to(query.dtype)  # (B, 1, T, 1)
    if kwargs.get("scaling") is None:  # the functions' default would read the doubled width
        kwargs["scaling"] = query.shape[-1] ** -0.5
    query = torch.cat([query, g * query], dim=-1)  # (B, H, T, 2dh)
    key, value = (torch.cat([t, torch.zeros_like(t)], dim=-1) for t in (key, value))  # (B, H_kv, S, 2dh)
    pk, pv = (torch.cat([torch.zeros_like(t), t], dim=-1) for t in (prefix.keys, prefix.values))
    return query, key, value, pk, pv


def _narrow(out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    half = out.shape[-1] // 2  # out: (B, T, H, 2dh)
    return out[..., :half] + g.transpose(1, 2).to(out.dtype) * out[..., half:]  # g: (B, T, 1, 1)


def _prefix_alone(query, prefix: Prefix, kwargs: dict) -> torch.Tensor:
    """softmax(q P_k^T) P_v over the prefix alone, (B, T, H, dh): He et al.'s Δh for prefix tuning
    without its gating (§3.1). No mask: every query sees every prefix position."""
    out = nn.functional.scaled_dot_product_attention(
        query,
        prefix.keys.to(query.dtype),
        prefix.values.to(query.dtype),
        scale=kwargs.get("scaling"),
        dropout_p=kwargs.get("dropout", 0.0),
        enable_gqa=True,
    )  # (B, H, T, dh)
    return out.transpose(1, 2)


def _make_attention(base_fn, additive: bool, prompt_at: int):
    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        fn = base_fn or _eager_for(module)
        if attention_mask is not None and attention_mask.shape[-1] < key.shape[2]:
            # cross-attention to an encoder input that prompt tuning lengthened (methods/prompt.py)
            m, at = attention_mask, prompt_at
            extra = _visible(m, m.shape[0], m.shape[2], key.shape[2] - m.shape[-1])
            attention_mask = torch.cat([m[..., :at], extra, m[..., at:]], dim=-1)
        prefix = kwargs.pop(PREFIX_KWARG, None)
        if prefix is None:
            return fn(module, query, key, value, attention_mask, **kwargs)
        if prefix.separate:
            out, weights = fn(module, query, key, value, attention_mask, **kwargs)
            return out + _prefix_alone(query, prefix, kwargs), weights
        pk, pv = prefix.keys, prefix.values
        if prefix.query_gate is not None:
            query, key, value, pk, pv = _widen_for_query_gate(query, key, value, prefix, kwargs)
        key, value, attention_mask = _prepend_prefix(
            module, query, key, value, attention_mask, pk, pv, additive, kwargs, prefix.visible
        )
        out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        return (out if prefix.query_gate is None else _narrow(out, prefix.query_gate)), weights

    return attention


def _deberta_attention(
    module: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    output_attentions: bool = False,
    query_states: torch.Tensor | None = None,
    relative_pos: torch.Tensor | None = None,
    rel_embeddings: torch.Tensor | None = None,
    *,
    prefix: Prefix,
):
    """``DisentangledSelfAttention.forward`` (DeBERTa-v2/v3) with the prefix as content-only keys
    and values: token scores are DeBERTa's own, q·k/√(dh·f) plus its relative-position terms
    (c2p, p2c) from the module's ``disentangled_attention_bias``; prefix keys get q·p_k/√(dh·f) alone,
    f = 1 + the number of position terms, since a prefix has no position (as T5's bias gives the
    prefix none). The module scores inside its forward and never calls the attention interface,
    so this is the one place its steps are written out: projections, scores, mask, softmax,
    values, in its order (same in 5.17-5.25). The padding mask is DeBERTa's (B, 1, T, T) 0/1
    product; prefix columns are 1, or ``prefix.visible`` in mixed-task batches.
    """
    if prefix.query_gate is not None:  # gates are per query only in causal layers; DeBERTa is an encoder
        raise UniPeltError("a per-query prefix gate cannot reach DeBERTa's encoder attention")
    heads, own = module.num_attention_heads, sys.modules[DisentangledSelfAttention.__module__]
    query_states = hidden_states if query_states is None else query_states
    q = module.transpose_for_scores(module.query_proj(query_states), heads)  # (B·H, T, dh)
    k = module.transpose_for_scores(module.key_proj(hidden_states), heads)
    v = module.transpose_for_scores(module.value_proj(hidden_states), heads)
    factor = 1 + sum(term in module.pos_att_type for term in ("c2p", "p2c"))
    scale = own.scaled_size_sqrt(q, factor).to(dtype=q.dtype)
    scores = torch.bmm(q, k.transpose(-1, -2) / scale)  # (B·H, T, S)
    if module.relative_attention:
        rel = module.pos_dropout(rel_embeddings)
        scores = scores + module.disentangled_attention_bias(q, k, relative_pos, rel, factor)
    scores = scores.view(-1, heads, *scores.shape[-2:])  # (B, H, T, S)
    scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(q.dtype).min)
    pk, pv = prefix.keys.to(q.dtype), prefix.values.to(q.dtype)  # (B, H, l, dh)
    q = q.view(-1, heads, *q.shape[-2:])  # (B, H, T, dh)
    prefix_scores = q @ (pk.transpose(-1, -2) / scale)  # (B, H, T, l)
    if prefix.visible is not None:
        prefix_scores = prefix_scores.masked_fill(~prefix.visible[:, None, None, :], torch.finfo(q.dtype).min)
    v = v.view(-1, heads, *v.shape[-2:])  # (B, H, S, dh)
    if prefix.separate:  # He et al.'s h + Δh: the prefix in a softmax of its own
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        out = probs @ v + module.dropout(nn.functional.softmax(prefix_scores, dim=-1)) @ pv
    else:
        probs = module.dropout(nn.functional.softmax(torch.cat([prefix_scores, scores], dim=-1), dim=-1))
        out = probs @ torch.cat([pv, v], dim=2)  # (B, H, T, dh)
    out = out.transpose(1, 2).flatten(2)  # (B, T, H·dh)
    return out, (probs if output_attentions else None)


class PositionMarked(DisentangledSelfAttention):
    """DeBERTa's attention whose ``disentangled_attention_bias``, which with ``share_att_key`` sends
    the relative-position embeddings, (1, 2·buckets, d), through q and k, tells gates that their
    input is positions, not tokens (``blocks.projecting_positions``): shapes alone cannot tell them
    apart when one row of 2·buckets tokens comes. A subclass the module's ``__class__`` is switched
    to, so copies, DataParallel replicas and pickles carry it with their own weights."""

    def disentangled_attention_bias(self, *args, **kwargs):
        with projecting_positions():
            return super().disentangled_attention_bias(*args, **kwargs)


def mark_position_passes(model: nn.Module) -> None:
    """Every DeBERTa attention module in ``model`` with ``share_att_key`` becomes ``PositionMarked``."""
    for module in model.modules():
        if type(module) is DisentangledSelfAttention and module.share_att_key:
            module.__class__ = PositionMarked


def unmark_position_passes(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is PositionMarked:
            module.__class__ = DisentangledSelfAttention


# attention modules that compute their scores themselves: the forward that adds a prefix there
_OWN_ATTENTION = {DisentangledSelfAttention: _deberta_attention}


def attend(module: nn.Module, args: tuple, kwargs: dict, prefix: Prefix | None):
    """Call the attention ``module`` with ``prefix``: as the ``pelt_prefix`` keyword, which the
    registered attention function takes, or where the module never calls that function
    (DeBERTa), through this file's forward for it."""
    if prefix is None:
        return module(*args, **kwargs)
    own = next((f for cls, f in _OWN_ATTENTION.items() if isinstance(module, cls)), None)
    if own is not None:
        return own(module, *args, prefix=prefix, **kwargs)
    current = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if current is not None and not current.startswith("unipelt_"):  # a stock function ignores the keyword
        raise UniPeltError(
            f"{type(module).__name__} runs the attention {current!r}, whose function would drop the prefix "
            f"(transformers {transformers.__version__}): unipelt.apply() sets 'unipelt_sdpa' or 'unipelt_eager', "
            "the same attention with the prefix; to change it afterwards, set one of those"
        )
    return module(*args, **{**kwargs, PREFIX_KWARG: prefix})


ANY_PROMPT = (0, 0)  # prompts of any length, in front: a shared model's rows carry several


def _make_mask(base_fn, prompt: tuple[int, int] | None):
    def mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
        # Prompt tuning lengthens the sequence by l after the user built the 2-D padding mask: the
        # prompt sits after the first ``at`` tokens (methods/prompt.py): insert ones there, in
        # self-attention over the lengthened input. A cross-attention's queries are the decoder's,
        # whatever their number: the attention function widens its mask (_make_attention).
        if attention_mask is not None and attention_mask.ndim == 2 and _lengthened(attention_mask, q_length, prompt):
            _check_right_padded(attention_mask)
            at = prompt[1]
            ones = attention_mask.new_ones(attention_mask.shape[0], q_length - attention_mask.shape[-1])
            attention_mask = torch.cat([attention_mask[:, :at], ones, attention_mask[:, at:]], dim=-1)
            kv_length = max(kv_length or 0, attention_mask.shape[-1])
        return base_fn(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)

    return mask


def _check_right_padded(mask: torch.Tensor) -> None:
    """The prompt sits at a fixed column: a row padded on the left would have its padding between
    the prompt and its tokens, and relative positions (T5's) would make its output depend on the
    rows it is batched with. (Not checked inside a compiled graph: it would break the graph.)"""
    if not torch.compiler.is_compiling() and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise UniPeltError(
            "prompt tuning inserts the prompt at a fixed column, so inputs must be padded on the "
            "right: set tokenizer.padding_side = 'right' (this batch has padding before real tokens)"
        )


def _lengthened(mask: torch.Tensor, q_length: int | None, prompt: tuple[int, int] | None) -> bool:
    if prompt is None or q_length is None:
        return False
    return mask.shape[-1] < q_length if prompt == ANY_PROMPT else mask.shape[-1] + prompt[0] == q_length


# eager: None = the model's own eager function, looked up per call
_BASES = {"sdpa": (sdpa_attention_forward, sdpa_mask, False), "eager": (None, eager_mask, True)}


def _register(base: str, prompt: tuple[int, int] | None) -> str:
    """The registered name of the unipelt variant of ``base`` for a prompt of l tokens inserted
    after ``at`` (``prompt`` = (l, at); None: nothing lengthens the input). The mask function is
    called without the model, so the name carries them."""
    name = f"unipelt_{base}" + ("" if prompt is None else f"_prompt_{prompt[0] or 'any'}_at_{prompt[1]}")
    attn, mask, additive = _BASES[base]
    AttentionInterface.register(name, _make_attention(attn, additive, 0 if prompt is None else prompt[1]))
    AttentionMaskInterface.register(name, _make_mask(mask, prompt))
    return name


for _name in _BASES:
    _register(_name, None)


def pelt_attention_base(name: str | None) -> str:
    """The stock implementation behind a unipelt one: "unipelt_sdpa_prompt_10_at_1" -> "sdpa"."""
    name = name or "eager"
    return name.removeprefix("unipelt_").split("_prompt_")[0] if name.startswith("unipelt_") else name


def use_pelt_attention(model: nn.Module, prompt: tuple[int, int] | None = None) -> None:
    """Switch ``model`` to the unipelt variant of the attention it uses now (sdpa or eager);
    ``prompt``: (l, at) where a prompt of l tokens inserted after ``at`` lengthens the input."""
    if any(isinstance(m, tuple(_OWN_ATTENTION)) for m in model.modules()):
        return  # its attention takes the prefix through _OWN_ATTENTION: no function to switch to
    current = model.config._attn_implementation or "eager"
    if current.startswith("unipelt_"):  # nested models may still lag (a MultiTask skeleton's copied stacks)
        set_attention(model, current)
        return
    if current not in _BASES:
        raise UniPeltError(
            f"prefix and prompt tuning support sdpa and eager attention, not {current!r}; "
            "load the model with attn_implementation='sdpa'"
        )
    set_attention(model, _register(current, prompt))


def set_attention(model: nn.Module, name: str) -> None:
    """Make every attention of ``model`` look up ``name``: the model and each nested
    ``PreTrainedModel`` with a config of its own.

    ``set_attn_implementation`` in transformers 5.17-5.19 skips the nested models whose config has
    the model's own class (its ``_attn_was_changed`` test): T5's encoder and decoder stacks, deep
    copies of the T5Config, kept "sdpa", so no prefix or prompt reached their attention and nothing
    said so (run on 5.17; 5.19's source has the same test, 5.20's does not). From 5.20 it reaches
    them itself and the loop finds nothing left to change (run on 5.25).
    """
    model.set_attn_implementation(name)
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(module, PreTrainedModel) and getattr(config, "_attn_implementation", name) != name:
            module.set_attn_implementation(name)


def token_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(B, T) bool: which of the last ``length`` key positions are real tokens.

    Reads the 4-D mask a layer receives: a key is real when some query sees it. One query row is
    not enough: under a sliding window (ModernBERT's local layers) the last query sees only its
    neighbours, and DeBERTa's 0/1 product mask m_i·m_j gives a padded query no key at all. None
    means no padding.
    """
    if attention_mask is None or attention_mask.ndim != 4:
        return None
    return kept_on(attention_mask, "_pelt_token_mask", None, length, lambda: _real_tokens(attention_mask, length))


def _real_tokens(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    m = attention_mask[:, 0, :, -length:]  # (B, T_q, T)
    if m.dtype.is_floating_point:
        m = m > torch.finfo(m.dtype).min / 2
    return m.bool().any(dim=1)


def checkpointing_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose activation checkpointing is on (transformers' ``gradient_checkpointing``
    flag, which can be switched on after ``apply``)."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def reentrant_checkpointing(module: nn.Module) -> bool:
    fn = getattr(module, "_gradient_checkpointing_func", None)  # a functools.partial of torch's checkpoint
    return bool(getattr(fn, "keywords", {}).get("use_reentrant", False))


def output_cache(output):
    """The cache a model output returns: ``cache`` in recent 5.x releases (5.24 here, where reading
    ``past_key_values`` warns), ``past_key_values`` in earlier ones."""
    cache = output.get("cache")
    return cache if cache is not None else output.past_key_values


def run_keeping_every_position(model: nn.Module, **kwargs):
    """``model(**kwargs)`` with a cache that keeps every position of every layer: a sliding-window
    model's own cache (Mistral, Gemma-2) keeps only a layer's last window - 1 positions."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(**kwargs, use_cache=True, **{name: DynamicCache()})


def cached_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (keys, values) held by a transformers 5 ``DynamicCache``, each (B, H_kv, T, dh)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or GPT-2's ``Conv1D``: a linear map LoRA can wrap."""
    return isinstance(module, (nn.Linear, Conv1D))


def features(linear: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear map: an ``nn.Linear`` or GPT-2's ``Conv1D`` (``nx``, ``nf``), also
    under unipelt's wrappers (``.base_layer``)."""
    while not isinstance(linear, (nn.Linear, Conv1D)) and hasattr(linear, "base_layer"):
        linear = linear.base_layer
    if isinstance(linear, Conv1D):
        return linear.nx, linear.nf
    return linear.in_features, linear.out_features


def weight_out_in(linear: nn.Module) -> torch.Tensor:
    """The weight of a linear map as (d_out, d_in), a view: in-place updates change the layer.

    ``Conv1D`` computes ``x W + b`` with W stored (d_in, d_out), the transpose of ``nn.Linear``'s.
    """
    return linear.weight.T if isinstance(linear, Conv1D) else linear.weight
