"""LoRA (Hu et al. 2021): ``W x + s · B A x`` with B zero-initialised, so training starts at W.

UniPELT (Mao et al. 2022, §3) makes s input-dependent, ``θ = θ0 + G_L · δ``, with one gate per
target computed from the linear's input (for q and v that is the layer input h_in). As in the
official code the gate replaces alpha/r. Only ungated LoRA can be merged into W.

On a fused projection (GPT-2's ``c_attn`` = [q; k; v], Phi-3's ``qkv_proj``) a target owns its
rows of the fused output: ``W x + s · [0; B A x; 0]``, merged into those rows of W; LoRA on q and
on v are two wrappers around the one fused map, each with its own A, B and gate. GPT-2's ``Conv1D``
stores W transposed; ``attention.weight_out_in`` gives its (d_out, d_in) view for the merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from ..arch import locate, name_of, path_of
from ..attention import features, weight_out_in
from ..blocks import Gate, LowRank, MaskSlot, SharedRead, composition_weight, derived, read_once
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
from ..wrappers import RowsCall, Wrapper, has, is_replica, on_rows, replace_module
from . import LayerContext, Method, register

LoRATarget = Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]
ATTENTION_TARGETS = ("q", "k", "v", "o")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    """``W x + s · B A x`` on the named linear maps (Hu et al. 2021), B zero-initialised.

    composition "scaled": s = alpha / r (loralib and peft's convention), or alpha / sqrt(r) with
    ``use_rslora`` (Kalajdzievski 2023, rank-stabilised LoRA; peft's name).
    composition "gated": s = G_L(h_in), one gate per target; alpha has no effect (UniPELT's code).
    ffn_in/ffn_out: the FFN's input/output projections (BART fc1/fc2; Llama's gate+up/down).
    attention: which attention sublayers the q/k/v/o targets are taken from in encoder-decoders.
    """

    method: ClassVar[str] = "lora"
    r: int = 8
    alpha: float = 2.0
    targets: tuple[LoRATarget, ...] = ("q", "v")
    composition: Literal["scaled", "gated"] = "scaled"
    dropout: float = 0.0
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION
    # written to JSON only when true: configs from before it keep their JSON and run keys
    use_rslora: bool = field(default=False, metadata=dict(since=False))

    def __post_init__(self) -> None:
        check_positive("LoRAConfig", "r", self.r)
        check_number("LoRAConfig", "alpha", self.alpha)
        check_choice("LoRAConfig", "composition", self.composition, Literal["scaled", "gated"])
        object.__setattr__(self, "targets", check_choices("LoRAConfig", "targets", self.targets, LoRATarget))
        check_number("LoRAConfig", "dropout", self.dropout, 0.0, 1.0)
        check_attention("LoRAConfig", self, applies=any(t in ATTENTION_TARGETS for t in self.targets))
        check_bool("LoRAConfig", "use_rslora", self.use_rslora)
        if self.use_rslora and self.composition == "gated":
            raise UniPeltError("LoRAConfig.use_rslora sets the scale alpha/sqrt(r), which a gated LoRA replaces")

    @property
    def scale(self) -> float:
        """s in ``W x + s · B A x`` for composition "scaled"."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def places(self) -> list[tuple[str, str]]:
        """(target, attention kind) pairs; FFN targets have kind "ffn"."""
        return [(t, kind) for t in self.targets for kind in (self.attention if t in ATTENTION_TARGETS else ("ffn",))]

    @classmethod
    def check_together(cls, configs: list) -> None:
        places = [p for m in configs for p in m.places()]
        if len(set(places)) != len(places):
            raise UniPeltError(f"two LoRA configs target the same projection: {places}")


class LoRALinear(Wrapper):
    """``base(x) + w · B A x``, on all output features or on the ``rows`` [start, stop) of a fused map."""

    def __init__(self, base_layer: nn.Module, cfg: LoRAConfig, *, pooling: str, slot: MaskSlot, rows=None):
        super().__init__(base_layer)
        d_in, d_out = features(base_layer)
        self.rows = tuple(rows) if rows is not None else None
        width = d_out if rows is None else rows[1] - rows[0]
        self.pelt_lora = LowRank(d_in, cfg.r, width, bias=False, init="lora", dropout=cfg.dropout)
        weight = composition_weight(
            "gated" if cfg.composition == "gated" else "scaled",
            d_in,
            scale=cfg.scale,
            pooling=pooling,
            slot=slot,
        )
        self.pelt_gate = weight if isinstance(weight, Gate) else None
        self.scale = None if isinstance(weight, Gate) else weight
        self.fixed_scale = None if isinstance(weight, Gate) else cfg.scale  # s as a Python number
        self.shared: SharedRead | None = None  # A x and the gate, read in one GEMM with the layer's others
        self.shared_index: int | None = None

    @property
    def composition(self) -> nn.Module:
        """The module giving w: the gate, or the fixed scale alpha/r (not ``weight``: that name
        reads through to the base layer's)."""
        return self.pelt_gate if self.pelt_gate is not None else self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., d_out), contiguous; its backward needs x and W, not out
        if not self.pelt_active:
            return out
        lora = self.pelt_lora
        # w·(B A x) = (w·A x) B: weight the r-wide bottleneck, not the d-wide output, and let one
        # addmm form out + that. A fixed s is addmm's alpha: no op of its own.
        # a DataParallel replica reads A x itself: its shared read holds the original's modules
        if self.shared is not None and not is_replica(self):
            low, weight = self.shared.read(self.shared_index, x)  # (N, r) or (B, T, r), (B, 1, 1) or None
            alpha = self.fixed_scale if weight is None else 1.0
            if weight is not None and self.rows is None and x.dim() == 3 and weight.shape[1] == 1:
                return self._per_example(out, low if low.dim() == 3 else low.view(*x.shape[:-1], -1), weight)
            if weight is not None:
                low = low.view(*x.shape[:-1], -1) * weight
            low = low.reshape(-1, low.shape[-1]) if low.dim() != 2 else low  # (N, r): a view
        elif self.fixed_scale is not None:
            low, alpha = lora.bottleneck(x.reshape(-1, x.shape[-1])), self.fixed_scale  # (N, r)
        else:
            hid, weight = read_once(lora, self.composition, x)  # A x, and the gate from the same GEMM
            low, alpha = (hid * weight).reshape(-1, hid.shape[-1]), 1.0
        flat = out.view(-1, out.shape[-1])  # (N, d_out)
        up = derived(lora, "up", (lora.up,), lambda: lora.up[0])  # (r, d_out)
        low, up = low.to(out.dtype), up.to(out.dtype)  # autocast leaves addmm_ alone: cast as for a matmul
        if self.rows is None:  # out of place: an in-place add into out costs autograd a copy of it
            return torch.addmm(flat, low, up, alpha=alpha).view(out.shape)
        flat[:, self.rows[0] : self.rows[1]].addmm_(low, up, alpha=alpha)  # a fused map: its rows only
        return out

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        """Mixed batches: the task's ``delta`` added to the shared output (DoRA's too)."""
        with on_rows(self, rows):
            call.h[rows] += self.delta(call.x[rows])

    def _per_example(self, out: torch.Tensor, low: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``out + (A x)(w·B)`` with one gate value per example: w·B is (B, r, d_out), and one
        batched product adds it to out; fewer ops than weighting A x, which needs views around it."""
        up = (weight * self.pelt_lora.up).to(out.dtype)  # (B, 1, 1) * (1, r, d_out) -> (B, r, d_out)
        return torch.baddbmm(out, low.to(out.dtype), up)  # low: (B, T, r)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """w · B A x alone, (..., d_out): zero outside a fused map's rows."""
        hid, weight = read_once(self.pelt_lora, self.composition, x)
        delta = (hid * weight) @ self.pelt_lora.up[0]
        if self.rows is None:
            return delta
        d_out = features(self.base_layer)[1]
        return nn.functional.pad(delta, (self.rows[0], d_out - self.rows[1]))

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold ``s · B A`` into the base weight (its rows) and return the plain linear layer."""
        if self.pelt_gate is not None:
            raise UniPeltError("a gated LoRA depends on the input through its gate and cannot be merged")
        if self.shared is not None:
            self.shared.leave(self.shared_index)
        base = self.base_layer
        w = weight_out_in(base)  # (d_out, d_in), a view of the layer's weight
        rows = w if self.rows is None else w[self.rows[0] : self.rows[1]]
        rows += (self.scale.value * self.pelt_lora.delta_weight()).to(w.dtype)
        return base

    @torch.no_grad()
    def switch_off(self) -> None:
        self.pelt_lora.up.zero_()


def place(layer: nn.Module, ctx: LayerContext, configs: list, wrapper: type = LoRALinear) -> None:
    """Wrap each target projection in ``wrapper`` (DoRA places its subclass the same way)."""
    paths = ctx.stack.lora_paths()
    shared: dict[str, SharedRead] = {}  # per self-attention kind: q, k and v read the same x
    for lora in configs:
        for target, where in lora.places():
            found = [p for p in paths.get((target, where), ()) if has(layer, path_of(p))]
            if where == "ffn" and not found:
                raise UniPeltError(f"LoRA target {target!r}: none of {paths[(target, where)]} is in the layer")
            for projection in found:
                path, rows = locate(layer, projection, ctx.model.model.config)
                name = f"lora_{target}" if len(found) == 1 else f"lora_{target}.{name_of(projection)}"
                wrapped = replace_module(layer, path, lambda lin: wrapper(lin, lora, rows=rows, **ctx.kw))
                if wrapped.pelt_gate is not None:  # its own gate: a nested wrapper holds another part's
                    ctx.labelled(wrapped.pelt_gate, name, where)
                if wrapper is LoRALinear and where == "self" and target in ("q", "k", "v"):
                    group = shared.setdefault(where, SharedRead())
                    wrapped.shared_index = group.join(wrapped.pelt_lora, wrapped.pelt_gate)
                    wrapped.shared = group if wrapped.shared_index is not None else None


register(Method(config=LoRAConfig, kind="lora", modules=(LoRALinear,), place=place))
