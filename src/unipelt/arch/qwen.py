"""Qwen2 and Qwen3: the Llama layout. Qwen2 has biases on q/k/v (BitFit trains them); Qwen3 has
none but normalises queries and keys per head (``q_norm``/``k_norm``) before the rotary embedding,
so prefix keys, prepended after both, are neither normalised nor rotated."""

from dataclasses import replace

from . import register
from .llama import LLAMA

QWEN = register(replace(LLAMA, model_types=("qwen2", "qwen3")))
