"""ModernBERT: a pre-norm encoder, ``x + attn(attn_norm(x))`` and ``x + mlp(mlp_norm(x))`` (layer 0's
``attn_norm`` is the identity), rotary positions, a gated FFN (``Wo(act(input) * gate)`` from one
``Wi``) and alternating local (sliding-window) and global attention layers.

``Wqkv`` computes [q; k; v] in one map: LoRA on q and v are LoRAs on those rows, (IA)³ scales the
k and v rows. The attention calls transformers' attention interface with the mask of its layer
type; prefix columns are prepended visible, so every token sees the prefix whatever its local
window hides. A prompt follows [CLS] (the classifier pools the first token by default) and takes
ordinary positions: the rotary embedding is computed for the lengthened sequence (``rotary``).
"""

from . import FFN, ArchSpec, Attention, Stack, fused, register

_Q, _K, _V = fused("attn.Wqkv", ("q", "k", "v"))

MODERNBERT = register(
    ArchSpec(
        model_types=("modernbert",),
        stacks=(
            Stack(
                name="encoder",
                layers="layers",
                causal=False,
                attention=(Attention(input="attn", q=_Q, k=_K, v=_V, o="attn.Wo"),),
                ffn=FFN(input="mlp", ffn_in=("mlp.Wi",), ffn_out=("mlp.Wo",)),
            ),
        ),
        embeddings="embeddings",
        prompt_at=1,
        no_prompt_if=(
            "classifier_pooling",
            "mean",
            "its head averages over the caller's mask, which the prompt lengthens; classifier_pooling='cls' "
            "reads the first token",
        ),
        rotary="rotary_emb",
        summary=None,
    )
)
