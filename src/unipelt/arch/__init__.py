"""Where each architecture keeps its attention, projections, FFN and layer norms.

Adding an architecture = one file here with an ``ArchSpec`` and its row in the test table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import UniPeltError


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """Paths are relative to ``model.base_model`` (layers) or to one layer (everything else).

    ``attn_block`` and ``ffn_block`` are post-norm residual blocks ``LN(drop(dense(h)) + x)``
    called as ``block(h, x)``; their parts are named by ``block_parts``.
    """

    model_types: tuple[str, ...]
    layers: str
    embeddings: str
    self_attn: str
    attn_block: str
    ffn_block: str
    linears: dict[str, str]  # LoRA target name -> path of the nn.Linear inside a layer
    block_parts: tuple[str, str, str] = ("dense", "dropout", "LayerNorm")
    head_in_base: tuple[str, ...] = ()  # base-model modules that belong to the task head
    config_keys: dict[str, str] = field(default_factory=lambda: {
        "hidden": "hidden_size", "heads": "num_attention_heads", "layers": "num_hidden_layers"})


_SPECS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    for model_type in spec.model_types:
        if model_type in _SPECS:
            raise UniPeltError(f"architecture {model_type!r} is already registered")
        _SPECS[model_type] = spec
    return spec


def spec_for(model: nn.Module) -> ArchSpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _SPECS:
        raise UniPeltError(f"unipelt does not support model_type {model_type!r} yet; "
                           f"supported: {', '.join(sorted(_SPECS))}")
    return _SPECS[model_type]


def supported() -> list[str]:
    return sorted(_SPECS)


from . import bert, roberta  # noqa: E402,F401  (each file registers its spec)
