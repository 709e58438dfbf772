"""DeBERTa-v2 and -v3 (model_type "deberta-v2"): BERT's post-norm layout with disentangled
attention (content and relative-position scores, He et al. 2021).

``DisentangledSelfAttention`` computes its scores itself, adding the relative-position terms
(c2p, p2c) before the softmax, and never calls transformers' attention interface; attention.py
holds the one forward that adds a prefix there, as content-only keys and values (no relative
position for prefix positions). So prefix tuning, UniPELT and MAM work, as do adapters at every
sublayer, multi-head adapters, LoRA, (IA)³ and BitFit. Prompt tuning is refused: the model builds
its padding mask from the user's mask inside itself (embeddings and encoder), not through the
mask interface where unipelt lengthens it for the inserted prompt.

Its padding mask reaches the layers as a (B, 1, T, T) 0/1 product mask (attention.token_mask).
With ``share_att_key`` (DeBERTa-v3) the relative-position embeddings go through q and k too; a
gate there averages every position, never the tokens' mask (attention.mark_position_passes).
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
        no_prompt="DeBERTa builds its padding mask inside the model (embeddings and encoder), not through "
        "transformers' mask interface, where unipelt lengthens it for the prompt's positions",
    )
)
