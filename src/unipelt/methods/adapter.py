"""Bottleneck adapters: sequential (Houlsby 2019, Pfeiffer 2021), parallel, scaled parallel and
multi-head parallel (He et al. 2022, §3-4), and UniPELT's gated adapter (Mao et al. 2022, §3).

    A(z) = W_up f(W_down z)
    h' = h + w(z)·A(z)            w = 1 (add), s (scaled) or G_A(z) (gated)
    h' = (1 - λ(z))·h + λ(z)·A(z)    (interpolate: He et al.'s gated addition)

Where z comes from and which h it modifies is the wrapper's business (wrappers.py): a
sequential adapter reads a sublayer output, a parallel one the sublayer input. A multi-head
adapter reads the attention's query projection, one bottleneck per head's slice (He et al.
§3.3), and maps to the concatenated head outputs, whose width (``d_out``) can differ from d
(T5's d_kv·Nh).
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
        groups = heads if cfg.target == "head" else 1  # one bottleneck per head's slice of z
        self.block = LowRank(d, cfg.r, d_out or d, activation=cfg.activation, groups=groups,
                             init=cfg.init, dropout=cfg.dropout)
        weight = composition_weight(cfg.composition, d, scale=cfg.scale, learn_scale=cfg.learn_scale,
                                    pooling=pooling, slot=slot)
        # a Gate is stored as pelt_gate so that counting and gate_values find every gate by name
        self.pelt_gate = weight if isinstance(weight, Gate) else None
        self.scale = None if isinstance(weight, Gate) else weight
        self.interpolates = cfg.composition == "interpolate"

    def forward(self, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """What to add to h: w(z)·A(z), or λ(z)·(A(z) - h) when interpolating."""
        weight = self.pelt_gate if self.pelt_gate is not None else self.scale
        delta = self.block(z)
        return weight(z) * (delta - h if self.interpolates else delta)
