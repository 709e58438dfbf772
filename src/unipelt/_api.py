"""The public API, imported as a whole the first time ``unipelt.<name>`` is used (see
``__init__.py``): one import of every method module, so that the method registry is complete
whichever name comes first."""

# ruff: noqa: F401
from .checkpoint import load, save
from .config import MethodConfig, PeltConfig
from .errors import UniPeltError
from .inject import apply, disable, enable, fold, merge, merge_and_unload, unload
from .interop import from_adapters, from_peft, to_peft
from .introspect import count_parameters, gate_values
from .methods.adapter import AdapterConfig
from .methods.bitfit import BitFitConfig, FullFineTuning, HeadOnly
from .methods.dora import DoRAConfig
from .methods.ia3 import IA3Config
from .methods.lora import LoRAConfig
from .methods.prefix import PrefixConfig
from .methods.prompt import PromptConfig
from .multitask import MultiTask
from .offline import DEFAULT_MODEL, model_path
from .presets import DEFAULT_LEARNING_RATES, PRESETS, get_preset
