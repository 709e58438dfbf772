"""Named configs with the papers' defaults (UniPELT App. B; He et al. 2022 §4-5).

UniPELT and MAM are unions of the single-method configs, not new code: see ``_unipelt``.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from .config import (AdapterConfig, BitFitConfig, FullFineTuning, LoRAConfig, PeltConfig,
                     PrefixConfig, PromptConfig)
from .errors import UniPeltError

ADAPTER = AdapterConfig(target="ffn", insertion="sequential", r=48)  # Pfeiffer placement
PREFIX = PrefixConfig(length=10, mid_dim=512)
LORA = LoRAConfig(r=8, alpha=2.0, targets=("q", "v"))
SCALED_PA = AdapterConfig(target="ffn", insertion="parallel", r=512, composition="scaled",
                          scale=4.0, init="lora")

_REGISTRY: dict[str, PeltConfig] = {}
DEFAULT_LEARNING_RATES: dict[str, float] = {}


def register(name: str, config: PeltConfig, lr: float) -> None:
    if name in _REGISTRY:
        raise UniPeltError(f"preset {name!r} is already registered")
    _REGISTRY[name] = config
    DEFAULT_LEARNING_RATES[name] = lr


def get_preset(name: str) -> PeltConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UniPeltError(f"unknown preset {name!r}; known presets: {', '.join(sorted(_REGISTRY))}") from None


def _unipelt(*parts) -> PeltConfig:
    return PeltConfig(methods=tuple(replace(p, composition="gated") for p in parts))


register("full", PeltConfig(methods=(FullFineTuning(),)), 2e-5)
register("bitfit", PeltConfig(methods=(BitFitConfig(),)), 1e-4)
register("adapter", PeltConfig(methods=(ADAPTER,)), 1e-4)
register("adapter-houlsby", PeltConfig(methods=(replace(ADAPTER, target="attn"), ADAPTER)), 1e-4)
register("parallel-adapter", PeltConfig(methods=(replace(ADAPTER, insertion="parallel"),)), 1e-4)
register("scaled-parallel-adapter", PeltConfig(methods=(SCALED_PA,)), 1e-4)
register("mh-parallel-adapter",
         PeltConfig(methods=(AdapterConfig(target="head", insertion="parallel", r=48),)), 1e-4)
register("prefix", PeltConfig(methods=(PREFIX,)), 2e-4)
register("prompt", PeltConfig(methods=(PromptConfig(length=10),)), 2e-4)
register("lora", PeltConfig(methods=(LORA,)), 5e-4)
register("unipelt-ap", _unipelt(ADAPTER, PREFIX), 5e-4)
register("unipelt-apl", _unipelt(ADAPTER, PREFIX, LORA), 5e-4)
# The paper's ablation: every gate fixed to 1, i.e. plain adapter + prefix and LoRA scaled by 1.
register("unipelt-nogate", PeltConfig(methods=(ADAPTER, PREFIX, replace(LORA, alpha=float(LORA.r)))), 5e-4)
# He et al. 2022 (§4.4, Table 5): MAM = prefix l=30 at every attention + scaled PA r=512 at the
# FFN; its budget-matched variants swap the prefix for a scaled PA (r=30 costs 2·r·d like 2·l·d)
# or the FFN adapter for LoRA at fc1 and fc2 (r=102: 10·r·d ≈ 2·512·d), scaled by s=4 as well.
register("mam", PeltConfig(methods=(replace(PREFIX, length=30), SCALED_PA)), 1e-4)
register("pa-attn-ffn", PeltConfig(methods=(replace(SCALED_PA, target="attn", r=30), SCALED_PA)), 1e-4)
register("prefix-lora-ffn", PeltConfig(methods=(
    replace(PREFIX, length=30), LoRAConfig(r=102, alpha=4.0 * 102, targets=("ffn_in", "ffn_out")))), 1e-4)

PRESETS = MappingProxyType(_REGISTRY)
