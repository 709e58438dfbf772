"""``apply``: turn a HF transformers model into a PELT model in place; ``merge`` and ``fold``
prepare it for deployment. Injection reads the config and the architecture spec; it never
mutates either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arch import ArchSpec, spec_for
from .attention import use_pelt_attention
from .blocks import Gate, LowRank, MaskSlot, Scale
from .config import (AdapterConfig, BitFitConfig, FullFineTuning, LoRAConfig, PeltConfig,
                     PrefixConfig, PromptConfig)
from .errors import UniPeltError
from .methods.adapter import Adapter
from .methods.lora import LoRALinear
from .methods.prefix import LayerPrefix, PrefixEncoder
from .methods.prompt import PeltEmbeddings
from .presets import get_preset
from .wrappers import PeltLayer, PeltResidualBlock, PeltSelfAttention

MARK = "pelt_"  # every added parameter's name contains it


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    layers: int


def _dims(model: nn.Module, spec: ArchSpec) -> Dims:
    cfg = model.config
    return Dims(*(getattr(cfg, spec.config_keys[k]) for k in ("hidden", "heads", "layers")))


def _replace(root: nn.Module, path: str, make) -> nn.Module:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    new = make(getattr(parent, leaf))
    setattr(parent, leaf, new)
    return new


def _as_config(preset_or_config) -> PeltConfig:
    if isinstance(preset_or_config, str):
        return get_preset(preset_or_config)
    if isinstance(preset_or_config, PeltConfig):
        return preset_or_config
    try:
        return PeltConfig(methods=(preset_or_config,))
    except UniPeltError:
        raise UniPeltError(f"apply() takes a preset name, a PeltConfig or a method config, "
                           f"not {type(preset_or_config).__name__}") from None


def _label_gates(module: nn.Module, layer: int, name: str) -> nn.Module:
    for m in module.modules():
        if isinstance(m, Gate):
            m.label = (layer, name)
    return module


def _inject_layer(layer: nn.Module, i: int, cfg: PeltConfig, spec: ArchSpec, dims: Dims,
                  prefix: PrefixEncoder | None) -> nn.Module:
    slot = MaskSlot()
    kw = dict(pooling=cfg.gate_pooling, slot=slot)
    for lora in cfg.of(LoRAConfig):
        for target in lora.targets:
            wrapped = _replace(layer, spec.linears[target], lambda lin: LoRALinear(lin, lora, **kw))
            _label_gates(wrapped, i, f"lora_{target}")
    head_adapters = [a for a in cfg.of(AdapterConfig) if a.target == "head"]
    if prefix is not None or head_adapters:
        attn = _replace(layer, spec.self_attn, PeltSelfAttention)
        if prefix is not None:
            gated = cfg.of(PrefixConfig)[0].composition == "gated"
            attn.pelt_prefix = _label_gates(LayerPrefix(prefix, i, dims.heads, gated, **kw), i, "prefix")
        if head_adapters:
            adapter = Adapter(head_adapters[0], dims.hidden, dims.heads, **kw)
            attn.pelt_adapter_head = _label_gates(adapter, i, "adapter_head")
    for target, path in (("attn", spec.attn_block), ("ffn", spec.ffn_block)):
        adapters = [a for a in cfg.of(AdapterConfig) if a.target == target]
        if not adapters:
            continue
        block = _replace(layer, path, lambda b: PeltResidualBlock(b, spec.block_parts))
        for a in adapters:
            group = block.pelt_adapter_parallel if a.insertion == "parallel" else block.pelt_adapter_sequential
            name = "adapter" if target == "ffn" else f"adapter_{target}"
            group.append(_label_gates(Adapter(a, dims.hidden, dims.heads, **kw), i, name))
    return PeltLayer(layer, slot) if cfg.gated else layer


def _place_like(model: nn.Module) -> None:
    """New modules follow the base model's device and floating dtype."""
    ref = next(p for n, p in model.named_parameters() if MARK not in n)
    for module in model.modules():
        if isinstance(module, (LowRank, Gate, Scale, PrefixEncoder)):
            module.to(device=ref.device, dtype=ref.dtype)


def head_parameter_names(model: nn.Module, spec: ArchSpec | None = None) -> set[str]:
    """The task head: what is outside the base model, plus the spec's ``head_in_base`` modules."""
    spec = spec or spec_for(model)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    in_base = tuple(f"{prefix}{h}." for h in spec.head_in_base)
    return {n for n, _ in model.named_parameters()
            if MARK not in n and ((prefix and not n.startswith(prefix)) or n.startswith(in_base))}


def _set_trainable(model: nn.Module, cfg: PeltConfig, spec: ArchSpec) -> None:
    full = bool(cfg.of(FullFineTuning))
    bitfit = bool(cfg.of(BitFitConfig))
    head = head_parameter_names(model, spec)
    for name, p in model.named_parameters():
        p.requires_grad_(full or MARK in name or name in head or (bitfit and name.endswith(".bias")))


def apply(model: nn.Module, preset_or_config) -> nn.Module:
    """Inject the configured modules into ``model``, freeze its base weights, keep the head
    trainable; returns ``model``. ``preset_or_config``: a name in ``PRESETS`` or a config."""
    cfg = _as_config(preset_or_config)
    if getattr(model, "pelt_config", None) is not None:
        raise UniPeltError("this model already has unipelt modules; apply() to a fresh model")
    spec = spec_for(model)
    dims = _dims(model, spec)
    base = model.base_model
    prefix = None
    if cfg.of(PrefixConfig):
        prefix = PrefixEncoder(cfg.of(PrefixConfig)[0], dims.hidden, dims.layers)
        model.pelt_prefix = prefix
    layers = base.get_submodule(spec.layers)
    for i in range(len(layers)):
        layers[i] = _inject_layer(layers[i], i, cfg, spec, dims, prefix)
    for prompt in cfg.of(PromptConfig):
        _replace(base, spec.embeddings, lambda e: PeltEmbeddings(e, prompt, dims.hidden))
    if prefix is not None or cfg.of(PromptConfig):
        use_pelt_attention(model)
    _place_like(model)
    _set_trainable(model, cfg, spec)
    model.pelt_config = cfg
    return model


def fold(model: nn.Module) -> nn.Module:
    """Replace the prefix reparameterisation network by the prefixes it produces."""
    prefix = getattr(model, "pelt_prefix", None)
    if prefix is not None:
        prefix.fold()
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every ungated LoRA into its base weight (and the prefix network into its output).

    Afterwards the LoRA wrappers are gone: inference costs what the plain model costs.
    """
    lora = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    gated = [n for n, m in lora if m.pelt_gate is not None]
    if gated:
        raise UniPeltError(f"gated LoRA cannot be merged (its scale depends on the input): {gated[:3]}...")
    for name, _ in lora:
        _replace(model, name, lambda m: m.merge())
    fold(model)
    return model


@torch.no_grad()
def zero_deltas(model: nn.Module) -> None:
    """Set every up-projection to zero, so each added module's Δh is 0 (a test helper)."""
    for name, p in model.named_parameters():
        if MARK in name and (name.endswith(".up") or name.endswith(".up_bias")):
            p.zero_()
