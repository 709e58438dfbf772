"""Mistral: the Llama layout (pre-norm, rotary, grouped-query attention, gated FFN) with an
optional sliding window. Prefix keys sit outside the window: every query sees them, whatever
the window hides (attention.py prepends visible mask columns)."""

from dataclasses import replace

from . import register
from .llama import LLAMA

MISTRAL = register(replace(LLAMA, model_types=("mistral",)))
