"""Where each architecture keeps its attention, projections, FFN and layer norms.

Adding an architecture = one file here with an ``ArchSpec`` and its row in the test table.
Everything the injection code needs to know about a model is in these records; it never asks
which architecture it is looking at.

A sublayer (attention or FFN) is described by two places, paths relative to one layer: ``input``,
the module its input x enters, and for post-norm models ``norm``, the LayerNorm applied to x + h.
In pre-norm models (Llama, T5; ``norm=None``) the input module also returns h, the sublayer's
output before the residual sum, and adapters go around it; in post-norm models (BERT, BART,
whose FFN may be inline linears) they go around the norm.

A projection is a path to a linear map (``nn.Linear`` or GPT-2's ``Conv1D``) or a ``Part`` of a
fused one: GPT-2's ``c_attn``, ModernBERT's ``Wqkv`` and Phi-3's ``qkv_proj`` compute [q; k; v] in
one matmul, Phi-3's ``gate_up_proj`` [gate; up]. LoRA and (IA)³ on a part change its rows only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..attention import features
from ..errors import UniPeltError


@dataclass(frozen=True, kw_only=True)
class Part:
    """One part of a fused linear map's output, ``[p_0; p_1; ...]`` along the output features."""

    path: str  # the fused linear map, relative to one layer
    name: str  # "q", "gate": names the part's modules and gates
    index: int  # its place among the parts
    shares: tuple[int | str, ...]  # every part's width in units: a number or a config attribute (head counts)

    def rows(self, width: int, config) -> tuple[int, int]:
        """[start, stop) of this part among the ``width`` output features of the fused map."""
        units = [s if isinstance(s, int) else getattr(config, s) for s in self.shares]
        unit, rest = divmod(width, sum(units))
        if rest:
            raise UniPeltError(f"{self.path}: {width} output features do not split as {self.shares} = {units}")
        start = unit * sum(units[: self.index])
        return start, start + unit * units[self.index]


Projection = str | Part


def fused(path: str, names: tuple[str, ...], shares: tuple[int | str, ...] | None = None) -> tuple[Part, ...]:
    """The parts of the fused map at ``path``, in output order; equal widths unless ``shares``."""
    shares = shares or (1,) * len(names)
    return tuple(Part(path=path, name=n, index=i, shares=shares) for i, n in enumerate(names))


def path_of(projection: Projection) -> str:
    return projection.path if isinstance(projection, Part) else projection


def name_of(projection: Projection) -> str:
    """A short name: the part's, or the linear map's own (``gate_proj``)."""
    return projection.name if isinstance(projection, Part) else projection.rpartition(".")[2]


def locate(layer: nn.Module, projection: Projection, config) -> tuple[str, tuple[int, int] | None]:
    """(path of the linear map, the output rows it owns there or None for the whole map)."""
    if isinstance(projection, str):
        return projection, None
    return projection.path, projection.rows(features(layer.get_submodule(projection.path))[1], config)


def width(layer: nn.Module, projection: Projection, config) -> int:
    """The output width of a projection: its part's rows, or the whole map's output features."""
    path, rows = locate(layer, projection, config)
    return rows[1] - rows[0] if rows else features(layer.get_submodule(path))[1]


@dataclass(frozen=True, kw_only=True)
class Sublayer:
    input: str
    norm: str | None = None  # post-norm only
    # pre-norm only, when the input module does not return h: the module that does (an inline
    # FFN written out in the layer, mBART's fc2); adapters go around it and read x from ``input``
    output: str | None = None

    @property
    def kind(self) -> str:
        """ "self" or "cross" for attention, "ffn" for the feed-forward sublayer."""
        return "ffn"


@dataclass(frozen=True, kw_only=True)
class Attention(Sublayer):
    """``input`` is the module whose forward calls the attention function (where prefixes go)."""

    q: Projection
    k: Projection
    v: Projection
    o: str
    cross: bool = False  # decoder cross-attention: keys and values come from the encoder

    @property
    def kind(self) -> str:
        return "cross" if self.cross else "self"


@dataclass(frozen=True, kw_only=True)
class FFN(Sublayer):
    ffn_in: tuple[Projection, ...]  # LoRA "ffn_in": every listed linear the layer has (T5: wi or wi_0/wi_1)
    ffn_out: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Stack:
    """A stack of identical layers: an encoder, a decoder, or a decoder-only model's layers."""

    name: str  # labels gates in models with more than one stack ("encoder.adapter")
    layers: str  # path of the nn.ModuleList, relative to ``model.base_model``
    causal: bool  # a decoder's layers: their gates stay per token (blocks.Gate)
    attention: tuple[Attention, ...]
    ffn: FFN
    mask_position: int = 1  # the padding mask's place among a layer's positional arguments

    def lora_paths(self) -> dict[tuple[str, str], tuple[Projection, ...]]:
        """(target, attention kind or "ffn") -> the linear maps it names in one layer."""
        paths = {
            (target, "cross" if att.cross else "self"): (getattr(att, target),)
            for att in self.attention
            for target in ("q", "k", "v", "o")
        }
        paths[("ffn_in", "ffn")] = self.ffn.ffn_in
        paths[("ffn_out", "ffn")] = self.ffn.ffn_out
        return paths


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    model_types: tuple[str, ...]
    stacks: tuple[Stack, ...]
    hidden_key: str = "hidden_size"  # config attribute holding d
    head_dim: str = "head_dim"  # attribute of an attention module: the width of one head
    # Prompt tuning's insertion point, relative to the base model. None in decoder-only models,
    # where inserted tokens would break the model's own heads (a causal LM's labels, a last-token
    # classifier's index): there the prompt is served as prefix keys/values (methods/prompt.py).
    embeddings: str | None = None
    # How many leading tokens stay in front of the prompt: 0 prepends it (Lester et al.); BERT's
    # family keeps [CLS] first, which its pooler and classifier read.
    prompt_at: int = 0
    # Why prompt tuning cannot run on this architecture, or None where it can.
    no_prompt: str | None = None
    # A model setting under which it cannot: (config attribute, its value, why), or None.
    no_prompt_if: tuple[str, object, str] | None = None
    # Positions are learned absolute embeddings (GPT-2's wpe), not rotary: a decoder's prompt pass
    # (methods/prompt.py) then takes positions 0..l-1, as rotary positions -l..-1 do not exist there.
    absolute_positions: bool = False
    # An encoder with rotary positions computed outside its embeddings (ModernBERT's ``rotary_emb``,
    # relative to the base model): an inserted prompt lengthens the position ids it receives.
    rotary: str | None = None
    # The token the model's own sequence-classification head reads (heads.py puts a "mean" or
    # "last" summary there): "first" ([CLS], <s>), "last" (a decoder's last real token), or None
    # where the head reads something else (BART's and T5's eos state, ModernBERT's own pooling).
    summary: str | None = "first"
    # The model's own classification head reads the last eos state, and refuses a batch whose rows
    # hold different numbers of eos tokens (BART, mBART, T5): a mixed batch runs them apart.
    eos_head: bool = False

    def check_prompt(self, config) -> None:
        """Refuse prompt tuning where ``no_prompt`` or, for this model's ``config``,
        ``no_prompt_if`` says why it cannot run."""
        kinds = "/".join(self.model_types)
        if self.no_prompt is not None:
            raise UniPeltError(f"prompt tuning is not available on {kinds}: {self.no_prompt}")
        if self.no_prompt_if is not None:
            key, value, why = self.no_prompt_if
            if getattr(config, key, None) == value:
                raise UniPeltError(f"prompt tuning on {kinds} with {key}={value!r} is not offered: {why}")

    def present_stacks(self, base: nn.Module) -> tuple[Stack, ...]:
        """The stacks this model has: ``T5EncoderModel`` is T5 without its decoder."""
        stacks = tuple(s for s in self.stacks if _has(base, s.layers))
        if not stacks:
            raise UniPeltError(f"the model has none of the layer stacks {[s.layers for s in self.stacks]}")
        return stacks


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


_SPECS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    for model_type in spec.model_types:
        if model_type in _SPECS:
            raise UniPeltError(f"architecture {model_type!r} is already registered")
        _SPECS[model_type] = spec
    return spec


HOW_TO_ADD = 'docs/contributing.md, "Adding an architecture"'


def _unsupported(model_type) -> UniPeltError:
    return UniPeltError(
        f"unipelt does not support model_type {model_type!r} yet; supported: "
        f"{', '.join(sorted(_SPECS))}. Adding one is a small data file: see {HOW_TO_ADD}"
    )


def spec_for(model: nn.Module) -> ArchSpec:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise UniPeltError(f"expected a transformers model (a PreTrainedModel), got {type(model).__name__}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _SPECS:
        raise _unsupported(model_type)
    spec = _SPECS[model_type]
    if getattr(model.config, "is_decoder", False) and not any(s.causal for s in spec.stacks):
        raise UniPeltError(
            f"{type(model).__name__} runs {model_type} as a decoder (is_decoder=True), where unipelt places "
            "its modules as in an encoder: its gates would pool over later tokens. Use the encoder "
            "(is_decoder=False) or a decoder architecture"
        )
    return spec


def check_supported(model_type_or_path: str | os.PathLike) -> str:
    """Refuse an unsupported architecture before any weights load; returns its ``model_type``.

    Takes a ``model_type`` ("gpt2"), a model directory or its ``config.json``: only that file is
    read. A hub name that is not a local path is taken as a model type only if it is one.
    """
    path = Path(model_type_or_path)
    config = path / "config.json" if path.is_dir() else path
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError, RecursionError) as e:
            raise UniPeltError(f"{config} is not a readable model config.json: {e}") from None
    else:
        model_type = str(model_type_or_path)
    if model_type not in _SPECS:
        raise _unsupported(model_type)
    return model_type


def supported() -> list[str]:
    return sorted(_SPECS)


from . import (  # noqa: E402,F401  (each file registers its spec)
    bart,
    bert,
    deberta_v2,
    distilbert,
    electra,
    gemma,
    gpt2,
    llama,
    mbart,
    mistral,
    modernbert,
    phi3,
    qwen,
    roberta,
    t5,
)
