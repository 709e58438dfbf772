"""DistilBERT: post-norm like BERT, but the attention module holds its output projection
(``attention.out_lin``) and returns h itself; ``sa_layer_norm`` and ``output_layer_norm`` normalise
x + h. The classifier reads the first token, so the prompt follows [CLS]."""

from . import FFN, ArchSpec, Attention, Stack, register

DISTILBERT = register(
    ArchSpec(
        model_types=("distilbert",),
        stacks=(
            Stack(
                name="encoder",
                layers="transformer.layer",
                causal=False,
                attention=(
                    Attention(
                        input="attention",
                        norm="sa_layer_norm",
                        q="attention.q_lin",
                        k="attention.k_lin",
                        v="attention.v_lin",
                        o="attention.out_lin",
                    ),
                ),
                ffn=FFN(input="ffn", norm="output_layer_norm", ffn_in=("ffn.lin1",), ffn_out=("ffn.lin2",)),
            ),
        ),
        hidden_key="dim",
        head_dim="attention_head_size",
        embeddings="embeddings",
        prompt_at=1,
    )
)
