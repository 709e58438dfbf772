"""Gemma and Gemma-2: the Llama layout with scaled input embeddings.

Gemma-2 adds a norm after each sublayer (``post_attention_layernorm``, ``post_feedforward_layernorm``):
adapters go around the attention and MLP modules, so their Δh is normalised with h before the
residual sum. Its attention logits are soft-capped, ``c·tanh(s/c)``, by the model's own eager
function, which the unipelt attention calls after prepending the prefix: prefix scores are capped
like the tokens'. Its sliding-window layers get their mask from transformers' mask functions;
prefix columns are prepended visible, so every query sees the prefix whatever the window hides.
Gemma-2 has no sdpa attention (sdpa cannot soft-cap): it runs eager.
"""

from dataclasses import replace

from . import register
from .llama import LLAMA

GEMMA = register(replace(LLAMA, model_types=("gemma", "gemma2")))
