"""DoRA (Liu et al., ICML 2024, Eq. 5): LoRA's update split into a magnitude and a direction,

    W' = m · (W + s·BA) / ‖W + s·BA‖_c

with the norm taken over the input dimension, one value per output row (peft's ``use_dora``),
m a trained vector per output row initialised to ‖W‖_c, so that W' = W at the start (B = 0).
As in the paper (§4.3) and peft, the norm is treated as a constant: no gradient flows through it.
The layer computes ``W' x + b = W x + b + (g - 1)·W x + g·s·B A x`` with g = m / ‖W + s·BA‖_c,
so that the base layer runs unchanged and ``delta`` (what is added to it) serves mixed batches.

DoRA is LoRA's wrapper with one more vector: ``DoRALinear`` subclasses ``LoRALinear`` and is
placed by LoRA's ``place``; fused projections (GPT-2's ``c_attn``) work as for LoRA, each target
normalising its own rows. ``count_parameters`` reports it as kind "dora" (A, B and m).

UniPELT's gate is refused: LoRA's gate replaces s by G(x), which would put the input into the
norm, ‖W + G(x)·s·BA‖_c, one renormalised weight per example; gating the whole update instead
(W x + G(x)·(W' - W) x) would be a different method, and neither could be merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..attention import is_linear, weight_out_in
from ..config import (
    ALL_ATTENTION,
    AttentionKind,
    MethodConfig,
    check_attention,
    check_bool,
    check_choice,
    check_choices,
    check_number,
    check_positive,
)
from ..errors import UniPeltError
from . import Method, ModelContext, register
from .lora import ATTENTION_TARGETS, LoRAConfig, LoRALinear, LoRATarget
from .lora import place as place_lora

GATED = (
    "DoRA cannot be gated: UniPELT's gate replaces LoRA's scale s by G(x), which would enter the norm "
    "‖W + G(x)·s·BA‖ (one renormalised weight per example), and it could no longer be merged"
)


@dataclass(frozen=True, kw_only=True)
class DoRAConfig(MethodConfig):
    """LoRA's fields, the same meaning and defaults; s = alpha/r (alpha/sqrt(r) with ``use_rslora``)."""

    method: ClassVar[str] = "dora"
    r: int = 8
    alpha: float = 2.0
    targets: tuple[LoRATarget, ...] = ("q", "v")
    composition: Literal["scaled"] = "scaled"  # "gated" is refused: see GATED
    dropout: float = 0.0
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.composition == "gated":
            raise UniPeltError(GATED)
        check_choice("DoRAConfig", "composition", self.composition, Literal["scaled"])
        check_positive("DoRAConfig", "r", self.r)
        check_number("DoRAConfig", "alpha", self.alpha)
        object.__setattr__(self, "targets", check_choices("DoRAConfig", "targets", self.targets, LoRATarget))
        check_number("DoRAConfig", "dropout", self.dropout, 0.0, 1.0)
        check_attention("DoRAConfig", self, applies=any(t in ATTENTION_TARGETS for t in self.targets))
        check_bool("DoRAConfig", "use_rslora", self.use_rslora)

    places = LoRAConfig.places
    scale = LoRAConfig.scale

    @classmethod
    def check_together(cls, configs: list) -> None:
        places = [p for m in configs for p in m.places()]
        if len(set(places)) != len(places):
            raise UniPeltError(f"two DoRA configs target the same projection: {places}")


def _plain(module: nn.Module) -> nn.Module:
    """The linear map under any wrappers (on a fused map another target's wrapper may sit between)."""
    while not is_linear(module) and hasattr(module, "base_layer"):
        module = module.base_layer
    return module


class Magnitude(nn.Module):
    """m, one trained value per output row. A module, not a bare parameter: on a fused map the
    wrapper around another target's wrapper would otherwise find that one's m (``Wrapper``
    forwards unknown attributes), and torch refuses to register a parameter under a name in use."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)


class DoRALinear(LoRALinear):
    """``base(x) + (g - 1)·W x + g·s·B A x`` on all output features or on the ``rows`` of a fused map."""

    def __init__(self, base_layer: nn.Module, cfg: DoRAConfig, *, pooling: str, slot, rows=None):
        super().__init__(base_layer, cfg, pooling=pooling, slot=slot, rows=rows)
        with torch.no_grad():
            self.pelt_magnitude = Magnitude(torch.linalg.norm(self.weight_rows(), dim=1))  # (width,) m = ‖W‖_c

    def weight_rows(self) -> torch.Tensor:
        """This wrapper's rows of W, (width, d_in), a view."""
        w = weight_out_in(_plain(self.base_layer))  # (d_out, d_in)
        return w if self.rows is None else w[self.rows[0] : self.rows[1]]

    def factor(self) -> torch.Tensor:
        """g = m / ‖W + s·BA‖_c, (width,), the norm detached (DoRA §4.3, as peft does)."""
        w = self.weight_rows()
        with torch.no_grad():
            norm = torch.linalg.norm(w + self.scale.value * self.pelt_lora.delta_weight().to(w.dtype), dim=1)
        return self.pelt_magnitude.weight / norm.to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., d_out)
        if not self.pelt_active:
            return out
        if self.rows is None:
            return out + self._rows_delta(x)
        out[..., self.rows[0] : self.rows[1]] += self._rows_delta(x)  # fresh from the base layer
        return out

    def _rows_delta(self, x: torch.Tensor) -> torch.Tensor:
        """(g - 1)·W x + g·s·B A x on this wrapper's rows, (..., width); dropout on x, as peft."""
        lora, w = self.pelt_lora, self.weight_rows()
        x = lora.dropout(x)  # one sample for both terms
        g = self.factor().to(x.dtype)
        low = nn.functional.linear(x, lora.down_t()) @ lora.up[0]  # (..., width) B A x
        return (g - 1) * nn.functional.linear(x, w.to(x.dtype)) + g * (self.scale.value * low)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """W' x - W x alone, (..., d_out): zero outside a fused map's rows (mixed batches)."""
        delta = self._rows_delta(x)
        if self.rows is None:
            return delta
        d_out = weight_out_in(_plain(self.base_layer)).shape[0]
        return nn.functional.pad(delta, (self.rows[0], d_out - self.rows[1]))

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Write W' = g·(W + s·BA) into the base weight (its rows); returns the plain layer."""
        rows = self.weight_rows()
        g = self.factor()  # from W before it changes
        rows.copy_(g[:, None] * (rows + self.scale.value * self.pelt_lora.delta_weight().to(rows.dtype)))
        return self.base_layer

    @torch.no_grad()
    def switch_off(self) -> None:
        super().switch_off()
        self.pelt_magnitude.weight.copy_(torch.linalg.norm(self.weight_rows(), dim=1))


def setup(ctx: ModelContext, configs: list) -> None:
    """LoRA and DoRA on one projection would stack two updates on one W: refused."""
    both = {p for m in configs for p in m.places()} & {p for m in ctx.cfg.of(LoRAConfig) for p in m.places()}
    if both:
        raise UniPeltError(f"LoRA and DoRA target the same projection(s): {sorted(both)}")


def place(layer: nn.Module, ctx, configs: list) -> None:
    place_lora(layer, ctx, configs, wrapper=DoRALinear)


register(Method(config=DoRAConfig, kind="dora", modules=(DoRALinear,), setup=setup, place=place))
