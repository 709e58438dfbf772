"""Where the Δh modules plug into a transformer layer. Each wrapper keeps the original module as
``.base_layer`` (wrap, don't patch) and forwards unknown attributes to it, so code that reads,
say, ``attention.self.num_attention_heads`` keeps working.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import PREFIX_KWARG, token_mask
from .blocks import MaskSlot


class Wrapper(nn.Module):
    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_layer"), name)


class PeltLayer(Wrapper):
    """A transformer layer whose gates need to know which tokens are padding.

    HF hands the padding mask to the layer but not to its linear maps; this wrapper writes it to
    the layer's ``MaskSlot``. It is left there after the call because gradient checkpointing runs
    the layer again during backward, outside this wrapper.
    """

    def __init__(self, base_layer: nn.Module, slot: MaskSlot):
        super().__init__(base_layer)
        self.slot = slot

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
        self.slot.mask = token_mask(attention_mask, hidden_states.shape[1])
        return self.base_layer(hidden_states, attention_mask, *args, **kwargs)


class PeltSelfAttention(Wrapper):
    """Self-attention with prefix keys/values and/or per-head parallel adapters.

    The prefix travels to the registered attention function as a keyword argument (attention.py),
    so no attention code is copied here. The head adapter reads the attention input and adds to
    the concatenated head outputs, before the output projection.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.pelt_prefix: nn.Module | None = None
        self.pelt_adapter_head: nn.Module | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.pelt_prefix is not None:
            kwargs[PREFIX_KWARG] = self.pelt_prefix(hidden_states)
        out, weights = self.base_layer(hidden_states, *args, **kwargs)
        if self.pelt_adapter_head is not None:
            out = out + self.pelt_adapter_head(hidden_states)
        return out, weights


class PeltResidualBlock(Wrapper):
    """A post-norm sublayer output ``LN(drop(dense(h)) + x)`` with adapters around its sum.

    parallel:   s = drop(dense(h)) + x + Σ Δ(x)           (He et al. 2022, input is x)
    sequential: s ← s + Σ Δ(LN(s)), output LN(s)          (UniPELT §3: h'_A = G_A·h_A + h_F)
    With every Δ = 0 this is exactly the original block.
    """

    def __init__(self, base_layer: nn.Module, parts: tuple[str, str, str]):
        super().__init__(base_layer)
        self.parts = parts
        self.pelt_adapter_parallel = nn.ModuleList()
        self.pelt_adapter_sequential = nn.ModuleList()

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        dense, dropout, norm = (getattr(self.base_layer, p) for p in self.parts)
        s = dropout(dense(hidden_states)) + input_tensor
        for adapter in self.pelt_adapter_parallel:
            s = s + adapter(input_tensor)
        for adapter in self.pelt_adapter_sequential:
            s = s + adapter(norm(s))
        return norm(s)
