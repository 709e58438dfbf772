"""LoRA (Hu et al. 2021): ``W x + s · B A x`` with B zero-initialised, so training starts at W.

UniPELT (Mao et al. 2022, §3) makes s input-dependent, ``θ = θ0 + G_L · δ``, with one gate per
target computed from the linear's input (for q and v that is the layer input h_in). As in the
official code the gate replaces alpha/r. Only ungated LoRA can be merged into W.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import Gate, LowRank, MaskSlot, composition_weight
from ..config import LoRAConfig
from ..errors import UniPeltError
from ..wrappers import Wrapper


class LoRALinear(Wrapper):
    def __init__(self, base_layer: nn.Linear, cfg: LoRAConfig, *, pooling: str, slot: MaskSlot):
        super().__init__(base_layer)
        d_in, d_out = base_layer.in_features, base_layer.out_features
        self.pelt_lora = LowRank(d_in, cfg.r, d_out, bias=False, init="lora", dropout=cfg.dropout)
        weight = composition_weight("gated" if cfg.composition == "gated" else "scaled", d_in,
                                    scale=cfg.alpha / cfg.r, pooling=pooling, slot=slot)
        self.pelt_gate = weight if isinstance(weight, Gate) else None
        self.scale = None if isinstance(weight, Gate) else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.pelt_gate(x) if self.pelt_gate is not None else self.scale.value
        out = self.base_layer(x)  # (..., d_out), contiguous; its backward needs x and W, not out
        lora = self.pelt_lora
        # w·(B A x) = (w·A x) B: scale the r-wide bottleneck instead of the d-wide output, and add
        # into out in place, which saves two passes over a (B, T, d) tensor per projection
        low = lora.bottleneck(x) * weight  # (..., r)
        return out.view(-1, out.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), lora.up[0]).view(out.shape)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold ``s · B A`` into the base weight and return the plain linear layer."""
        if self.pelt_gate is not None:
            raise UniPeltError("a gated LoRA depends on the input through its gate and cannot be merged")
        base = self.base_layer
        delta = self.scale.value * self.pelt_lora.delta_weight()
        base.weight += delta.to(base.weight.dtype)
        return base
