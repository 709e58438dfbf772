"""BERT (and the offline MiniLM, a 6-layer BERT)."""

from . import ArchSpec, register

BERT = register(ArchSpec(
    model_types=("bert",),
    layers="encoder.layer",
    embeddings="embeddings",
    self_attn="attention.self",
    attn_block="attention.output",
    ffn_block="output",
    linears={"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"},
    # BertForSequenceClassification classifies the pooler's output; RoBERTa's head holds the same
    # dense+tanh layer inside its classifier. Training the pooler keeps the two heads equivalent.
    head_in_base=("pooler",),
))
