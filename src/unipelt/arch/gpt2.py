"""GPT-2: a pre-norm decoder, ``x + attn(ln_1(x))`` and ``x + mlp(ln_2(x))``, with learned absolute
positions (``wpe``) and ``Conv1D`` projections, which store W as (d_in, d_out).

Its attention computes q, k and v in one map, ``c_attn`` = [q; k; v]: LoRA on q and v are LoRAs on
those rows of ``c_attn`` (methods/lora.py), (IA)³ scales its k and v rows, and merging adds into
the transposed weight's columns (attention.weight_out_in). Prefix keys/values are prepended at the
attention function, which GPT-2 calls unless ``reorder_and_upcast_attn`` runs its own eager path
(off by default; unipelt's eager function takes that path's place when it is on).
The block takes the mask as its third positional argument (hidden states, cache, mask).
A decoder's prompt runs at positions 0..l-1 (``absolute_positions``) and the input keeps its own.
"""

from . import FFN, ArchSpec, Attention, Stack, fused, register

_Q, _K, _V = fused("attn.c_attn", ("q", "k", "v"))

GPT2 = register(
    ArchSpec(
        model_types=("gpt2",),
        stacks=(
            Stack(
                name="decoder",
                layers="h",
                causal=True,
                attention=(Attention(input="attn", q=_Q, k=_K, v=_V, o="attn.c_proj"),),
                ffn=FFN(input="mlp", ffn_in=("mlp.c_fc",), ffn_out=("mlp.c_proj",)),
                mask_position=2,
            ),
        ),
        absolute_positions=True,
        summary="last",
    )
)
