"""Prefix tuning (Li & Liang 2021) with UniPELT's gate (Mao et al. 2022, §3).

``l`` key and value vectors are prepended at every self-attention. They are trained through a
reparameterisation shared by all layers, ``Embedding(l, d) -> Linear(d, mid) -> tanh ->
Linear(mid, 2·L·d)``; ``fold`` replaces it by the 2·L (l, d) matrices it produces, which is all
that inference and checkpoints need. Gated: ``G_P(h_in)`` scales the prefix keys and values only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import Gate, MaskSlot
from ..config import PrefixConfig


class PrefixEncoder(nn.Module):
    """All layers' prefixes: the reparameterisation network, or after ``fold`` its output."""

    def __init__(self, cfg: PrefixConfig, d: int, layers: int):
        super().__init__()
        self.length, self.d, self.layers = cfg.length, d, layers
        self.folded: nn.Parameter | None = None
        self.embedding = nn.Embedding(cfg.length, d)
        self.mlp_in = nn.Linear(d, cfg.mid_dim)
        self.mlp_out = nn.Linear(cfg.mid_dim, 2 * layers * d)
        if not cfg.reparameterize:
            self.fold()

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, each (l, d)."""
        if self.folded is not None:
            return self.folded[layer, 0], self.folded[layer, 1]
        hid = torch.tanh(self.mlp_in(self.embedding.weight))  # (l, mid)
        rows = slice(2 * layer * self.d, 2 * (layer + 1) * self.d)  # only this layer's outputs
        out = nn.functional.linear(hid, self.mlp_out.weight[rows], self.mlp_out.bias[rows])  # (l, 2d)
        return out[:, : self.d], out[:, self.d :]

    def table(self) -> torch.Tensor:
        """(L, 2, l, d): every layer's keys and values."""
        return torch.stack([torch.stack(self.kv(i)) for i in range(self.layers)])

    @torch.no_grad()
    def fold(self) -> None:
        if self.folded is not None:
            return
        requires_grad = self.embedding.weight.requires_grad
        self.folded = nn.Parameter(self.table().detach().clone(), requires_grad=requires_grad)
        del self.embedding, self.mlp_in, self.mlp_out
        self.embedding = self.mlp_in = self.mlp_out = None

    def inference_numel(self) -> int:
        return 2 * self.layers * self.length * self.d


class LayerPrefix(nn.Module):
    """One layer's view of the shared encoder, plus that layer's gate."""

    def __init__(self, encoder: PrefixEncoder, layer: int, heads: int, gated: bool,
                 *, pooling: str, slot: MaskSlot):
        super().__init__()
        self.__dict__["encoder"] = encoder  # owned by the model; registering it here would repeat it per layer
        self.layer, self.heads = layer, heads
        self.pelt_gate = Gate(encoder.d, pooling, slot) if gated else None

    def forward(self, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.encoder.kv(self.layer)  # (l, d)
        b, length = h_in.shape[0], k.shape[0]
        k = k.view(length, self.heads, -1).transpose(0, 1).expand(b, -1, -1, -1)  # (B, H, l, dh)
        v = v.view(length, self.heads, -1).transpose(0, 1).expand(b, -1, -1, -1)
        if self.pelt_gate is not None:
            g = self.pelt_gate(h_in).unsqueeze(1)  # (B, 1, 1, 1)
            k, v = g * k, g * v
        return k, v
