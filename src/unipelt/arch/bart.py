"""BART: post-norm encoder-decoder whose FFN is two inline linears (fc1, fc2) in the layer.

Prefix, adapters and LoRA can go to the encoder's and decoder's self-attention and to the
decoder's cross-attention (He et al. 2022 use all three; ``attention=`` in the configs picks).
"""

from . import FFN, ArchSpec, Attention, Stack, register


def _attention(module: str, norm: str, cross: bool = False) -> Attention:
    return Attention(
        input=module,
        norm=norm,
        cross=cross,
        q=f"{module}.q_proj",
        k=f"{module}.k_proj",
        v=f"{module}.v_proj",
        o=f"{module}.out_proj",
    )


_FFN = FFN(input="fc1", norm="final_layer_norm", ffn_in=("fc1",), ffn_out=("fc2",))
_SELF = _attention("self_attn", "self_attn_layer_norm")

BART = register(
    ArchSpec(
        model_types=("bart",),
        stacks=(
            Stack(name="encoder", layers="encoder.layers", causal=False, attention=(_SELF,), ffn=_FFN),
            Stack(
                name="decoder",
                layers="decoder.layers",
                causal=True,
                ffn=_FFN,
                attention=(_SELF, _attention("encoder_attn", "encoder_attn_layer_norm", cross=True)),
            ),
        ),
        hidden_key="d_model",
        embeddings="encoder.embed_tokens",  # prompt tuning: the source side, as Lester et al. do for T5
        summary=None,
        eos_head=True,
    )
)
