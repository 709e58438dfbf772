"""mBART (He et al. 2022's en-ro setting): BART's module names, but pre-norm, ``x + f(LN(x))``
for every sublayer, with an inline FFN (``fc2(act(fc1(LN(x))))`` written out in the layer).

The attention modules return h, so every method goes there as in Llama and T5. The FFN has no
module that both receives x and returns h: adapters wrap ``fc2`` (``output``), whose output is h,
and parallel ones read x from a tap on ``fc1``.
"""

from . import FFN, ArchSpec, Attention, Stack, register


def _attention(module: str, cross: bool = False) -> Attention:
    return Attention(
        input=module,
        cross=cross,
        q=f"{module}.q_proj",
        k=f"{module}.k_proj",
        v=f"{module}.v_proj",
        o=f"{module}.out_proj",
    )


_FFN = FFN(input="fc1", output="fc2", ffn_in=("fc1",), ffn_out=("fc2",))

MBART = register(
    ArchSpec(
        model_types=("mbart",),
        stacks=(
            Stack(
                name="encoder", layers="encoder.layers", causal=False, attention=(_attention("self_attn"),), ffn=_FFN
            ),
            Stack(
                name="decoder",
                layers="decoder.layers",
                causal=True,
                ffn=_FFN,
                attention=(_attention("self_attn"), _attention("encoder_attn", cross=True)),
            ),
        ),
        hidden_key="d_model",
        embeddings="encoder.embed_tokens",
        summary=None,
        eos_head=True,
    )
)
