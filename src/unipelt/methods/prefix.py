"""Prefix tuning (Li & Liang 2021) with UniPELT's gate (Mao et al. 2022, §3).

``l`` key and value vectors are prepended at every prefixed attention sublayer ("slot": each
layer's self-attention, and in encoder-decoders the decoder's cross-attention too). They are
trained through a reparameterisation, ``Embedding(l, d) -> Linear(d, mid) -> tanh ->
Linear(mid, 2·S·d_kv)``, shared by all S slots or one per kind of attention; ``fold`` replaces it
by the 2·S (l, d_kv) matrices it produces, which is all that inference and checkpoints need.
d_kv is the key width: d, or fewer with grouped-query attention (Llama's num_key_value_heads).
Gated: ``G_P(h_in)`` scales the prefix keys and values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..arch import locate, width
from ..attention import Prefix, checkpointing_layers, reentrant_checkpointing
from ..blocks import Gate, Keyed, MaskSlot, PerCall, SharedRead, holding, parameters_key
from ..config import (
    ALL_ATTENTION,
    AttentionKind,
    MethodConfig,
    check_attention,
    check_bool,
    check_choice,
    check_positive,
)
from ..errors import UniPeltError
from ..wrappers import PeltSublayer, is_replica, referred, refuse_replica, wrap_at
from . import LayerContext, Method, Mixed, ModelContext, register

PrefixComposition = Literal["interpolate", "add", "gated"]
PrefixNetworks = Literal["shared", "per_attention"]


@dataclass(frozen=True, kw_only=True)
class PrefixConfig(MethodConfig):
    """``length`` trainable key/value vectors prepended at every attention (Li & Liang 2021).

    Trained through ``Embedding(l, d) -> Linear(d, mid) -> tanh -> Linear(mid, 2·S·d_kv)``;
    ``unipelt.fold`` replaces it by the 2·S matrices it produces.
    networks "shared": one network for all S prefixed attention sublayers (UniPELT's code);
    "per_attention": one per kind of attention, i.e. encoder self-, decoder self- and
    cross-attention in encoder-decoders (Li & Liang; He et al.'s scripts).
    composition, in He et al.'s terms (§3.1): "interpolate" is prefix tuning itself, one softmax
    over prefix and token keys, which equals (1 - λ(x))·h + λ(x)·Δh; "add" is their "-gating"
    ablation, h + Δh with Δh = softmax(x W_q P_k^T) P_v over the prefix alone; "gated" is
    prefix tuning with UniPELT's gate G_P(h_in) on the prefix keys and values (UniPELT §3).
    attention: the sublayers that get a prefix; He et al.'s MAM uses all of them.
    """

    method: ClassVar[str] = "prefix"
    unique: ClassVar[bool] = True
    length: int = 10
    mid_dim: int = 512
    reparameterize: bool = True
    networks: PrefixNetworks = "shared"
    composition: PrefixComposition = "interpolate"
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        check_positive("PrefixConfig", "length", self.length)
        check_positive("PrefixConfig", "mid_dim", self.mid_dim)
        check_bool("PrefixConfig", "reparameterize", self.reparameterize)
        check_choice("PrefixConfig", "composition", self.composition, PrefixComposition)
        check_choice("PrefixConfig", "networks", self.networks, PrefixNetworks)
        check_attention("PrefixConfig", self, applies=True)


class _Reparameterization(nn.Module):
    """``Embedding(l, d) -> Linear(d, mid) -> tanh -> Linear(mid, 2·S·d_kv)`` for S slots."""

    def __init__(self, cfg: PrefixConfig, d: int, slots: int, kv_dim: int):
        super().__init__()
        self.kv_dim = kv_dim
        self.embedding = nn.Embedding(cfg.length, d)
        self.mlp_in = nn.Linear(d, cfg.mid_dim)
        self.mlp_out = nn.Linear(cfg.mid_dim, 2 * slots * kv_dim)

    def kv(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.kv_dim
        hid = torch.tanh(self.mlp_in(self.embedding.weight))  # (l, mid)
        rows = slice(2 * slot * w, 2 * (slot + 1) * w)  # only this slot's outputs
        out = nn.functional.linear(hid, self.mlp_out.weight[rows], self.mlp_out.bias[rows])  # (l, 2·d_kv)
        return out[:, :w], out[:, w:]

    def slots(self, head_dim: int) -> torch.Tensor:
        """Every slot's keys and values from one pass of the network, per head: (S, 2, H_kv, l, dh),
        as one view and one permute of the output (fewer ops to make and to take back)."""
        hid = torch.tanh(self.mlp_in(self.embedding.weight))  # (l, mid)
        out = self.mlp_out(hid)  # (l, 2·S·d_kv)
        return out.view(out.shape[0], -1, 2, self.kv_dim // head_dim, head_dim).permute(1, 2, 3, 0, 4)

    def pair(self, slot: int) -> torch.Tensor:
        """``kv(slot)`` as one (2, l, d_kv) view: keys, values."""
        hid = torch.tanh(self.mlp_in(self.embedding.weight))  # (l, mid)
        rows = slice(2 * slot * self.kv_dim, 2 * (slot + 1) * self.kv_dim)
        out = nn.functional.linear(hid, self.mlp_out.weight[rows], self.mlp_out.bias[rows])  # (l, 2·d_kv)
        return out.view(out.shape[0], 2, -1).transpose(0, 1)


class _Views(PerCall):
    """The last ``PrefixEncoder.views``, per thread, with the key it was made under.

    A thread that made none reads the last one made under autograd: a layer that gradient
    checkpointing reruns on an autograd worker thread must read what its forward read (as
    ``MaskSlot.mask`` does).
    """

    def __init__(self) -> None:
        super().__init__()
        self._trained: tuple | None = None

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_trained": None}  # copies start with no pass: no graph to copy

    @property
    def last(self) -> tuple | None:
        return getattr(self._call, "last", self._trained)

    @last.setter
    def last(self, value: tuple | None) -> None:
        self._call.last = value
        if torch.is_grad_enabled():
            self._trained = value


class PrefixEncoder(Keyed):
    """All slots' prefixes: the reparameterisation network(s), or after ``fold`` their output.

    ``groups`` names each slot's network (one name for all with ``networks="shared"``).

    Every slot's keys and values come from one computation per forward pass (``layer_kv``), not
    one per layer: without gradients they are kept while no parameter changes (an eval loop
    computes them once); under autograd the stacks' forward pre-hooks (``hook_stacks``) compute
    them once per pass, so every layer's backward meets in one graph. Reentrant activation
    checkpointing would backpropagate through that shared graph once per layer: there each layer
    computes its own, as it does when a layer is called outside its stack.
    """

    def __init__(self, cfg: PrefixConfig, d: int, groups: list[str], kv_dim: int | None = None):
        super().__init__()
        self.length, self.slots, self.kv_dim = cfg.length, len(groups), kv_dim or d
        self.attention, self.gated = cfg.attention, cfg.composition == "gated"
        self.separate = cfg.composition == "add"
        self.folded: nn.Parameter | None = None
        names = list(dict.fromkeys(groups)) if cfg.networks == "per_attention" else ["shared"]
        owner = [names.index(g) if cfg.networks == "per_attention" else 0 for g in groups]
        # where[i] = (network, its own slot index) of slot i
        self.where = [(o, owner[:i].count(o)) for i, o in enumerate(owner)]
        self.nets = nn.ModuleList(_Reparameterization(cfg, d, owner.count(i), self.kv_dim) for i in range(len(names)))
        self.views_made = _Views()  # (key, every slot's (2, H_kv, l, dh), storages held): see layer_kv
        self.hooks: list = []  # (stack, its pre-hook's handle)
        if not cfg.reparameterize:
            self.fold()

    def views(self, head_dim: int) -> list[torch.Tensor]:
        """Every slot's keys and values as (1, 2, H_kv, l, dh), in slot order, from one computation
        (under autocast in its dtype, cast once for all layers, as the network's output is). The
        leading 1 lets the gradient of a gated layer's ``g·kv`` be summed over the batch straight
        into this shape, with no view after the sum (``LayerPrefix``)."""
        if self.folded is not None:
            table, device = self.folded, self.folded.device.type
            if torch.is_autocast_enabled(device):
                table = table.to(torch.get_autocast_dtype(device))
            return list(table.unflatten(-1, (-1, head_dim)).transpose(2, 3).split(1))
        per_net = [net.slots(head_dim).split(1) for net in self.nets]
        return [per_net[net][local] for net, local in self.where]  # (S_n, 2, H_kv, l, dh) -> slots

    def _key(self, head_dim: int) -> tuple:
        """What the views depend on: gradient mode, autocast, and every parameter's contents."""
        device = self.nets[0].embedding.weight.device if self.folded is None else self.folded.device
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        return torch.is_grad_enabled(), autocast, head_dim, parameters_key(self.parameters())

    def layer_kv(self, slot: int, head_dim: int) -> torch.Tensor:
        """Slot ``slot``'s keys and values, (2, H_kv, l, dh), or (1, 2, H_kv, l, dh) from the views
        of this pass (``views``)."""
        if torch.compiler.is_compiling() or is_replica(self):
            # in-graph, the compiler shares what the layers share; a DataParallel replica, made for
            # one step, shares views_made with its original and with the replicas before it, at
            # whose freed addresses its own copies may lie: each layer computes its own slot's rows
            return self.pair(slot).unflatten(-1, (-1, head_dim)).transpose(1, 2)
        key, last = self._key(head_dim), self.views_made.last
        if last is not None and last[0] == key:
            return last[1][slot]
        if torch.is_grad_enabled():  # only a stack's hook shares a graph between layers
            return self.pair(slot).unflatten(-1, (-1, head_dim)).transpose(1, 2)
        self.views_made.last = (key, self.views(head_dim), holding(self.parameters()))
        return self.views_made.last[1][slot]

    def hook_stack(self, stack: nn.Module, head_dim: int) -> None:
        """Compute the views once per forward pass of ``stack`` (an encoder, a decoder)."""
        self.head_dim = head_dim
        if not any(owner is stack for owner, _ in self.hooks):
            self.hooks.append((stack, stack.register_forward_pre_hook(self._before_stack)))

    def remove(self) -> None:
        """Take the hooks off the stacks (``unipelt.unload``)."""
        for _, hook in self.hooks:
            hook.remove()
        self.hooks = []

    def _before_stack(self, stack: nn.Module, _args) -> None:
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return  # without gradients the views are made on first use and kept (layer_kv)
        if is_replica(stack):  # a DataParallel replica's layers read their own encoder, a copy of self
            return
        if any(reentrant_checkpointing(m) for m in checkpointing_layers(stack)):
            self.views_made.last = None
            return
        self.views_made.last = (self._key(self.head_dim), self.views(self.head_dim), holding(self.parameters()))

    def kv(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one slot, each (l, d_kv)."""
        if self.folded is not None:
            return self.folded[slot, 0], self.folded[slot, 1]
        net, local = self.where[slot]
        return self.nets[net].kv(local)

    def pair(self, slot: int) -> torch.Tensor:
        """``kv(slot)`` as one (2, l, d_kv) tensor, a view where it can be: fewer ops per layer."""
        if self.folded is not None:
            return self.folded[slot]
        net, local = self.where[slot]
        return self.nets[net].pair(local)

    def table(self) -> torch.Tensor:
        """(S, 2, l, d_kv): every slot's keys and values."""
        return torch.stack([torch.stack(self.kv(i)) for i in range(self.slots)])

    @property
    def trains_network(self) -> bool:
        return self.nets is not None and self.nets[0].mlp_out.weight.requires_grad

    @torch.no_grad()
    def fold(self) -> None:
        if self.folded is not None:
            return
        requires_grad = self.nets[0].embedding.weight.requires_grad
        self.folded = nn.Parameter(self.table().detach().clone(), requires_grad=requires_grad)
        del self.nets
        self.nets = None

    def inference_numel(self) -> int:
        return 2 * self.slots * self.length * self.kv_dim


class LayerPrefix(nn.Module):
    """One attention sublayer's view of the shared encoder (a ``PrefixEncoder``, or a decoder's
    ``CausalPrompt``), plus that sublayer's gate."""

    refers_to = ("encoder",)

    def __init__(
        self, encoder: nn.Module, slot: int, head_dim: int, d: int, gated: bool, *, pooling: str, mask_slot: MaskSlot
    ):
        super().__init__()
        self.__dict__["encoder"] = encoder  # owned by the model; registering it here would repeat it per layer
        self.slot, self.head_dim = slot, head_dim
        self.pelt_gate = Gate(d, pooling, mask_slot) if gated else None
        self.shared: SharedRead | None = None  # the gate read in one GEMM with LoRA's (blocks.SharedRead)
        self.shared_index: int | None = None

    def share(self, group: SharedRead | None) -> None:
        """Read the gate through ``group``, which LoRA on this attention's q/k/v set up."""
        if isinstance(group, SharedRead) and self.pelt_gate is not None:
            self.shared_index = group.join(None, self.pelt_gate)
            self.shared = group if self.shared_index is not None else None

    def gate(self, h_in: torch.Tensor) -> torch.Tensor:
        if self.shared is not None and not is_replica(self):  # the shared read holds the original's gates
            return self.shared.read(self.shared_index, h_in)[1]
        return self.pelt_gate(h_in)

    def forward(self, h_in: torch.Tensor) -> Prefix | None:
        encoder = referred(self, "encoder")
        if hasattr(encoder, "layer_kv"):
            kv = encoder.layer_kv(self.slot, self.head_dim)  # ([1,] 2, H_kv, l, dh)
        else:  # a decoder's prompt: None during its own pass
            refuse_replica(self)  # its pass ran the original model (CausalPrompt's hook)
            kv = encoder.kv(self.slot)
            if kv is None:
                return None
            kv = torch.stack(kv).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)  # (2, H_kv, l, dh)
        b = h_in.shape[0]
        g = self.gate(h_in) if self.pelt_gate is not None else None  # (B, 1 or T, 1)
        if g is not None and g.shape[1] == 1:  # one product scales keys and values
            k, v = _attention_dtype(g.view(b, 1, 1, 1, 1) * kv, h_in).unbind(1)  # (B, H_kv, l, dh) each
            return Prefix(k, v)
        k, v = (t.expand(b, -1, -1, -1) for t in _attention_dtype(kv, h_in).unbind(-4))  # (B, H_kv, l, dh)
        if g is not None:  # per query in causal layers
            return Prefix(k, v, query_gate=g.unsqueeze(1))  # (B, 1, T, 1)
        return Prefix(k, v, separate=getattr(encoder, "separate", False))


def _attention_dtype(kv: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """Keys and values in the dtype autocast gives the attention's own (one cast for both), else as they are."""
    device = h_in.device.type
    return kv.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else kv


def attach(layer: nn.Module, ctx: LayerContext, source: nn.Module, gated: bool) -> None:
    """Give every attention sublayer of the layer that ``source`` serves its ``LayerPrefix``."""
    for att in ctx.stack.attention:
        if att.kind not in source.attention:
            continue
        module = wrap_at(layer, att.input, PeltSublayer)
        head_dim = getattr(module, ctx.model.spec.head_dim)
        lp = LayerPrefix(
            source,
            next(ctx.model.prefix_slots),
            head_dim,
            ctx.d,
            gated,
            pooling=ctx.cfg.gate_pooling,
            mask_slot=ctx.slot,
        )
        module.pelt_prefix = ctx.labelled(lp, "prefix", att.kind)
        if isinstance(source, PrefixEncoder):  # the module that holds the layers runs the pass
            stack = ctx.model.base.get_submodule(ctx.stack.layers.rpartition(".")[0])
            source.hook_stack(stack, head_dim)
        if att.kind == "self":  # the gate reads x, as LoRA's A on q/k/v does: one GEMM for both
            q_path = locate(layer, att.q, ctx.model.model.config)[0]
            lp.share(getattr(layer.get_submodule(q_path), "shared", None))


def _slots(ctx: ModelContext, cfg: PrefixConfig) -> list[tuple[int, str]]:
    """(key width H_kv · dh, kind of attention) of every sublayer that gets a prefix, in slot
    order; the kind ("encoder.self", "decoder.cross", ...) picks its network with
    ``networks="per_attention"``."""
    return [
        (width(layer, att.k, ctx.model.config), f"{stack.name}.{att.kind}")
        for stack in ctx.spec.present_stacks(ctx.base)
        for layer in ctx.base.get_submodule(stack.layers)
        for att in stack.attention
        if att.kind in cfg.attention
    ]


def setup(ctx: ModelContext, configs: list) -> None:
    cfg = configs[0]
    slots = _slots(ctx, cfg)
    if not slots:
        raise UniPeltError(f"PrefixConfig.attention={cfg.attention} matches no attention sublayer of this model")
    widths = {w for w, _ in slots}
    if len(widths) != 1:
        raise UniPeltError(f"prefix tuning needs attention sublayers with one key width; found {sorted(widths)}")
    ctx.model.pelt_prefix = ctx.prefix = PrefixEncoder(cfg, ctx.d, [group for _, group in slots], widths.pop())
    ctx.attention_hook = True


def place(layer: nn.Module, ctx: LayerContext, configs: list) -> None:
    attach(layer, ctx, ctx.model.prefix, configs[0].composition == "gated")


def _refused(configs: list) -> str | None:
    if configs[0].composition == "add":
        return "prefix composition 'add' (the -gating ablation) is not served in mixed batches"
    return None


# in mixed batches the prefix is its host's (wrappers.PeltSublayer): each row sees its task's own
register(
    Method(
        config=PrefixConfig,
        kind="prefix",
        modules=(PrefixEncoder,),
        setup=setup,
        place=place,
        mixed=Mixed(refused=_refused),
    )
)
