"""Typed configs: every PELT method is a point in He et al.'s design space (ICLR 2022, Table 1).

Dimensions are fields, not prose: functional form (bottleneck ``r`` + ``activation``), insertion
form, modified representation (``target``) and composition function. Each method's config lives
in its own file under ``methods/`` as a subclass of ``MethodConfig``, which registers it under
its JSON name. Invalid combinations are rejected at construction, so a config that exists is a
config that can be applied. Configs are frozen: ``dataclasses.replace`` makes variants (UniPELT =
the same three configs with ``composition="gated"``), and injection never mutates them, so what
is logged is what ran.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from .errors import UniPeltError

Activation = Literal["relu", "gelu", "tanh", "identity"]
# He et al.'s composition functions, plus UniPELT's gate: add h + Δh; scaled h + s·Δh; gated
# h + G(z)·Δh with G a pooled sigmoid gate; interpolate (1 - λ(z))·h + λ(z)·Δh, He et al.'s
# "gated addition", with λ a per-token sigmoid.
Composition = Literal["add", "scaled", "gated", "interpolate"]
Init = Literal["bert", "lora"]
GatePooling = Literal["masked_mean", "mean"]
# The summary of the sequence the task head reads (heads.py): "auto" picks the backbone's own
# pretrained summary when apply() sees the model; "model" keeps the model class's head as it is.
Head = Literal["auto", "model", "pooler", "mean", "last"]
AttentionKind = Literal["self", "cross"]  # encoder/decoder self-attention, decoder cross-attention
ALL_ATTENTION: tuple[AttentionKind, ...] = ("self", "cross")


def check_choice(owner: str, name: str, value: Any, allowed: Any) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise UniPeltError(f"{owner}.{name}={value!r} is not one of {list(choices)}")


def check_choices(owner: str, name: str, values: Any, allowed: Any) -> tuple:
    """A non-empty tuple of distinct choices; lists (e.g. from JSON) become tuples."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise UniPeltError(f"{owner}.{name} must be a non-empty tuple, got {values!r}")
    values = tuple(values)
    for v in values:
        check_choice(owner, name, v, allowed)
    if len(set(values)) != len(values):
        raise UniPeltError(f"{owner}.{name} has duplicates: {values}")
    return values


def check_attention(owner: str, cfg: Any, applies: bool) -> None:
    """``attention`` picks the attention sublayers (self, cross) a method goes to; models without
    cross-attention simply have none to pick."""
    object.__setattr__(cfg, "attention", check_choices(owner, "attention", cfg.attention, AttentionKind))
    if not applies and cfg.attention != ALL_ATTENTION:
        raise UniPeltError(f"{owner}.attention only applies to attention placements; this config has none")


def check_positive(owner: str, name: str, value: Any) -> None:
    """A positive integer that a tensor's size can take (torch's sizes are 64-bit)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise UniPeltError(f"{owner}.{name} must be a positive integer below 2**63, got {value!r}")


def check_number(owner: str, name: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    """A finite real number (not a bool, not a string) in [low, high)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        # a 400-digit JSON literal: math.isfinite would raise OverflowError (and repr may refuse it)
        raise UniPeltError(f"{owner}.{name} must be a finite number, got an integer beyond any float")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UniPeltError(f"{owner}.{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value >= high):
        raise UniPeltError(f"{owner}.{name} must be in [{low}, {high}), got {value}")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UniPeltError(f"{owner}.{name} must be true or false, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """The base of every method's config. A subclass sets ``method`` (its JSON name) and is
    registered under it, which is how ``PeltConfig.from_dict`` finds it."""

    method: ClassVar[str]
    unique: ClassVar[bool] = False  # at most one of this method in a PeltConfig
    exclusive: ClassVar[bool] = False  # combines with no other method
    REGISTRY: ClassVar[dict[str, type[MethodConfig]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("method")
        if name is not None:
            if name in MethodConfig.REGISTRY:
                raise UniPeltError(f"method {name!r} is already registered")
            MethodConfig.REGISTRY[name] = cls

    @property
    def gated(self) -> bool:
        """Uses UniPELT's pooled gate, which needs the padding mask (blocks.MaskSlot)."""
        return getattr(self, "composition", None) == "gated"

    @classmethod
    def check_together(cls, configs: list) -> None:
        """Reject configs of this method that would clash in one model (e.g. the same place)."""

    def to_dict(self, *, floats: bool = True) -> dict[str, Any]:
        """Every field, except one added later while it holds its ``since`` value (field
        metadata, as in harness/spec.py): configs written before it keep their JSON and run keys.
        A whole number in a float field (alpha: 2) is written as the float it is (2.0): one
        config, one JSON and one run key; ``floats=False`` writes it as given (older run keys)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "since" in f.metadata and value == f.metadata["since"]:
                continue
            whole = floats and f.type in (float, "float") and type(value) is int
            out[f.name] = float(value) if whole else value
        return out


@dataclass(frozen=True, kw_only=True)
class PeltConfig:
    """A union of methods applied together, e.g. UniPELT = adapter + prefix + LoRA, all gated.

    gate_pooling: how a gate's per-token values become one value per example. "masked_mean"
    averages over real tokens; "mean" also counts padding, as the official UniPELT code does
    (but not in a ``MultiTask`` batch, whose padding is other requests': there each row pools over
    its own positions, as it does alone).
    Both apply to bidirectional layers. In causal (decoder) layers every gate is per token
    (ours): a sequence mean would let a token's representation depend on later tokens, and cached
    generation, which sees one token at a time, could not reproduce it.
    modules_to_save: base-model modules trained beside the methods and the task head, as paths
    relative to the base model (peft's name), e.g. ("pooler",) to train BERT's pooler. The task
    head outside the base model (``classifier``, ``score``) is always trained; the pooler is not,
    as in UniPELT's code, ``adapters`` and peft.
    head: which summary of the sequence the task head reads (heads.py): "pooler" (BERT's pooler,
    then the classifier), "mean" (the masked mean of the last hidden states over real tokens),
    "last" (the last real token), "model" (the model class's own head, untouched) or "auto" (the
    default): the backbone's own pretrained summary, "mean" for a sentence-transformers model that
    declares mean pooling, else "model". ``apply`` records what "auto" became.
    """

    methods: tuple[MethodConfig, ...] = field(default_factory=tuple)
    gate_pooling: GatePooling = "masked_mean"
    modules_to_save: tuple[str, ...] = ()
    head: Head = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.methods, MethodConfig) or not isinstance(self.methods, (list, tuple)):
            raise UniPeltError(f"PeltConfig.methods must be a tuple of method configs, got {self.methods!r}")
        object.__setattr__(self, "methods", tuple(self.methods))
        check_choice("PeltConfig", "gate_pooling", self.gate_pooling, GatePooling)
        check_choice("PeltConfig", "head", self.head, Head)
        if (
            isinstance(self.modules_to_save, str)
            or not isinstance(self.modules_to_save, (list, tuple))
            or not all(isinstance(m, str) and m for m in self.modules_to_save)
        ):
            raise UniPeltError(
                f"PeltConfig.modules_to_save must be a tuple of module paths, got {self.modules_to_save!r}"
            )
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if not self.methods:
            raise UniPeltError("PeltConfig.methods is empty: name at least one method")
        for m in self.methods:
            if not isinstance(m, MethodConfig):
                raise UniPeltError(f"PeltConfig.methods holds {m!r}, which is not a method config")
        for kind in dict.fromkeys(type(m) for m in self.methods):
            if kind.exclusive and len(self.methods) > 1:
                raise UniPeltError(f"{kind.__name__} trains every weight: it cannot be combined with other methods")
            if kind.unique and len(self.of(kind)) > 1:
                raise UniPeltError(f"PeltConfig holds more than one {kind.__name__}")
            kind.check_together(self.of(kind))

    def of(self, kind: type) -> list:
        return [m for m in self.methods if isinstance(m, kind)]

    @property
    def gated(self) -> bool:
        return any(m.gated for m in self.methods)

    def to_dict(self, *, floats: bool = True) -> dict[str, Any]:
        methods = [{"method": m.method, **m.to_dict(floats=floats)} for m in self.methods]
        for m in methods:
            for key, value in m.items():
                if isinstance(value, tuple):  # JSON has lists
                    m[key] = list(value)
        out = {"methods": methods, "gate_pooling": self.gate_pooling}
        if self.modules_to_save:  # absent when empty, so configs without it keep their JSON
            out["modules_to_save"] = list(self.modules_to_save)
        if self.head != "auto":  # likewise: presets and older configs keep their JSON and run keys
            out["head"] = self.head
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeltConfig:
        if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
            raise UniPeltError("a PELT config needs a 'methods' list, e.g. {'methods': [{'method': 'lora', 'r': 8}]}")
        known_top = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - known_top:
            raise UniPeltError(f"PeltConfig has no field(s) {sorted(unknown)}; fields: {sorted(known_top)}")
        methods = [_method_from_dict(entry) for entry in data["methods"]]
        extra = {k: v for k, v in data.items() if k != "methods"}
        return cls(methods=tuple(methods), **extra)


def _method_from_dict(entry: Any) -> MethodConfig:
    if not isinstance(entry, dict):
        raise UniPeltError(f"a method entry must be a mapping like {{'method': 'lora'}}, got {entry!r}")
    entry = dict(entry)
    name = entry.pop("method", None)
    kind = MethodConfig.REGISTRY.get(name) if isinstance(name, str) else None
    if kind is None:
        raise UniPeltError(f"unknown method {name!r}; known: {sorted(MethodConfig.REGISTRY)}")
    known = {f.name for f in dataclasses.fields(kind)}
    if unknown := set(entry) - known:
        raise UniPeltError(f"{kind.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
    return kind(**entry)
