"""Phi-3: the Llama layout (pre-norm, rotary, grouped-query attention) with fused projections:
``qkv_proj`` = [q; k; v], q with ``num_attention_heads`` heads and k, v with ``num_key_value_heads``
each, and ``gate_up_proj`` = [gate; up] (``down(up * act(gate))``).

LoRA on q and v are LoRAs on those rows of ``qkv_proj``, each with its own A, B (and gate); LoRA
``ffn_in`` is one on the gate rows and one on the up rows, as Llama's on ``gate_proj`` and
``up_proj``; (IA)³ scales the k and v rows. Merging adds into those rows. The rotary embedding may
cover part of each head (``partial_rotary_factor``); prefix keys are prepended after it.
"""

from . import FFN, ArchSpec, Attention, Stack, fused, register

_HEADS = ("num_attention_heads", "num_key_value_heads", "num_key_value_heads")
_Q, _K, _V = fused("self_attn.qkv_proj", ("q", "k", "v"), _HEADS)

PHI3 = register(
    ArchSpec(
        model_types=("phi3",),
        stacks=(
            Stack(
                name="decoder",
                layers="layers",
                causal=True,
                attention=(Attention(input="self_attn", q=_Q, k=_K, v=_V, o="self_attn.o_proj"),),
                ffn=FFN(input="mlp", ffn_in=fused("mlp.gate_up_proj", ("gate", "up")), ffn_out=("mlp.down_proj",)),
            ),
        ),
        summary="last",
    )
)
