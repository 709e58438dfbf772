"""T5: pre-norm encoder-decoder. Each block is a list of sublayers: self-attention, (decoder)
cross-attention, FFN; the FFN is ``wi`` or, in T5 v1.1 / Flan-T5, the gated ``wi_0``/``wi_1``."""

from . import FFN, ArchSpec, Attention, Stack, register


def _attention(module: str, cross: bool = False) -> Attention:
    return Attention(input=module, cross=cross, q=f"{module}.q", k=f"{module}.k", v=f"{module}.v", o=f"{module}.o")


def _ffn(i: int) -> FFN:
    ffn = f"layer.{i}.DenseReluDense"
    return FFN(input=ffn, ffn_in=(f"{ffn}.wi", f"{ffn}.wi_0", f"{ffn}.wi_1"), ffn_out=(f"{ffn}.wo",))


T5 = register(
    ArchSpec(
        model_types=("t5",),
        stacks=(
            Stack(
                name="encoder",
                layers="encoder.block",
                causal=False,
                attention=(_attention("layer.0.SelfAttention"),),
                ffn=_ffn(1),
            ),
            Stack(
                name="decoder",
                layers="decoder.block",
                causal=True,
                ffn=_ffn(2),
                attention=(_attention("layer.0.SelfAttention"), _attention("layer.1.EncDecAttention", cross=True)),
            ),
        ),
        hidden_key="d_model",
        head_dim="key_value_proj_dim",
        embeddings="encoder.embed_tokens",
        summary=None,
        eos_head=True,
    )
)
