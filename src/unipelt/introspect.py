"""Looking at a PELT model: trainable parameters per kind, and what its gates do."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .blocks import Gate
from .inject import head_parameter_names, require_model, require_pelt, saved_module_names
from .methods import configured, kind_of_module
from .methods.prefix import PrefixEncoder


def _own_parameters(module: nn.Module):
    """A method module's parameters, without those of the base layer it wraps."""
    return (p for n, p in module.named_parameters() if not n.startswith("base_layer.") and ".base_layer." not in n)


def _kinds(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> the kind of the method module (registry) or gate that owns it."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, Gate):
            kinds.update((id(p), "gate") for p in module.parameters())
    for module in model.modules():
        kind = kind_of_module(module)
        if kind is not None:
            for p in _own_parameters(module):
                kinds.setdefault(id(p), kind)
    return kinds


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per kind (the methods' kinds: "adapter", "prefix", "lora", "prompt",
    "ia3", "gate", "bitfit", "base" for full fine-tuning; "modules_to_save"), and:

    head: the task head, always trained and, as in the papers' counts, in no total;
    total: everything else that trains now, the prefix network included;
    inference: what ``total`` becomes once the prefix is folded;
    trainable: everything that trains now, head included.
    """
    require_model(model)
    head = head_parameter_names(model) if hasattr(model, "base_model") else set()
    config = getattr(model, "pelt_config", None)
    saved = saved_module_names(model, config) if config is not None else set()
    base_kind = next((m.kind for m, _ in configured(config) if m.trains is not None), "base") if config else "base"
    owners = _kinds(model)
    counts: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "head" if name in head else "modules_to_save" if name in saved else owners.get(id(p), base_kind)
            counts[kind] += p.numel()
    counts = dict(counts)
    counts.setdefault("head", 0)
    counts["total"] = sum(v for k, v in counts.items() if k != "head")
    counts["trainable"] = counts["total"] + counts["head"]
    counts["inference"] = counts["total"]
    prefix = getattr(model, "pelt_prefix", None)
    if isinstance(prefix, PrefixEncoder) and prefix.folded is None and prefix.trains_network:
        counts["inference"] += prefix.inference_numel() - counts.get("prefix", 0)
    return counts


@torch.no_grad()
def gate_values(model: nn.Module, batch: dict) -> dict[int, dict[str, float]]:
    """Mean gate value per layer and submodule for ``batch`` (model inputs as a dict).

    Submodule names are "adapter", "lora_q", "prefix", ...; in encoder-decoders they start with
    the stack ("decoder.lora_q") and cross-attention ones with "cross." ("decoder.cross.prefix").

    Hooks are attached only for this call, so a model that is not asked costs nothing extra.
    """
    require_pelt(model)
    found: dict[int, dict[str, float]] = defaultdict(dict)
    handles = []
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    for name, module in model.named_modules():
        label = getattr(module, "label", None) if isinstance(module, Gate) else None
        if label is None:
            continue

        def record(_m, _inp, out, label=label):
            value = out.float()
            if mask is not None and value.dim() == 3 and value.shape[:2] == mask.shape and value.shape[1] > 1:
                real = mask.to(value)[..., None]  # a causal layer's gates are per token: its real ones
                found[label[0]][label[1]] = ((value * real).sum() / real.sum().clamp_min(1)).item()
            else:
                found[label[0]][label[1]] = value.mean().item()

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        if handles:  # eagerly: a compiled graph would skip the hooks (unipelt.compile)
            with torch.compiler.set_stance("force_eager"):
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: dict(sorted(v.items())) for k, v in sorted(found.items())}
