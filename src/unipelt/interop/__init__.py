"""Checkpoints of other libraries, in and out. Only safe formats are read: JSON, safetensors, and
a ``.bin`` only through ``torch.load(weights_only=True)``.

- ``from_adapters``: AdapterHub ``adapters`` modules (adapterhub.py, configs in adapterhub_config.py)
- ``from_peft`` / ``to_peft``: HF peft LoRA and prompt tuning (peft_format.py)

docs/migration.md has the config-name table and what each direction refuses.
"""

from .adapterhub import from_adapters
from .peft_format import from_peft, to_peft

__all__ = ["from_adapters", "from_peft", "to_peft"]
