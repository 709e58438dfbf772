"""Named configs with the papers' defaults (UniPELT App. B; He et al. 2022 §4-5).

UniPELT and MAM are unions of the single-method configs, not new code: see ``_unipelt``.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from .config import PeltConfig
from .errors import UniPeltError
from .methods.adapter import AdapterConfig
from .methods.bitfit import BitFitConfig, FullFineTuning, HeadOnly
from .methods.dora import DoRAConfig
from .methods.ia3 import IA3Config
from .methods.lora import LoRAConfig
from .methods.prefix import PrefixConfig
from .methods.prompt import PromptConfig

ADAPTER = AdapterConfig(target="ffn", insertion="sequential", r=48)  # Pfeiffer placement
PREFIX = PrefixConfig(length=10, mid_dim=512)
LORA = LoRAConfig(r=8, alpha=2.0, targets=("q", "v"))
SCALED_PA = AdapterConfig(target="ffn", insertion="parallel", r=512, composition="scaled", scale=4.0, init="lora")

_REGISTRY: dict[str, PeltConfig] = {}
_ALIASES: dict[str, str] = {}
DEFAULT_LEARNING_RATES: dict[str, float] = {}


def register(name: str, config: PeltConfig, lr: float) -> None:
    if name in _REGISTRY or name in _ALIASES:
        raise UniPeltError(f"preset {name!r} is already registered")
    _REGISTRY[name] = config
    DEFAULT_LEARNING_RATES[name] = lr


def alias(name: str, preset: str) -> None:
    """Another name for a preset; ``PRESETS`` lists each config once, under its own name."""
    if name in _REGISTRY or name in _ALIASES:
        raise UniPeltError(f"preset {name!r} is already registered")
    _ALIASES[name] = preset
    DEFAULT_LEARNING_RATES[name] = DEFAULT_LEARNING_RATES[preset]


def canonical(name: str) -> str:
    """The registered name behind an alias ("unipelt-nogate" -> "unipelt-ap-nogate")."""
    return _ALIASES.get(name, name)


def get_preset(name: str) -> PeltConfig:
    try:
        return _REGISTRY[canonical(name)]
    except KeyError:
        known = sorted([*_REGISTRY, *_ALIASES])
        raise UniPeltError(f"unknown preset {name!r}; known presets: {', '.join(known)}") from None


def _unipelt(*parts) -> PeltConfig:
    return PeltConfig(methods=tuple(replace(p, composition="gated") for p in parts))


register("full", PeltConfig(methods=(FullFineTuning(),)), 2e-5)
# the frozen backbone with only its task head trained; the head's own rate (head_lr) is what trains
register("head-only", PeltConfig(methods=(HeadOnly(),)), 1e-3)
register("bitfit", PeltConfig(methods=(BitFitConfig(),)), 1e-4)
register("adapter", PeltConfig(methods=(ADAPTER,)), 1e-4)
# Houlsby 2019 / He et al. Eq. 4: after both sublayers, on h before the residual and the LayerNorm.
HOULSBY = replace(ADAPTER, placement="houlsby")
register("adapter-houlsby", PeltConfig(methods=(replace(HOULSBY, target="attn"), HOULSBY)), 1e-4)
register("parallel-adapter", PeltConfig(methods=(replace(ADAPTER, insertion="parallel"),)), 1e-4)
register("scaled-parallel-adapter", PeltConfig(methods=(SCALED_PA,)), 1e-4)
register("mh-parallel-adapter", PeltConfig(methods=(AdapterConfig(target="head", insertion="parallel", r=48),)), 1e-4)
register("prefix", PeltConfig(methods=(PREFIX,)), 2e-4)
register("prompt", PeltConfig(methods=(PromptConfig(length=10),)), 2e-4)
register("lora", PeltConfig(methods=(LORA,)), 5e-4)
# Liu et al. 2024: LoRA's r, alpha and targets, with a magnitude per output row; LoRA's rate.
register("dora", PeltConfig(methods=(DoRAConfig(r=8, alpha=2.0, targets=("q", "v")),)), 5e-4)
# Liu et al. 2022 train (IA)³ with lr 3e-3; its vectors start at one and move little per step.
register("ia3", PeltConfig(methods=(IA3Config(),)), 3e-3)
register("unipelt-ap", _unipelt(ADAPTER, PREFIX), 5e-4)
register("unipelt-apl", _unipelt(ADAPTER, PREFIX, LORA), 5e-4)
# UniPELT Table 3's "-NoGate" sits under UniPELT (AP): adapter + prefix, no gates. The APL
# variant keeps LoRA at its ungated scale alpha/r, as the official code scales it.
register("unipelt-ap-nogate", PeltConfig(methods=(ADAPTER, PREFIX)), 5e-4)
alias("unipelt-nogate", "unipelt-ap-nogate")
register("unipelt-apl-nogate", PeltConfig(methods=(ADAPTER, PREFIX, LORA)), 5e-4)
# He et al. 2022 (§4.4, Table 5), as their scripts ran it: MAM = prefix l=30 at every attention
# (MLP width 800, one network per kind of attention) + scaled PA r=512, s=4 at the FFN. Its
# budget-matched variants swap the prefix for a scaled PA (r=30 costs 2·r·d like 2·l·d) or the FFN
# adapter for LoRA at fc1 and fc2 (r=102: 10·r·d ≈ 2·512·d), scaled by s=4 as well.
MAM_PREFIX = replace(PREFIX, length=30, mid_dim=800, networks="per_attention")
register("mam", PeltConfig(methods=(MAM_PREFIX, SCALED_PA)), 1e-4)
register("pa-attn-ffn", PeltConfig(methods=(replace(SCALED_PA, target="attn", r=30), SCALED_PA)), 1e-4)
register(
    "prefix-lora-ffn",
    PeltConfig(methods=(MAM_PREFIX, LoRAConfig(r=102, alpha=4.0 * 102, targets=("ffn_in", "ffn_out")))),
    1e-4,
)
# He et al.'s prefix "-gating" ablation: attention over the prefix alone, added to h (§3.1).
register("prefix-nogating", PeltConfig(methods=(replace(PREFIX, composition="add"),)), 2e-4)

PRESETS = MappingProxyType(_REGISTRY)
