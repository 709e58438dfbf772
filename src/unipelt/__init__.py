"""unipelt: parameter-efficient tuning of pretrained Transformers.

Adapters, prefix tuning, LoRA, prompt tuning, (IA)³ and BitFit as points of one design space
(He et al., ICLR 2022), combined and gated as in UniPELT (Mao et al., ACL 2022).
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .version import __version__

# The API loads on first use (PEP 562), so `unipelt --help` and `import unipelt.offline` do not
# import torch and transformers (seconds, on a loaded machine tens of seconds). A new public name:
# its import in _api.py and its line in __all__.
if TYPE_CHECKING:  # type checkers and IDEs see the names themselves
    from ._api import *  # noqa: F403

# ruff: noqa: F405 (the names in __all__ are _api's)


def __getattr__(name: str):
    if name in __all__:  # the whole API at once: every method registered, whichever name comes first
        globals()[name] = getattr(importlib.import_module(f"{__name__}._api"), name)  # found directly from now on
        return globals()[name]
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # `unipelt.arch`, as the eager import allowed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "__version__",
    "AdapterConfig",
    "BitFitConfig",
    "DoRAConfig",
    "FullFineTuning",
    "HeadOnly",
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
    "DEFAULT_MODEL",
    "model_path",
    "from_peft",
    "from_adapters",
    "to_peft",
]
