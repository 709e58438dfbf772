"""Prompt tuning (Lester et al. 2021): ``l`` trainable vectors inserted into the input only.

The prompt goes right after the first token so that poolers reading position 0 (BERT's [CLS])
still read it; the mask function in attention.py inserts the matching ones into the padding mask.
In encoder-decoders it joins the encoder input, as in Lester et al.'s T5 setting; attention.py
widens the decoder's cross-attention mask to match. Decoder-only models are not offered it
(arch/llama.py says why).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PromptConfig
from ..wrappers import Wrapper


class PeltEmbeddings(Wrapper):
    def __init__(self, base_layer: nn.Module, cfg: PromptConfig, d: int):
        super().__init__(base_layer)
        ref = next(base_layer.parameters())
        # unit variance: the prompt joins the embeddings after their LayerNorm
        self.pelt_prompt = nn.Parameter(torch.randn(cfg.length, d).to(device=ref.device, dtype=ref.dtype))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        e = self.base_layer(*args, **kwargs)  # (B, T, d)
        p = self.pelt_prompt.to(e.dtype).expand(e.shape[0], -1, -1)  # (B, l, d)
        return torch.cat([e[:, :1], p, e[:, 1:]], dim=1)
