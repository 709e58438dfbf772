"""Typed configs: every PELT method is a point in He et al.'s design space (ICLR 2022, Table 1).

Dimensions are fields, not prose: functional form (bottleneck ``r`` + ``activation``), insertion
form, modified representation (``target``) and composition function. Invalid combinations are
rejected at construction, so a config that exists is a config that can be applied. Configs are
frozen: ``dataclasses.replace`` makes variants (UniPELT = the same three configs with
``composition="gated"``), and injection never mutates them, so what is logged is what ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args

from .errors import UniPeltError

Activation = Literal["relu", "gelu", "tanh", "identity"]
Insertion = Literal["sequential", "parallel"]
AdapterTarget = Literal["attn", "head", "ffn"]
LoRATarget = Literal["q", "k", "v", "o", "ffn_in", "ffn_out"]
Composition = Literal["add", "scaled", "gated"]
Init = Literal["bert", "lora"]
GatePooling = Literal["masked_mean", "mean"]


def _check_choice(owner: str, name: str, value: Any, allowed: Any) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise UniPeltError(f"{owner}.{name}={value!r} is not one of {list(choices)}")


def _check_positive(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UniPeltError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """A bottleneck ``W_up f(W_down z)`` added to a sublayer (Houlsby 2019; He et al. 2022).

    sequential: z is the sublayer's output (after its residual sum), Pfeiffer/Houlsby placement.
    parallel: z is the sublayer's input, the result is added to the sublayer output.
    target "head": a parallel adapter per attention head, on each head's d/Nh slice.
    """

    target: AdapterTarget = "ffn"
    insertion: Insertion = "sequential"
    r: int = 48
    activation: Activation = "relu"
    composition: Composition = "add"
    scale: float = 1.0
    learn_scale: bool = False
    init: Init = "bert"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        owner = "AdapterConfig"
        _check_choice(owner, "target", self.target, AdapterTarget)
        _check_choice(owner, "insertion", self.insertion, Insertion)
        _check_choice(owner, "activation", self.activation, Activation)
        _check_choice(owner, "composition", self.composition, Composition)
        _check_choice(owner, "init", self.init, Init)
        _check_positive(owner, "r", self.r)
        if self.target == "head" and self.insertion != "parallel":
            raise UniPeltError("AdapterConfig(target='head') modifies per-head attention outputs: "
                               "only insertion='parallel' is defined there")
        if self.composition != "scaled" and (self.scale != 1.0 or self.learn_scale):
            raise UniPeltError("AdapterConfig.scale/learn_scale only apply with composition='scaled'")
        if not 0.0 <= self.dropout < 1.0:
            raise UniPeltError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class PrefixConfig:
    """``length`` trainable key/value vectors prepended at every self-attention (Li & Liang 2021).

    Trained through ``Embedding(l, d) -> Linear(d, mid) -> tanh -> Linear(mid, 2·L·d)``, shared by
    all layers; ``unipelt.fold`` replaces that network by the 2·L matrices it produces.
    composition "gated": a per-layer gate scales the prefix keys and values (UniPELT §3).
    """

    length: int = 10
    mid_dim: int = 512
    reparameterize: bool = True
    composition: Literal["add", "gated"] = "add"

    def __post_init__(self) -> None:
        _check_positive("PrefixConfig", "length", self.length)
        _check_positive("PrefixConfig", "mid_dim", self.mid_dim)
        _check_choice("PrefixConfig", "composition", self.composition, Literal["add", "gated"])


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """``W x + s · B A x`` on the named linear maps (Hu et al. 2021), B zero-initialised.

    composition "scaled": s = alpha / r (loralib and peft's convention).
    composition "gated": s = G_L(h_in), one gate per target; alpha has no effect (UniPELT's code).
    """

    r: int = 8
    alpha: float = 2.0
    targets: tuple[LoRATarget, ...] = ("q", "v")
    composition: Literal["scaled", "gated"] = "scaled"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("LoRAConfig", "r", self.r)
        _check_choice("LoRAConfig", "composition", self.composition, Literal["scaled", "gated"])
        if isinstance(self.targets, str) or not self.targets:
            raise UniPeltError(f"LoRAConfig.targets must be a non-empty tuple, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        for t in self.targets:
            _check_choice("LoRAConfig", "targets", t, LoRATarget)
        if len(set(self.targets)) != len(self.targets):
            raise UniPeltError(f"LoRAConfig.targets has duplicates: {self.targets}")
        if not 0.0 <= self.dropout < 1.0:
            raise UniPeltError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class PromptConfig:
    """``length`` trainable embeddings inserted into the input only (Lester et al. 2021)."""

    length: int = 10

    def __post_init__(self) -> None:
        _check_positive("PromptConfig", "length", self.length)


@dataclass(frozen=True, kw_only=True)
class BitFitConfig:
    """Train only the bias vectors of the pretrained model (Ben Zaken et al. 2022)."""


@dataclass(frozen=True, kw_only=True)
class FullFineTuning:
    """Train every weight: the baseline every PELT method is measured against."""


MethodConfig = Union[AdapterConfig, PrefixConfig, LoRAConfig, PromptConfig, BitFitConfig, FullFineTuning]
METHOD_TYPES: dict[str, type] = {
    "adapter": AdapterConfig, "prefix": PrefixConfig, "lora": LoRAConfig,
    "prompt": PromptConfig, "bitfit": BitFitConfig, "full": FullFineTuning,
}


@dataclass(frozen=True, kw_only=True)
class PeltConfig:
    """A union of methods applied together, e.g. UniPELT = adapter + prefix + LoRA, all gated.

    gate_pooling: how a gate's per-token values become one value per example. "masked_mean"
    averages over real tokens; "mean" also counts padding, as the official UniPELT code does.
    """

    methods: tuple[MethodConfig, ...] = field(default_factory=tuple)
    gate_pooling: GatePooling = "masked_mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        _check_choice("PeltConfig", "gate_pooling", self.gate_pooling, GatePooling)
        if not self.methods:
            raise UniPeltError("PeltConfig.methods is empty: name at least one method")
        for m in self.methods:
            if not isinstance(m, tuple(METHOD_TYPES.values())):
                raise UniPeltError(f"PeltConfig.methods holds {m!r}, which is not a method config")
        if any(isinstance(m, FullFineTuning) for m in self.methods) and len(self.methods) > 1:
            raise UniPeltError("FullFineTuning trains every weight: it cannot be combined with other methods")
        for kind in (PrefixConfig, PromptConfig, BitFitConfig):
            if sum(isinstance(m, kind) for m in self.methods) > 1:
                raise UniPeltError(f"PeltConfig holds more than one {kind.__name__}")
        places = [(m.target, m.insertion) for m in self.of(AdapterConfig)]
        if len(set(places)) != len(places):
            raise UniPeltError(f"two adapters share a (target, insertion) placement: {places}")
        lora_targets = [t for m in self.of(LoRAConfig) for t in m.targets]
        if len(set(lora_targets)) != len(lora_targets):
            raise UniPeltError(f"two LoRA configs target the same projection: {lora_targets}")

    def of(self, kind: type) -> list:
        return [m for m in self.methods if isinstance(m, kind)]

    @property
    def gated(self) -> bool:
        return any(getattr(m, "composition", None) == "gated" for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        inverse = {v: k for k, v in METHOD_TYPES.items()}
        methods = [{"method": inverse[type(m)], **dataclasses.asdict(m)} for m in self.methods]
        for m in methods:
            if "targets" in m:
                m["targets"] = list(m["targets"])
        return {"methods": methods, "gate_pooling": self.gate_pooling}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeltConfig:
        if not isinstance(data, dict) or "methods" not in data:
            raise UniPeltError("a PELT config needs a 'methods' list, e.g. {'methods': [{'method': 'lora', 'r': 8}]}")
        methods = []
        for entry in data["methods"]:
            entry = dict(entry)
            name = entry.pop("method", None)
            if name not in METHOD_TYPES:
                raise UniPeltError(f"unknown method {name!r}; known: {sorted(METHOD_TYPES)}")
            kind = METHOD_TYPES[name]
            known = {f.name for f in dataclasses.fields(kind)}
            if unknown := set(entry) - known:
                raise UniPeltError(f"{kind.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
            if "targets" in entry:
                entry["targets"] = tuple(entry["targets"])
            methods.append(kind(**entry))
        extra = {k: v for k, v in data.items() if k != "methods"}
        return cls(methods=tuple(methods), **extra)
