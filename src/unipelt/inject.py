"""``apply``: turn a HF transformers model into a PELT model in place; ``merge`` and ``fold``
prepare it for deployment. Injection reads the config and the architecture spec; it never
mutates either.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .arch import ArchSpec, spec_for
from .attention import use_pelt_attention
from .blocks import Gate, LowRank, MaskSlot, Scale
from .config import BitFitConfig, FullFineTuning, PeltConfig, PrefixConfig, PromptConfig
from .errors import UniPeltError
from .methods.lora import LoRALinear
from .methods.prefix import PrefixEncoder
from .methods.prompt import CausalPrompt, PeltEmbeddings
from .placement import LayerContext, inject_layer, prefix_slots, replace_module
from .presets import get_preset

MARK = "pelt_"  # every added parameter's name contains it


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


def _prefix_encoder(base: nn.Module, spec: ArchSpec, cfg: PeltConfig, d: int) -> PrefixEncoder | None:
    if not cfg.of(PrefixConfig):
        return None
    prefix = cfg.of(PrefixConfig)[0]
    slots = prefix_slots(base, spec, prefix)
    if not slots:
        raise UniPeltError(f"PrefixConfig.attention={prefix.attention} matches no attention sublayer of this model")
    widths = {w for w, _ in slots}
    if len(widths) != 1:
        raise UniPeltError(f"prefix tuning needs attention sublayers with one key width; found {sorted(widths)}")
    return PrefixEncoder(prefix, d, [group for _, group in slots], widths.pop())


def _causal_prompt(base: nn.Module, cfg: PeltConfig) -> CausalPrompt:
    if cfg.of(PrefixConfig):
        raise UniPeltError("prompt and prefix tuning together are not offered on decoder-only models: there "
                           "the prompt is itself served as a prefix (methods/prompt.py); use one of them")
    return CausalPrompt(cfg.of(PromptConfig)[0], base)


def _inject_layers(base: nn.Module, spec: ArchSpec, cfg: PeltConfig, d: int, prefix: PrefixEncoder | None) -> None:
    slots = itertools.count()
    stacks = spec.present_stacks(base)
    for stack in stacks:
        label = f"{stack.name}." if len(stacks) > 1 else ""
        layers = base.get_submodule(stack.layers)
        for i in range(len(layers)):
            ctx = LayerContext(index=i, stack=stack, label=label, cfg=cfg, spec=spec, d=d,
                               slot=MaskSlot(causal=stack.causal), prefix=prefix, prefix_slots=slots)
            layers[i] = inject_layer(layers[i], ctx)


def _place_like(model: nn.Module) -> None:
    """New modules follow the base model's device and floating dtype."""
    ref = next(p for n, p in model.named_parameters() if MARK not in n)
    for module in model.modules():
        if isinstance(module, (LowRank, Gate, Scale, PrefixEncoder)):
            module.to(device=ref.device, dtype=ref.dtype)


def _base_prefix(model: nn.Module) -> str:
    return "" if model.base_model is model else model.base_model_prefix + "."


def head_parameter_names(model: nn.Module) -> set[str]:
    """The task head: every parameter outside the base model (BERT's ``classifier``, Llama's
    ``score``, BART's and T5's ``classification_head``, RoBERTa's whole classification head).

    A language model's output embedding is not a task head: it is pretrained (often tied to the
    input embedding) and has vocabulary size, so causal and seq2seq LMs keep it frozen.
    """
    prefix = _base_prefix(model)
    if not prefix:
        return set()
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    pretrained = {id(p) for p in lm_head.parameters()} if isinstance(lm_head, nn.Module) else set()
    return {n for n, p in model.named_parameters()
            if MARK not in n and id(p) not in pretrained and not n.startswith(prefix)}


def saved_module_names(model: nn.Module, cfg: PeltConfig) -> set[str]:
    """Parameters of the base-model modules named in ``cfg.modules_to_save``."""
    prefix = _base_prefix(model)
    paths = tuple(f"{prefix}{m}." for m in cfg.modules_to_save)
    return {n for n, _ in model.named_parameters() if paths and n.startswith(paths)}


def _check_modules_to_save(base: nn.Module, cfg: PeltConfig) -> None:
    for path in cfg.modules_to_save:
        try:
            base.get_submodule(path)
        except AttributeError:
            children = ", ".join(name for name, _ in base.named_children())
            raise UniPeltError(f"modules_to_save names {path!r}, which the base model does not have; "
                               f"its modules are: {children}") from None


def _set_trainable(model: nn.Module, cfg: PeltConfig) -> None:
    full = bool(cfg.of(FullFineTuning))
    bitfit = bool(cfg.of(BitFitConfig))
    train = head_parameter_names(model) | saved_module_names(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(full or MARK in name or name in train or (bitfit and name.endswith(".bias")))


def apply(model: nn.Module, preset_or_config) -> nn.Module:
    """Inject the configured modules into ``model``, freeze its base weights, keep the head
    trainable; returns ``model``. ``preset_or_config``: a name in ``PRESETS`` or a config."""
    cfg = _as_config(preset_or_config)
    if getattr(model, "pelt_config", None) is not None:
        raise UniPeltError("this model already has unipelt modules; apply() to a fresh model")
    spec = spec_for(model)
    d = getattr(model.config, spec.hidden_key)
    base = model.base_model
    _check_modules_to_save(base, cfg)
    existing = set(model.modules())
    if cfg.of(PromptConfig) and spec.embeddings is None:  # decoder-only: the prompt is served as a prefix
        prefix = model.pelt_prompt = _causal_prompt(base, cfg)
    elif (prefix := _prefix_encoder(base, spec, cfg, d)) is not None:
        model.pelt_prefix = prefix
    _inject_layers(base, spec, cfg, d, prefix)
    for prompt in cfg.of(PromptConfig) if spec.embeddings else ():
        replace_module(base, spec.embeddings, lambda e: PeltEmbeddings(e, prompt, d, spec.prompt_at))
    if prefix is not None or cfg.of(PromptConfig):
        use_pelt_attention(model, prompt_at=spec.prompt_at if cfg.of(PromptConfig) and spec.embeddings else 0)
    _place_like(model)
    _set_trainable(model, cfg)
    for module in model.modules():  # new modules follow the model: an eval model stays deterministic
        if module not in existing:
            module.train(model.training)
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
        replace_module(model, name, lambda m: m.merge())
    fold(model)
    return model


@torch.no_grad()
def zero_deltas(model: nn.Module) -> None:
    """Set every up-projection to zero, so each added module's Δh is 0 (a test helper)."""
    for name, p in model.named_parameters():
        if MARK in name and (name.endswith(".up") or name.endswith(".up_bias")):
            p.zero_()
