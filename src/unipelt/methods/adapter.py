"""Bottleneck adapters: sequential (Houlsby 2019, Pfeiffer 2021), parallel, scaled parallel and
multi-head parallel (He et al. 2022, §3-4), and UniPELT's gated adapter (Mao et al. 2022, §3).

    Δh = w(z) · W_up f(W_down z)        w = 1 (add), s (scaled) or G_A(z) (gated)

Where z comes from and where Δh goes is the wrapper's business (wrappers.py): a sequential
adapter reads the sublayer output, a parallel one the sublayer input. A multi-head adapter maps
to the concatenated head outputs, whose width (``d_out``) can differ from d (T5's d_kv·Nh).
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import Gate, LowRank, MaskSlot, composition_weight
from ..config import AdapterConfig


class Adapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, d: int, heads: int = 1, *, pooling: str, slot: MaskSlot,
                 d_out: int | None = None):
        super().__init__()
        groups = heads if cfg.target == "head" else 1  # one bottleneck per head's d/Nh slice
        self.block = LowRank(d, cfg.r, d_out or d, activation=cfg.activation, groups=groups,
                             init=cfg.init, dropout=cfg.dropout)
        weight = composition_weight(cfg.composition, d, scale=cfg.scale, learn_scale=cfg.learn_scale,
                                    pooling=pooling, slot=slot)
        # a Gate is stored as pelt_gate so that counting and gate_values find every gate by name
        self.pelt_gate = weight if isinstance(weight, Gate) else None
        self.scale = None if isinstance(weight, Gate) else weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.pelt_gate if self.pelt_gate is not None else self.scale
        return weight(z) * self.block(z)
