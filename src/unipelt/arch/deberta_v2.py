"""DeBERTa-v2 and -v3 (model_type "deberta-v2"): BERT's post-norm layout with disentangled
attention (content and relative-position scores, He et al. 2021).

``DisentangledSelfAttention`` computes its scores itself, adding the relative-position terms
(c2p, p2c) before the softmax; it does not call transformers' attention interface, so prefix
keys and values cannot be prepended there without copying that forward (the trap STYLE.md names),
and the same holds for a prompt, whose positions its mask and relative positions would not cover.
Prefix and prompt tuning, and the presets that contain them (UniPELT, MAM), are refused;
adapters at every sublayer, multi-head adapters, LoRA, (IA)³ and BitFit work. Were the interface
adopted, a prefix would need relative-position scores of its own (none, like T5's bias here).

Its padding mask reaches the layers as a (B, 1, T, T) 0/1 product mask (attention.token_mask).
"""

from dataclasses import replace

from . import ArchSpec, Attention, register
from .bert import BERT

_STACK = BERT.stacks[0]
_ATTENTION = Attention(
    input="attention.self",
    norm="attention.output.LayerNorm",
    q="attention.self.query_proj",
    k="attention.self.key_proj",
    v="attention.self.value_proj",
    o="attention.output.dense",
)

DEBERTA_V2 = register(
    ArchSpec(
        model_types=("deberta-v2",),
        stacks=(replace(_STACK, attention=(_ATTENTION,)),),
        head_dim="attention_head_size",
        embeddings="embeddings",
        prompt_at=1,
        no_attention_hook="DisentangledSelfAttention computes its relative-position attention itself and "
        "does not call transformers' attention interface, where unipelt adds prefixes",
    )
)
