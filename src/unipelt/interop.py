"""Importing checkpoints from other libraries. Only safe formats are read (JSON, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .arch import spec_for
from .config import PeltConfig
from .methods.lora import LoRAConfig
from .errors import UniPeltError
from .inject import apply

_UNSUPPORTED = {"use_dora": "DoRA", "use_rslora": "rsLoRA", "fan_in_fan_out": "fan_in_fan_out"}


def _peft_lora_config(cfg: dict, model: nn.Module) -> LoRAConfig:
    if cfg.get("peft_type") != "LORA":
        raise UniPeltError(f"only peft LoRA checkpoints can be imported, this one is {cfg.get('peft_type')!r}")
    for key, name in _UNSUPPORTED.items():
        if cfg.get(key):
            raise UniPeltError(f"the peft checkpoint uses {name}, which unipelt does not implement")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("bias", "none") != "none":
        raise UniPeltError("peft checkpoints with rank/alpha patterns or trained biases are not supported")
    attention = spec_for(model).stacks[0].attention[0]
    leaf_to_target = {getattr(attention, t).rpartition(".")[2]: t for t in ("q", "k", "v")}
    modules = cfg["target_modules"]
    modules = [modules] if isinstance(modules, str) else modules
    if unknown := [m for m in modules if m not in leaf_to_target]:
        raise UniPeltError(f"peft target_modules {unknown} have no unipelt equivalent; known: {sorted(leaf_to_target)}")
    targets = tuple(sorted((leaf_to_target[m] for m in modules), key="qkv".index))
    return LoRAConfig(r=cfg["r"], alpha=float(cfg["lora_alpha"]), targets=targets,
                      dropout=float(cfg.get("lora_dropout", 0.0)))


def from_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply a HF peft LoRA checkpoint (``adapter_config.json`` + ``adapter_model.safetensors``)
    to a fresh base ``model`` as a unipelt LoRA; the task head it saved is loaded too."""
    directory = Path(directory)
    cfg_path, weights_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise UniPeltError(f"{directory} is not a peft checkpoint: expected adapter_config.json and "
                           "adapter_model.safetensors (pickled .bin files are never loaded)")
    lora = _peft_lora_config(json.loads(cfg_path.read_text()), model)
    try:
        tensors = load_file(weights_path)
    except SafetensorError as e:
        raise UniPeltError(f"{weights_path} is not a readable safetensors file: {e}") from None
    apply(model, PeltConfig(methods=(lora,)))
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in tensors.items():
            name = key.removeprefix("base_model.model.")
            if ".lora_A." in name or ".lora_B." in name:
                owner, _, part = name.partition(".lora_")
                block = modules[owner].pelt_lora
                target = block.down[0] if part.startswith("A") else block.up[0]
                target.copy_(tensor.T)
            elif name in params:
                params[name].copy_(tensor)
            else:
                raise UniPeltError(f"{weights_path}: tensor {key!r} has no place in this model")
    return model
