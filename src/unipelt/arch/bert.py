"""BERT (and the offline MiniLM, a 6-layer BERT): post-norm, ``LN(drop(dense(h)) + x)`` blocks.

The pooler is part of the frozen base model, as in UniPELT's code, ``adapters`` and peft; train it
with ``PeltConfig(modules_to_save=("pooler",))``."""

from . import FFN, ArchSpec, Attention, Stack, register

BERT = register(
    ArchSpec(
        model_types=("bert",),
        stacks=(
            Stack(
                name="encoder",
                layers="encoder.layer",
                causal=False,
                attention=(
                    Attention(
                        input="attention.self",
                        norm="attention.output.LayerNorm",
                        q="attention.self.query",
                        k="attention.self.key",
                        v="attention.self.value",
                        o="attention.output.dense",
                    ),
                ),
                ffn=FFN(
                    input="intermediate",
                    norm="output.LayerNorm",
                    ffn_in=("intermediate.dense",),
                    ffn_out=("output.dense",),
                ),
            ),
        ),
        head_dim="attention_head_size",
        embeddings="embeddings",
        prompt_at=1,  # after [CLS]: the pooler and the classifier read position 0
    )
)
