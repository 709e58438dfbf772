"""Everything that depends on transformers' attention and mask interfaces, in one file.

Prefix tuning needs the attention computation itself. Transformers 5 models call a function
looked up in ``ALL_ATTENTION_FUNCTIONS`` with the attention module first and the layer's extra
keyword arguments last; we register "unipelt_sdpa" and "unipelt_eager", which prepend the prefix
keys/values passed as the ``pelt_prefix`` keyword and extend the mask, then call the stock
function. A custom name also needs a mask function registered, or transformers silently passes
``mask=None`` and padding is ignored (SPEC §7).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.bert.modeling_bert import eager_attention_forward

from .errors import UniPeltError

PREFIX_KWARG = "pelt_prefix"
_BASES = {"sdpa": (sdpa_attention_forward, sdpa_mask), "eager": (eager_attention_forward, eager_mask)}


def _prepend_prefix(key, value, mask, prefix):
    pk, pv = prefix  # (B, H, l, dh) each
    key = torch.cat([pk.to(key.dtype), key], dim=2)
    value = torch.cat([pv.to(value.dtype), value], dim=2)
    if mask is not None:
        b, _, q, _ = mask.shape
        # True (bool masks) or 0.0 (additive masks) lets every query see every prefix position
        visible = torch.ones if mask.dtype == torch.bool else torch.zeros
        mask = torch.cat([visible(b, 1, q, pk.shape[2], dtype=mask.dtype, device=mask.device)
                          .expand(b, mask.shape[1], q, -1), mask], dim=-1)
    return key, value, mask


def _make_attention(base_fn):
    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        prefix = kwargs.pop(PREFIX_KWARG, None)
        if prefix is not None:
            key, value, attention_mask = _prepend_prefix(key, value, attention_mask, prefix)
        return base_fn(module, query, key, value, attention_mask, **kwargs)
    return attention


def _make_mask(base_fn):
    def mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
        # Prompt tuning lengthens the sequence after the user built the 2-D padding mask: the
        # prompt sits right after the first token (see methods/prompt.py), so insert ones there.
        if attention_mask is not None and attention_mask.ndim == 2 and q_length is not None \
                and attention_mask.shape[-1] < q_length:
            extra = q_length - attention_mask.shape[-1]
            ones = attention_mask.new_ones(attention_mask.shape[0], extra)
            attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=-1)
            kv_length = max(kv_length or 0, attention_mask.shape[-1])
        return base_fn(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)
    return mask


for _name, (_attn, _mask) in _BASES.items():
    AttentionInterface.register(f"unipelt_{_name}", _make_attention(_attn))
    AttentionMaskInterface.register(f"unipelt_{_name}", _make_mask(_mask))


def use_pelt_attention(model: nn.Module) -> None:
    """Switch ``model`` to the unipelt variant of the attention it uses now (sdpa or eager)."""
    current = model.config._attn_implementation or "eager"
    if current.startswith("unipelt_"):
        return
    if current not in _BASES:
        raise UniPeltError(f"prefix and prompt tuning support sdpa and eager attention, not {current!r}; "
                           "load the model with attn_implementation='sdpa'")
    model.set_attn_implementation(f"unipelt_{current}")


def token_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(B, T) bool: which of the last ``length`` key positions are real tokens.

    Reads the 4-D mask a layer receives. The last query row sees every real token under both
    bidirectional and causal masks. None means no padding.
    """
    if attention_mask is None or attention_mask.ndim != 4:
        return None
    row = attention_mask[:, 0, -1, -length:]
    if row.dtype == torch.bool:
        return row
    return row > torch.finfo(row.dtype).min / 2
