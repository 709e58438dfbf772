"""unipelt: parameter-efficient tuning of pretrained Transformers.

Adapters, prefix tuning, LoRA and prompt tuning as points of one design space (He et al., ICLR
2022), combined and gated as in UniPELT (Mao et al., ACL 2022).
"""

__version__ = "0.1.0"

from .config import (AdapterConfig, BitFitConfig, FullFineTuning, LoRAConfig, PeltConfig,  # noqa: E402
                     PrefixConfig, PromptConfig)
from .errors import UniPeltError  # noqa: E402
from .presets import DEFAULT_LEARNING_RATES, PRESETS, get_preset  # noqa: E402
from .inject import apply, fold, merge  # noqa: E402
from .introspect import count_parameters, gate_values  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .interop import from_peft  # noqa: E402

__all__ = [
    "AdapterConfig", "BitFitConfig", "FullFineTuning", "LoRAConfig", "PeltConfig", "PrefixConfig",
    "PromptConfig", "UniPeltError", "DEFAULT_LEARNING_RATES", "PRESETS", "get_preset", "apply",
    "fold", "merge", "count_parameters", "gate_values", "load", "save", "from_peft",
]
