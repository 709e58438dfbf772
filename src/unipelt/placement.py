"""Where each method goes inside one layer, read from the architecture spec (arch/__init__.py).

He et al.'s "modified representation" made concrete: LoRA wraps the named linear maps; prefixes
and multi-head adapters go to the attention module and its output projection; "attn"/"ffn"
adapters go around the sublayer's module (pre-norm) or its LayerNorm (post-norm), see
wrappers.py. Nothing here knows which architecture it is working on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from torch import nn

from .arch import ArchSpec, Attention, Stack, Sublayer
from .blocks import Gate, MaskSlot
from .config import AdapterConfig, LoRAConfig, PeltConfig, PrefixConfig
from .errors import UniPeltError
from .methods.adapter import Adapter
from .methods.lora import LoRALinear
from .methods.prefix import LayerPrefix, PrefixEncoder
from .methods.prompt import CausalPrompt
from .wrappers import PeltAttention, PeltHeadOutput, PeltLayer, PeltPostNorm, PeltSublayer, Tap, Wrapper


@dataclass
class LayerContext:
    """What placing modules in one layer needs besides the layer itself."""

    index: int
    stack: Stack
    label: str  # gate-label prefix: "encoder." / "decoder." in models with two stacks, else ""
    cfg: PeltConfig
    spec: ArchSpec
    d: int
    slot: MaskSlot
    prefix: PrefixEncoder | CausalPrompt | None  # where prefix keys/values come from
    prefix_slots: Iterator[int]  # the next prefix slot index, shared across layers and stacks

    @property
    def kw(self) -> dict:
        return dict(pooling=self.cfg.gate_pooling, slot=self.slot)

    def labelled(self, module: nn.Module, name: str) -> nn.Module:
        for m in module.modules():
            if isinstance(m, Gate):
                m.label = (self.index, self.label + name)
        return module


def kind(att: Attention) -> str:
    return "cross" if att.cross else "self"


def _site(where: str | None, name: str) -> str:
    """A gate label within a layer: cross-attention modules are told apart from self-attention's."""
    return f"cross.{name}" if where == "cross" else name


def has(layer: nn.Module, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def owning_module(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that holds ``path``'s last component as a child, and that component's name."""
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    while isinstance(parent, Wrapper) and leaf not in parent._modules:
        parent = parent.base_layer  # the wrapped module owns it; setting it on the wrapper would shadow it
    return parent, leaf


def replace_module(root: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    parent, leaf = owning_module(root, path)
    new = make(getattr(parent, leaf))
    setattr(parent, leaf, new)
    return new


def _wrap(layer: nn.Module, path: str, cls: type) -> nn.Module:
    """The ``cls`` wrapper at ``path``, created on first use so that methods share it."""
    module = layer.get_submodule(path)
    return module if isinstance(module, cls) else replace_module(layer, path, cls)


def _input_wrapper(sub: Sublayer) -> type:
    return PeltAttention if isinstance(sub, Attention) else PeltSublayer


def _tap(layer: nn.Module, sub: Sublayer) -> Tap:
    """A tap on the sublayer's input x, for modules placed downstream of it."""
    module = _wrap(layer, sub.input, _input_wrapper(sub))
    if module.tap is None:
        module.tap = Tap()
    return module.tap


def _inject_lora(layer: nn.Module, ctx: LayerContext) -> None:
    paths = ctx.stack.lora_paths()
    for lora in ctx.cfg.of(LoRAConfig):
        for target, where in lora.places():
            found = [p for p in paths.get((target, where), ()) if has(layer, p)]
            if where == "ffn" and not found:
                raise UniPeltError(f"LoRA target {target!r}: none of {paths[(target, where)]} is in the layer")
            for path in found:
                name = f"lora_{target}" if len(found) == 1 else f"lora_{target}.{path.rpartition('.')[2]}"
                wrapped = replace_module(layer, path, lambda lin: LoRALinear(lin, lora, **ctx.kw))
                ctx.labelled(wrapped, _site(where, name))


def _inject_attention(layer: nn.Module, att: Attention, ctx: LayerContext) -> None:
    """Prefix keys/values and the multi-head parallel adapter of one attention sublayer."""
    heads = [a for a in ctx.cfg.of(AdapterConfig) if a.target == "head" and kind(att) in a.attention]
    if ctx.prefix is not None and kind(att) in ctx.prefix.attention:
        module = _wrap(layer, att.input, PeltAttention)
        head_dim = getattr(module, ctx.spec.head_dim)
        lp = LayerPrefix(ctx.prefix, next(ctx.prefix_slots), head_dim, ctx.d, ctx.prefix.gated,
                         pooling=ctx.cfg.gate_pooling, mask_slot=ctx.slot)
        module.pelt_prefix = ctx.labelled(lp, _site(kind(att), "prefix"))
    for cfg in heads:
        tap = _tap(layer, att)
        head_dim = getattr(layer.get_submodule(att.input), ctx.spec.head_dim)
        q, o = layer.get_submodule(att.q), layer.get_submodule(att.o)
        adapter = Adapter(cfg, q.out_features, q.out_features // head_dim, d_out=o.in_features, **ctx.kw)
        ctx.labelled(adapter, _site(kind(att), "adapter_head"))
        owner, leaf = owning_module(layer, att.q)
        replace_module(layer, att.o, lambda base: PeltHeadOutput(base, tap, adapter, owner, leaf))


def _adapter_group(layer: nn.Module, sub: Sublayer, cfg: AdapterConfig) -> nn.ModuleList:
    if sub.norm is None:  # pre-norm: the input module also returns h, both placements read it
        host = _wrap(layer, sub.input, _input_wrapper(sub))
        return host.pelt_adapter_parallel if cfg.insertion == "parallel" else host.pelt_adapter_sequential
    host = _wrap(layer, sub.norm, PeltPostNorm)
    if cfg.insertion == "parallel" or cfg.placement == "houlsby":
        host.tap = _tap(layer, sub)  # x, and h = s - x
    if cfg.insertion == "parallel":
        return host.pelt_adapter_parallel
    return host.pelt_adapter_houlsby if cfg.placement == "houlsby" else host.pelt_adapter_sequential


def _inject_adapters(layer: nn.Module, sub: Sublayer, target: str, ctx: LayerContext) -> None:
    where = kind(sub) if isinstance(sub, Attention) else None
    for cfg in ctx.cfg.of(AdapterConfig):
        if cfg.target != target or (where is not None and where not in cfg.attention):
            continue
        name = "adapter" if target == "ffn" else f"adapter_{target}"
        adapter = ctx.labelled(Adapter(cfg, ctx.d, **ctx.kw), _site(where, name))
        _adapter_group(layer, sub, cfg).append(adapter)


def inject_layer(layer: nn.Module, ctx: LayerContext) -> nn.Module:
    _inject_lora(layer, ctx)
    for att in ctx.stack.attention:
        _inject_attention(layer, att, ctx)
    for att in ctx.stack.attention:
        _inject_adapters(layer, att, "attn", ctx)
    _inject_adapters(layer, ctx.stack.ffn, "ffn", ctx)
    return PeltLayer(layer, ctx.slot) if ctx.cfg.gated else layer


def prefix_slots(base: nn.Module, spec: ArchSpec, cfg: PrefixConfig) -> list[tuple[int, str]]:
    """(key width H_kv · dh, kind of attention) of every sublayer that gets a prefix, in slot
    order; the kind ("encoder.self", "decoder.cross", ...) picks its network with
    ``networks="per_attention"``."""
    return [(layer.get_submodule(att.k).out_features, f"{stack.name}.{kind(att)}")
            for stack in spec.present_stacks(base) for layer in base.get_submodule(stack.layers)
            for att in stack.attention if kind(att) in cfg.attention]
