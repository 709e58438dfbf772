"""Llama family (SmolLM2 included): pre-norm decoder with rotary positions, grouped-query
attention and a gated FFN (``down(act(gate(x)) * up(x))``).

Prefix keys/values have ``num_key_value_heads`` heads and are prepended after the rotary
embedding (attention.py), so they carry no position. Prompt tuning inserts no tokens here: the
prompt's own keys and values become a prefix (methods/prompt.py, ``CausalPrompt``).
"""

from . import FFN, ArchSpec, Attention, Stack, register

LLAMA = register(
    ArchSpec(
        model_types=("llama",),
        stacks=(
            Stack(
                name="decoder",
                layers="layers",
                causal=True,
                attention=(
                    Attention(
                        input="self_attn",
                        q="self_attn.q_proj",
                        k="self_attn.k_proj",
                        v="self_attn.v_proj",
                        o="self_attn.o_proj",
                    ),
                ),
                ffn=FFN(input="mlp", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out=("mlp.down_proj",)),
            ),
        ),
        summary="last",
    )
)
