"""unipelt: parameter-efficient tuning of pretrained Transformers.

Adapters, prefix tuning, LoRA, prompt tuning, (IA)³ and BitFit as points of one design space
(He et al., ICLR 2022), combined and gated as in UniPELT (Mao et al., ACL 2022).
"""

from .checkpoint import load, save
from .config import MethodConfig, PeltConfig
from .errors import UniPeltError
from .inject import apply, disable, enable, fold, merge, merge_and_unload, unload
from .interop import from_adapters, from_peft, to_peft
from .introspect import count_parameters, gate_values
from .methods.adapter import AdapterConfig
from .methods.bitfit import BitFitConfig, FullFineTuning
from .methods.ia3 import IA3Config
from .methods.lora import LoRAConfig
from .methods.prefix import PrefixConfig
from .methods.prompt import PromptConfig
from .multitask import MultiTask
from .presets import DEFAULT_LEARNING_RATES, PRESETS, get_preset
from .version import __version__

__all__ = [
    "__version__",
    "AdapterConfig",
    "BitFitConfig",
    "FullFineTuning",
    "IA3Config",
    "LoRAConfig",
    "MethodConfig",
    "PeltConfig",
    "PrefixConfig",
    "PromptConfig",
    "UniPeltError",
    "DEFAULT_LEARNING_RATES",
    "PRESETS",
    "get_preset",
    "apply",
    "disable",
    "enable",
    "fold",
    "merge",
    "merge_and_unload",
    "unload",
    "count_parameters",
    "gate_values",
    "load",
    "save",
    "MultiTask",
    "from_peft",
    "from_adapters",
    "to_peft",
]
