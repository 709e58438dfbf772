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
# He et al.'s composition functions, plus UniPELT's gate: add h + Δh; scaled h + s·Δh; gated
# h + G(z)·Δh with G a pooled sigmoid gate; interpolate (1 - λ(z))·h + λ(z)·Δh, He et al.'s
# "gated addition", with λ a per-token sigmoid.
Composition = Literal["add", "scaled", "gated", "interpolate"]
# Where a sequential adapter sits in a post-norm sublayer (s = x + h, the residual sum):
# pfeiffer LN(s + A(LN(s))), UniPELT's FFN adapter; houlsby LN(x + h + A(h)), Houlsby 2019 and
# He et al. Eq. 4. Pre-norm layers have no LayerNorm after the sum: both are h + A(h) there.
Placement = Literal["pfeiffer", "houlsby"]
PrefixComposition = Literal["interpolate", "add", "gated"]
PrefixNetworks = Literal["shared", "per_attention"]
Init = Literal["bert", "lora"]
GatePooling = Literal["masked_mean", "mean"]
AttentionKind = Literal["self", "cross"]  # encoder/decoder self-attention, decoder cross-attention
ALL_ATTENTION: tuple[AttentionKind, ...] = ("self", "cross")
ATTENTION_LORA_TARGETS = ("q", "k", "v", "o")


def _check_choice(owner: str, name: str, value: Any, allowed: Any) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise UniPeltError(f"{owner}.{name}={value!r} is not one of {list(choices)}")


def _check_choices(owner: str, name: str, values: Any, allowed: Any) -> tuple:
    """A non-empty tuple of distinct choices; lists (e.g. from JSON) become tuples."""
    if isinstance(values, str) or not values:
        raise UniPeltError(f"{owner}.{name} must be a non-empty tuple, got {values!r}")
    values = tuple(values)
    for v in values:
        _check_choice(owner, name, v, allowed)
    if len(set(values)) != len(values):
        raise UniPeltError(f"{owner}.{name} has duplicates: {values}")
    return values


def _check_attention(owner: str, cfg: Any, applies: bool) -> None:
    """``attention`` picks the attention sublayers (self, cross) a method goes to; models without
    cross-attention simply have none to pick."""
    object.__setattr__(cfg, "attention", _check_choices(owner, "attention", cfg.attention, AttentionKind))
    if not applies and cfg.attention != ALL_ATTENTION:
        raise UniPeltError(f"{owner}.attention only applies to attention placements; this config has none")


def _check_positive(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UniPeltError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """A bottleneck ``W_up f(W_down z)`` added to a sublayer (Houlsby 2019; He et al. 2022).

    sequential: z is the sublayer's output; ``placement`` says which (Pfeiffer or Houlsby).
    parallel: z is the sublayer's input x, the result is added to the sublayer output h.
    target "head": He et al.'s multi-head parallel adapter (§3.3): head i's bottleneck reads
    that head's slice of the frozen query projection x·W_q^(i) and adds to head i's output,
    before the attention's output projection.
    composition "interpolate" replaces h by (1 - λ)·h + λ·Δh, so it needs h itself: parallel
    adapters and Houlsby's placement have it, Pfeiffer's modifies the residual sum instead.
    attention: which attention sublayers an "attn"/"head" adapter goes to in encoder-decoders.
    """

    target: AdapterTarget = "ffn"
    insertion: Insertion = "sequential"
    placement: Placement = "pfeiffer"
    r: int = 48
    activation: Activation = "relu"
    composition: Composition = "add"
    scale: float = 1.0
    learn_scale: bool = False
    init: Init = "bert"
    dropout: float = 0.0
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        owner = "AdapterConfig"
        _check_choice(owner, "target", self.target, AdapterTarget)
        _check_choice(owner, "insertion", self.insertion, Insertion)
        _check_choice(owner, "placement", self.placement, Placement)
        _check_choice(owner, "activation", self.activation, Activation)
        _check_choice(owner, "composition", self.composition, Composition)
        _check_choice(owner, "init", self.init, Init)
        _check_positive(owner, "r", self.r)
        if self.target == "head" and self.insertion != "parallel":
            raise UniPeltError("AdapterConfig(target='head') modifies per-head attention outputs: "
                               "only insertion='parallel' is defined there")
        if self.insertion == "parallel" and self.placement != "pfeiffer":
            raise UniPeltError("AdapterConfig.placement only applies to insertion='sequential'")
        if self.composition == "interpolate" and self.insertion == "sequential" and self.placement == "pfeiffer":
            raise UniPeltError("AdapterConfig(composition='interpolate') needs the sublayer output h: use "
                               "insertion='parallel' or placement='houlsby' (Pfeiffer's adapter modifies x + h)")
        if self.composition != "scaled" and (self.scale != 1.0 or self.learn_scale):
            raise UniPeltError("AdapterConfig.scale/learn_scale only apply with composition='scaled'")
        if not 0.0 <= self.dropout < 1.0:
            raise UniPeltError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout}")
        _check_attention(owner, self, applies=self.target != "ffn")


@dataclass(frozen=True, kw_only=True)
class PrefixConfig:
    """``length`` trainable key/value vectors prepended at every attention (Li & Liang 2021).

    Trained through ``Embedding(l, d) -> Linear(d, mid) -> tanh -> Linear(mid, 2·S·d_kv)``;
    ``unipelt.fold`` replaces it by the 2·S matrices it produces.
    networks "shared": one network for all S prefixed attention sublayers (UniPELT's code);
    "per_attention": one per kind of attention, i.e. encoder self-, decoder self- and
    cross-attention in encoder-decoders (Li & Liang; He et al.'s scripts).
    composition, in He et al.'s terms (§3.1): "interpolate" is prefix tuning itself, one softmax
    over prefix and token keys, which equals (1 - λ(x))·h + λ(x)·Δh; "add" is their "-gating"
    ablation, h + Δh with Δh = softmax(x W_q P_k^T) P_v over the prefix alone; "gated" is
    prefix tuning with UniPELT's gate G_P(h_in) on the prefix keys and values (UniPELT §3).
    attention: the sublayers that get a prefix; He et al.'s MAM uses all of them.
    """

    length: int = 10
    mid_dim: int = 512
    reparameterize: bool = True
    networks: PrefixNetworks = "shared"
    composition: PrefixComposition = "interpolate"
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        _check_positive("PrefixConfig", "length", self.length)
        _check_positive("PrefixConfig", "mid_dim", self.mid_dim)
        _check_choice("PrefixConfig", "composition", self.composition, PrefixComposition)
        _check_choice("PrefixConfig", "networks", self.networks, PrefixNetworks)
        _check_attention("PrefixConfig", self, applies=True)


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """``W x + s · B A x`` on the named linear maps (Hu et al. 2021), B zero-initialised.

    composition "scaled": s = alpha / r (loralib and peft's convention).
    composition "gated": s = G_L(h_in), one gate per target; alpha has no effect (UniPELT's code).
    ffn_in/ffn_out: the FFN's input/output projections (BART fc1/fc2; Llama's gate+up/down).
    attention: which attention sublayers the q/k/v/o targets are taken from in encoder-decoders.
    """

    r: int = 8
    alpha: float = 2.0
    targets: tuple[LoRATarget, ...] = ("q", "v")
    composition: Literal["scaled", "gated"] = "scaled"
    dropout: float = 0.0
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        _check_positive("LoRAConfig", "r", self.r)
        _check_choice("LoRAConfig", "composition", self.composition, Literal["scaled", "gated"])
        object.__setattr__(self, "targets", _check_choices("LoRAConfig", "targets", self.targets, LoRATarget))
        if not 0.0 <= self.dropout < 1.0:
            raise UniPeltError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        _check_attention("LoRAConfig", self, applies=any(t in ATTENTION_LORA_TARGETS for t in self.targets))

    def places(self) -> list[tuple[str, str]]:
        """(target, attention kind) pairs; FFN targets have kind "ffn"."""
        return [(t, kind) for t in self.targets
                for kind in (self.attention if t in ATTENTION_LORA_TARGETS else ("ffn",))]


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
    Both apply to bidirectional layers. In causal (decoder) layers every gate is per token
    (ours): a sequence mean would let a token's representation depend on later tokens, and cached
    generation, which sees one token at a time, could not reproduce it.
    modules_to_save: base-model modules trained beside the methods and the task head, as paths
    relative to the base model (peft's name), e.g. ("pooler",) to train BERT's pooler. The task
    head outside the base model (``classifier``, ``score``) is always trained; the pooler is not,
    as in UniPELT's code, ``adapters`` and peft.
    """

    methods: tuple[MethodConfig, ...] = field(default_factory=tuple)
    gate_pooling: GatePooling = "masked_mean"
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        _check_choice("PeltConfig", "gate_pooling", self.gate_pooling, GatePooling)
        if isinstance(self.modules_to_save, str) or not all(
                isinstance(m, str) and m for m in self.modules_to_save):
            raise UniPeltError(f"PeltConfig.modules_to_save must be a tuple of module paths, got {self.modules_to_save!r}")
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
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
        places = [(m.target, m.insertion, site) for m in self.of(AdapterConfig)
                  for site in (m.attention if m.target != "ffn" else ("ffn",))]
        if len(set(places)) != len(places):
            raise UniPeltError(f"two adapters share a (target, insertion) placement: {places}")
        lora_places = [p for m in self.of(LoRAConfig) for p in m.places()]
        if len(set(lora_places)) != len(lora_places):
            raise UniPeltError(f"two LoRA configs target the same projection: {lora_places}")

    def of(self, kind: type) -> list:
        return [m for m in self.methods if isinstance(m, kind)]

    @property
    def gated(self) -> bool:
        return any(getattr(m, "composition", None) == "gated" for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        inverse = {v: k for k, v in METHOD_TYPES.items()}
        methods = [{"method": inverse[type(m)], **dataclasses.asdict(m)} for m in self.methods]
        for m in methods:
            for key, value in m.items():
                if isinstance(value, tuple):  # JSON has lists
                    m[key] = list(value)
        out = {"methods": methods, "gate_pooling": self.gate_pooling}
        if self.modules_to_save:  # absent when empty, so configs without it keep their JSON
            out["modules_to_save"] = list(self.modules_to_save)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeltConfig:
        if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
            raise UniPeltError("a PELT config needs a 'methods' list, e.g. {'methods': [{'method': 'lora', 'r': 8}]}")
        known_top = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - known_top:
            raise UniPeltError(f"PeltConfig has no field(s) {sorted(unknown)}; fields: {sorted(known_top)}")
        methods = []
        for entry in data["methods"]:
            if not isinstance(entry, dict):
                raise UniPeltError(f"a method entry must be a mapping like {{'method': 'lora'}}, got {entry!r}")
            entry = dict(entry)
            name = entry.pop("method", None)
            if name not in METHOD_TYPES:
                raise UniPeltError(f"unknown method {name!r}; known: {sorted(METHOD_TYPES)}")
            kind = METHOD_TYPES[name]
            known = {f.name for f in dataclasses.fields(kind)}
            if unknown := set(entry) - known:
                raise UniPeltError(f"{kind.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
            methods.append(kind(**entry))
        extra = {k: v for k, v in data.items() if k != "methods"}
        return cls(methods=tuple(methods), **extra)
