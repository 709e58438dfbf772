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

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..arch import locate, width
from ..attention import features
from ..blocks import Gate, Interpolation, LowRank, MaskSlot, composition_weight, derived, fuses, read_once
from ..config import (
    ALL_ATTENTION,
    Activation,
    AttentionKind,
    Composition,
    Init,
    MethodConfig,
    check_attention,
    check_bool,
    check_choice,
    check_number,
    check_positive,
)
from ..errors import UniPeltError
from ..wrappers import PeltHeadOutput, PeltPostNorm, PeltSublayer, owning_module, replace_module, tap_input, wrap_at
from . import LayerContext, Method, register

Insertion = Literal["sequential", "parallel"]
AdapterTarget = Literal["attn", "head", "ffn"]
# Where a sequential adapter sits in a post-norm sublayer (s = x + h, the residual sum):
# pfeiffer LN(s + A(LN(s))), UniPELT's FFN adapter; houlsby LN(x + h + A(h)), Houlsby 2019 and
# He et al. Eq. 4. Pre-norm layers have no LayerNorm after the sum: both are h + A(h) there.
Placement = Literal["pfeiffer", "houlsby"]


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(MethodConfig):
    """A bottleneck ``W_up f(W_down z)`` added to a sublayer (Houlsby 2019; He et al. 2022).

    sequential: z is the sublayer's output; ``placement`` says which (Pfeiffer or Houlsby).
    parallel: z is the sublayer's input x, the result is added to the sublayer output h.
    target "head": He et al.'s multi-head parallel adapter (§3.3): head i's bottleneck reads
    that head's slice of the frozen query projection x·W_q^(i) and adds to head i's output,
    before the attention's output projection (with LoRA on q, the adapted projection).
    composition "interpolate" replaces h by (1 - λ)·h + λ·Δh, so it needs h itself: parallel
    adapters and Houlsby's placement have it, Pfeiffer's modifies the residual sum instead.
    attention: which attention sublayers an "attn"/"head" adapter goes to in encoder-decoders.
    scale: s of composition "scaled" (1 unless given). He et al.'s scaled parallel adapter is
    s = 4 with ``init="lora"``: the preset "scaled-parallel-adapter" (``presets.SCALED_PA``).
    """

    method: ClassVar[str] = "adapter"
    target: AdapterTarget = "ffn"
    insertion: Insertion = "sequential"
    placement: Placement = "pfeiffer"
    r: int = 48
    activation: Activation = "relu"
    composition: Composition = "add"
    scale: float = 1.0
    learn_scale: bool = False
    init: Init = "bert"
    dropout: float = 0.0
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        owner = "AdapterConfig"
        for name, allowed in (
            ("target", AdapterTarget),
            ("insertion", Insertion),
            ("placement", Placement),
            ("activation", Activation),
            ("composition", Composition),
            ("init", Init),
        ):
            check_choice(owner, name, getattr(self, name), allowed)
        check_positive(owner, "r", self.r)
        check_number(owner, "scale", self.scale)
        check_bool(owner, "learn_scale", self.learn_scale)
        check_number(owner, "dropout", self.dropout, 0.0, 1.0)
        if self.target == "head" and self.insertion != "parallel":
            raise UniPeltError(
                "AdapterConfig(target='head') modifies per-head attention outputs: "
                "only insertion='parallel' is defined there"
            )
        if self.insertion == "parallel" and self.placement != "pfeiffer":
            raise UniPeltError("AdapterConfig.placement only applies to insertion='sequential'")
        if self.composition == "interpolate" and self.insertion == "sequential" and self.placement == "pfeiffer":
            raise UniPeltError(
                "AdapterConfig(composition='interpolate') needs the sublayer output h: use "
                "insertion='parallel' or placement='houlsby' (Pfeiffer's adapter modifies x + h)"
            )
        if self.composition != "scaled" and (self.scale != 1.0 or self.learn_scale):
            raise UniPeltError("AdapterConfig.scale/learn_scale only apply with composition='scaled'")
        check_attention(owner, self, applies=self.target != "ffn")

    def sites(self) -> list[tuple]:
        return [(self.target, self.insertion, site) for site in (self.attention if self.target != "ffn" else ("ffn",))]

    @classmethod
    def check_together(cls, configs: list) -> None:
        places = [p for m in configs for p in m.sites()]
        if len(set(places)) != len(places):
            raise UniPeltError(f"two adapters share a (target, insertion) placement: {places}")


class Adapter(nn.Module):
    def __init__(
        self, cfg: AdapterConfig, d: int, heads: int = 1, *, pooling: str, slot: MaskSlot, d_out: int | None = None
    ):
        super().__init__()
        groups = heads if cfg.target == "head" else 1  # one bottleneck per head's slice of z
        self.block = LowRank(
            d, cfg.r, d_out or d, activation=cfg.activation, groups=groups, init=cfg.init, dropout=cfg.dropout
        )
        weight = composition_weight(
            cfg.composition, d, scale=cfg.scale, learn_scale=cfg.learn_scale, pooling=pooling, slot=slot
        )
        # a Gate is stored as pelt_gate so that counting and gate_values find every gate by name
        self.pelt_gate = weight if isinstance(weight, Gate) else None
        self.scale = None if isinstance(weight, Gate) else weight
        self.interpolates = cfg.composition == "interpolate"

    @property
    def composition(self) -> nn.Module:
        return self.pelt_gate if self.pelt_gate is not None else self.scale

    def forward(self, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """What to add to h: w(z)·A(z), or λ(z)·(A(z) - h) when interpolating."""
        if self.block.groups != 1:
            return self.composition(z) * (self.block(z) - h if self.interpolates else self.block(z))
        hid, weight = read_once(self.block, self.composition, z)
        delta = self.block.expand(hid)
        return weight * (delta - h if self.interpolates else delta)

    def added(self, base: torch.Tensor, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """``base + self(z, h)``, the sum every wrapper forms, in one GEMM where it can be.

        w·A(z) = (w·f(z W_down)) W_up + w·b_up: scaling the r-wide bottleneck instead of the
        d-wide output, with b_up as one more row of W_up (weighted by a column of w), lets
        ``addmm(base, ·, ·)`` form the sum: three passes over a (B, T, d) tensor fewer.
        """
        autocast = torch.is_autocast_enabled(base.device.type)
        if self.interpolates or self.block.groups != 1 or (autocast and base.dtype != torch.float32):
            return base + self(z, h)
        block = self.block
        ones = (  # b_up rides in the batched product as one more row of W_up (_per_example)
            base.dim() == 3
            and z.dim() == 3
            and block.up_bias is not None
            and isinstance(block.act, (nn.ReLU, nn.Identity))
            and fuses(block, self.composition)
            and not self.composition.slot.causal
        )
        hid, weight = read_once(block, self.composition, z, ones=ones)
        # autocast would round the float32 residual sum to bf16 and cast W_up on every call: this
        # r-deep product is cheap in float32, so it runs there, as without autocast
        fp32 = torch.autocast(base.device.type, enabled=False) if autocast else contextlib.nullcontext()
        if base.dim() == 3 and hid.dim() == 3 and weight.dim() == 3 and weight.shape[1] == 1:
            with fp32:
                return self._per_example(base, hid, weight)
        hid, block = hid * weight, self.block  # (..., r)
        if block.up_bias is not None:
            hid = torch.cat([hid, weight.expand(*hid.shape[:-1], 1).to(hid.dtype)], dim=-1)
            up = derived(block, "up", (block.up, block.up_bias), lambda: torch.cat([block.up[0], block.up_bias[None]]))
        else:
            up = derived(block, "up", (block.up,), lambda: block.up[0])  # (r, d)
        with fp32:
            out = torch.addmm(
                base.reshape(-1, base.shape[-1]), hid.reshape(-1, hid.shape[-1]).to(base.dtype), up.to(base.dtype)
            )
        return out.view(base.shape)

    def _per_example(self, base: torch.Tensor, hid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``base + w·(hid W_up + b_up)`` with one gate value per example, (B, 1, 1): as
        ``base + w·b_up + hid (w·W_up)``, one batched product with the (B, r, d) w·W_up and no
        views around it (UniPELT's gated adapter: fewer ops than weighting hid). When hid ends in a
        column of ones (``read_once(ones=True)``), b_up is W_up's last row: ``base + hid (w·[W_up; b_up])``."""
        block, w = self.block, weight.to(base.dtype)
        if hid.shape[-1] > block.up.shape[1]:  # a column of ones (read_once): [W_up; b_up] in one product
            sources = (block.up, block.up_bias)
            up = derived(block, "up_ones", sources, lambda: torch.cat([block.up, block.up_bias.view(1, 1, -1)], 1))
            return torch.baddbmm(base, hid.to(base.dtype), w * up.to(base.dtype))
        if block.up_bias is not None:
            base = base + w * block.up_bias.to(base.dtype)  # (B, 1, d) added over the tokens
        return torch.baddbmm(base, hid.to(base.dtype), w * block.up.to(base.dtype))  # (B, T, r) @ (B, r, d)

    @torch.no_grad()
    def switch_off(self) -> None:
        """h' = h: A = 0, and an interpolation's λ = 0."""
        self.block.up.zero_()
        if self.block.up_bias is not None:
            self.block.up_bias.zero_()
        if isinstance(self.pelt_gate, Interpolation):
            self.pelt_gate.proj.weight.zero_()
            self.pelt_gate.proj.bias.fill_(-1e4)


def _head_adapters(layer: nn.Module, att, ctx: LayerContext, configs: list) -> None:
    for cfg in configs:
        tap = tap_input(layer, att.input)
        head_dim = getattr(layer.get_submodule(att.input), ctx.model.spec.head_dim)
        path, rows = locate(layer, att.q, ctx.model.model.config)  # a fused [q; k; v]: the q rows
        d_q, d_heads = width(layer, att.q, ctx.model.model.config), features(layer.get_submodule(att.o))[0]
        adapter = Adapter(cfg, d_q, d_q // head_dim, d_out=d_heads, **ctx.kw)
        ctx.labelled(adapter, "adapter_head", att.kind)
        owner, leaf = owning_module(layer, path)
        replace_module(layer, att.o, lambda base: PeltHeadOutput(base, tap, adapter, owner, leaf, rows))


def _group(layer: nn.Module, sub, cfg: AdapterConfig) -> nn.ModuleList:
    """The list of the wrapper that hosts ``cfg``'s adapter at sublayer ``sub``."""
    if sub.norm is None:  # pre-norm: the module that returns h hosts them, both placements read h
        host = wrap_at(layer, sub.output or sub.input, PeltSublayer)
        if sub.output is not None and cfg.insertion == "parallel":
            host.source = tap_input(layer, sub.input)  # x enters another module
        return host.pelt_adapter_parallel if cfg.insertion == "parallel" else host.pelt_adapter_sequential
    host = wrap_at(layer, sub.norm, PeltPostNorm)
    if cfg.insertion == "parallel" or cfg.placement == "houlsby":
        host.tap = tap_input(layer, sub.input)  # x, and h = s - x
    if cfg.insertion == "parallel":
        return host.pelt_adapter_parallel
    return host.pelt_adapter_houlsby if cfg.placement == "houlsby" else host.pelt_adapter_sequential


def place(layer: nn.Module, ctx: LayerContext, configs: list) -> None:
    for att in ctx.stack.attention:
        _head_adapters(layer, att, ctx, [c for c in configs if c.target == "head" and att.kind in c.attention])
    subs = [(att, "attn") for att in ctx.stack.attention] + [(ctx.stack.ffn, "ffn")]
    for sub, target in subs:
        for cfg in configs:
            if cfg.target != target or (target == "attn" and sub.kind not in cfg.attention):
                continue
            name = "adapter" if target == "ffn" else f"adapter_{target}"
            adapter = ctx.labelled(Adapter(cfg, ctx.d, **ctx.kw), name, sub.kind)
            _group(layer, sub, cfg).append(adapter)


register(Method(config=AdapterConfig, kind="adapter", modules=(Adapter,), place=place))
