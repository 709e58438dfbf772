"""Looking at a PELT model: trainable parameters per kind, and what its gates do."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .blocks import Gate
from .config import BitFitConfig
from .inject import MARK, head_parameter_names, saved_module_names
from .methods.prefix import PrefixEncoder

KINDS = ("adapter", "prefix", "lora", "prompt")


def _kind(name: str, bitfit: bool) -> str:
    if f"{MARK}gate" in name:
        return "gate"
    for kind in KINDS:
        if f"{MARK}{kind}" in name:
            return kind
    return "bitfit" if bitfit else "base"


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per kind ("adapter", "prefix", "lora", "prompt", "gate", "bitfit",
    "modules_to_save", "base" for full fine-tuning), and:

    head: the task head, always trained and, as in the papers' counts, in no total;
    total: everything else that trains now, the prefix network included;
    inference: what ``total`` becomes once the prefix is folded;
    trainable: everything that trains now, head included.
    """
    head = head_parameter_names(model) if hasattr(model, "base_model") else set()
    config = getattr(model, "pelt_config", None)
    bitfit = config is not None and bool(config.of(BitFitConfig))
    saved = saved_module_names(model, config) if config is not None else set()
    counts: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "head" if name in head else "modules_to_save" if name in saved else _kind(name, bitfit)
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
    found: dict[int, dict[str, float]] = defaultdict(dict)
    handles = []
    for name, module in model.named_modules():
        label = getattr(module, "label", None) if isinstance(module, Gate) else None
        if label is None:
            continue

        def record(_m, _inp, out, label=label):
            found[label[0]][label[1]] = out.float().mean().item()
        handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        if handles:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: dict(sorted(v.items())) for k, v in sorted(found.items())}
