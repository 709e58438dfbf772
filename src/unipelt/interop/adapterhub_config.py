"""AdapterHub ``adapters`` (1.x) configs as unipelt configs, exactly or not at all.

Facts read from adapters 1.3.0's source (methods/modeling.py, bottleneck.py, lora.py,
prefix_tuning.py, prompt_tuning.py, heads/base.py), with h the sublayer output, x its input and
s = x + h:
- sequential bottleneck with ``original_ln_before`` and ``residual_before_ln=True`` (SeqBnConfig,
  Pfeiffer): LN(s + A(LN(s))), unipelt's ``placement="pfeiffer"``; without ``original_ln_before``
  (DoubleSeqBnConfig, Houlsby): LN(x + h + A(h)), ``placement="houlsby"``.
- parallel (ParBnConfig): LN(x + h + scaling·A(x)), ``insertion="parallel"``; a float scaling is
  ``composition="scaled"``, "learned" a learned scalar.
- a gate is sigmoid(Linear(d, 1)) of the adapter's (LoRA's, the attention's) input, averaged
  over every position, padding included: unipelt's ``gate_pooling="mean"``.
- LoRA: x Aᵀ Bᵀ · alpha/r, or · gate instead when gated; dropout on x before A, as unipelt's.
- prefix: Embedding(l, d) -> Linear(d, b) -> tanh -> Linear(b, 2·L·d), its outputs laid out
  (layer, key/value, head, dim) as unipelt's; ``flat`` trains the l × 2·L·d table directly.
- prompt: inserted after the embedding module; "prefix_after_bos" keeps the first token in
  front, as unipelt does in BERT's family.
Anything else (invertible adapters, PHM layers, new layer norms, per-layer sizes, left-out
layers, output dropout, (IA)³, VeRA, DoRA, ...) is refused with the option that prevents it.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from ..errors import UniPeltError
from ..methods.adapter import AdapterConfig
from ..methods.lora import LoRAConfig
from ..methods.prefix import PrefixConfig
from ..methods.prompt import PromptConfig

# transformers' ACT2FN names that adapters resolves, and unipelt's equivalents
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "tanh": "tanh", "linear": "identity"}
_INITS = {"bert": "bert", "mam_adapter": "lora", "houlsby": "bert"}  # irrelevant once weights are loaded


def _refuse(what: str, why: str):
    raise UniPeltError(f"adapters config {what}: {why}")


def _neutral(cfg: dict, what: str, checks: dict[str, tuple[object, str]]) -> None:
    """Options that must keep a value unipelt implements: {key: (that value, why)}."""
    for key, (value, why) in checks.items():
        if cfg.get(key, value) != value:
            _refuse(what, f"{key}={cfg[key]!r}: {why}")


def _int(cfg: dict, key: str, default: int, what: str) -> int:
    value = cfg.get(key, default)
    if type(value) is not int:  # a bool is not a size
        _refuse(what, f"field {key!r} must be an integer, got {reprlib.repr(value)}")
    return value


def _float(cfg: dict, key: str, default: float, what: str) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _refuse(what, f"field {key!r} must be a number, got {reprlib.repr(value)}")
    return float(value)


def _names(cfg: dict, key: str, what: str, default: tuple[str, ...] = ()) -> list[str]:
    value = cfg.get(key, list(default))
    if not isinstance(value, (list, str)) or not all(isinstance(v, str) for v in value):
        _refuse(what, f"field {key!r} must be a list of names, got {reprlib.repr(value)}")
    return list(value)


def _known(cfg: dict, what: str, keys: set[str]) -> None:
    if unknown := set(cfg) - keys - {"architecture"}:
        _refuse(what, f"unknown option(s) {sorted(unknown)} (a newer adapters release?): not imported")


_BN_IGNORED = {
    "init_weights",
    "init_weights_seed",
    "inv_adapter_reduction_factor",
    "phm_dim",
    "factorized_phm_W",
    "shared_W_phm",
    "shared_phm_rule",
    "factorized_phm_rule",
    "phm_c_init",
    "phm_init_range",
    "learn_phm",
    "hypercomplex_nonlinearity",
    "phm_rank",
    "phm_bias",
    "adapter_residual_before_ln",
    "cross_adapter",
}
_BN_KEYS = _BN_IGNORED | {
    "mh_adapter",
    "output_adapter",
    "reduction_factor",
    "non_linearity",
    "original_ln_before",
    "original_ln_after",
    "ln_before",
    "ln_after",
    "is_parallel",
    "scaling",
    "use_gating",
    "residual_before_ln",
    "inv_adapter",
    "leave_out",
    "dropout",
    "phm_layer",
    "stochastic_depth",
}


def _placement(cfg: dict, what: str) -> dict:
    """insertion/placement from adapters' residual and LayerNorm flags."""
    if not cfg.get("original_ln_after", True):
        _refuse(what, "original_ln_after=False leaves out the sublayer's own LayerNorm and residual")
    if cfg.get("is_parallel", False):
        return {"insertion": "parallel"}
    residual = cfg.get("residual_before_ln", True)
    if cfg.get("original_ln_before", False):
        if residual is not True:
            _refuse(
                what,
                f"residual_before_ln={residual!r} with original_ln_before: the adapter's residual is "
                "LN(x + h) or x + h, not h; unipelt's Pfeiffer placement is LN(s + A(LN(s)))",
            )
        return {"insertion": "sequential", "placement": "pfeiffer"}
    if residual not in (True, False):  # "post_add" needs original_ln_before; adapters itself fails without
        _refuse(what, f"residual_before_ln={residual!r} without original_ln_before")
    return {"insertion": "sequential", "placement": "houlsby"}


def _composition(cfg: dict, what: str) -> dict:
    scaling, gated = cfg.get("scaling", 1.0), cfg.get("use_gating", False)
    if scaling == "channel":
        _refuse(what, "scaling='channel' learns one scale per hidden unit; unipelt's scale is one scalar")
    if gated:
        if scaling != 1.0:
            _refuse(what, f"use_gating with scaling={scaling!r}: unipelt's gate has no extra scale")
        return {"composition": "gated"}
    if scaling == "learned":
        return {"composition": "scaled", "scale": 1.0, "learn_scale": True}
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        _refuse(what, f"scaling={scaling!r} is not a number, 'learned' or 'channel'")
    return {"composition": "add"} if scaling == 1.0 else {"composition": "scaled", "scale": float(scaling)}


def _bottleneck_r(cfg: dict, d: int, what: str) -> int:
    factor = cfg.get("reduction_factor")
    if isinstance(factor, dict):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in factor.values()):
            _refuse(what, f"field 'reduction_factor' must map layers to numbers, got {reprlib.repr(factor)}")
        values = set(factor.values())
        if len(values) != 1:
            _refuse(what, f"reduction_factor={factor}: one bottleneck size per layer; unipelt has one for all")
        factor = values.pop()
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        _refuse(what, f"reduction_factor={factor!r} is not a positive number")
    return max(1, int(d // factor))  # adapters' own arithmetic: int(hidden // factor), at least 1


def bottleneck(cfg: dict, d: int) -> list[AdapterConfig]:
    what = "bottleneck (SeqBn/DoubleSeqBn/ParBn)"
    _known(cfg, what, _BN_KEYS)
    _neutral(
        cfg,
        what,
        {
            "ln_before": (False, "a new LayerNorm before the bottleneck"),
            "ln_after": (False, "a new LayerNorm after the bottleneck"),
            "inv_adapter": (None, "invertible adapters on the embeddings"),
            "phm_layer": (False, "PHM (Compacter) projections"),
            "leave_out": ([], "layers without an adapter; unipelt places one in every layer"),
            "dropout": (0.0, "adapters drops the adapter's output, unipelt its input"),
            "stochastic_depth": (0.0, "stochastic depth (DropPath) on the adapter"),
        },
    )
    activation = str(cfg.get("non_linearity", "relu")).lower()
    if activation not in _ACTIVATIONS:
        _refuse(what, f"non_linearity={cfg.get('non_linearity')!r}: unipelt implements {sorted(_ACTIVATIONS)}")
    init = _INITS.get(cfg.get("init_weights", "bert")) if isinstance(cfg.get("init_weights", "bert"), str) else None
    if init is None:
        _refuse(what, f"init_weights={cfg.get('init_weights')!r} is not one of {sorted(_INITS)}")
    common = dict(
        r=_bottleneck_r(cfg, d, what),
        activation=_ACTIVATIONS[activation],
        init=init,
        **_placement(cfg, what),
        **_composition(cfg, what),
    )
    targets = [t for t, key in (("attn", "mh_adapter"), ("ffn", "output_adapter")) if cfg.get(key)]
    if not targets:
        _refuse(what, "neither mh_adapter nor output_adapter is set: no adapter to import")
    return [AdapterConfig(target=t, **common) for t in targets]


def prefix(cfg: dict) -> PrefixConfig:
    what = "prefix tuning"
    _known(
        cfg,
        what,
        {
            "encoder_prefix",
            "cross_prefix",
            "leave_out",
            "flat",
            "prefix_length",
            "bottleneck_size",
            "non_linearity",
            "dropout",
            "use_gating",
            "shared_gating",
            "init_weights_seed",
        },
    )
    _neutral(
        cfg,
        what,
        {
            "leave_out": ([], "layers without a prefix; unipelt prefixes every layer"),
            "dropout": (0.0, "dropout on the prefix keys and values"),
        },
    )
    flat = bool(cfg.get("flat", False))
    if not flat and str(cfg.get("non_linearity", "tanh")).lower() != "tanh":
        _refuse(what, f"non_linearity={cfg['non_linearity']!r}: unipelt's reparameterisation uses tanh")
    gated = bool(cfg.get("use_gating", False))
    if gated and not cfg.get("shared_gating", True):
        _refuse(what, "shared_gating=False gates keys and values separately; unipelt's G_P scales both")
    return PrefixConfig(
        length=_int(cfg, "prefix_length", 30, what),
        mid_dim=_int(cfg, "bottleneck_size", 512, what),
        reparameterize=not flat,
        composition="gated" if gated else "interpolate",
    )


def lora(cfg: dict) -> LoRAConfig:
    what = "LoRA"
    _known(
        cfg,
        what,
        {
            "selfattn_lora",
            "intermediate_lora",
            "output_lora",
            "leave_out",
            "r",
            "alpha",
            "dropout",
            "attn_matrices",
            "composition_mode",
            "init_weights",
            "init_weights_seed",
            "use_gating",
            "use_dora",
            "vera_d",
            "vera_b",
            "dtype",
        },
    )
    _neutral(
        cfg,
        what,
        {
            "composition_mode": ("add", "(IA)³'s elementwise scaling, not a low-rank update"),
            "leave_out": ([], "layers without LoRA; unipelt adapts every layer"),
            "use_dora": (False, "DoRA's magnitude/direction decomposition"),
            "vera_d": (None, "VeRA's shared random matrices"),
            "vera_b": (None, "VeRA's shared random matrices"),
            "dtype": (None, "a separate dtype for the LoRA weights"),
        },
    )
    if cfg.get("init_weights", "lora") not in ("lora", "bert"):
        _refuse(what, f"init_weights={cfg['init_weights']!r} belongs to another method")
    matrices = _names(cfg, "attn_matrices", what, default=("q", "v"))  # adapters' LoRAConfig default
    targets = [m for m in ("q", "k", "v") if cfg.get("selfattn_lora", True) and m in matrices]
    targets += [t for t, key in (("ffn_in", "intermediate_lora"), ("ffn_out", "output_lora")) if cfg.get(key)]
    if unknown := set(matrices) - {"q", "k", "v"}:
        _refuse(what, f"attn_matrices {sorted(unknown)} are not q, k or v")
    if not targets:
        _refuse(what, "no matrix is adapted")
    gated = bool(cfg.get("use_gating", False))
    return LoRAConfig(
        r=_int(cfg, "r", 8, what),
        alpha=_float(cfg, "alpha", 8, what),
        targets=tuple(targets),
        dropout=_float(cfg, "dropout", 0.0, what),
        composition="gated" if gated else "scaled",
    )


def prompt(cfg: dict, prompt_at: int) -> PromptConfig:
    what = "prompt tuning"
    _known(
        cfg,
        what,
        {"prompt_length", "prompt_init", "prompt_init_text", "random_uniform_scale", "combine", "init_weights_seed"},
    )
    combine = cfg.get("combine", "prefix")
    ours = {0: "prefix", 1: "prefix_after_bos"}.get(prompt_at)
    if combine != ours:
        _refuse(
            what,
            f"combine={combine!r} puts the prompt {'in front' if combine == 'prefix' else 'after the first token'}"
            f"; on this architecture unipelt inserts it {'in front' if prompt_at == 0 else 'after the first token'} "
            f"(adapters' {ours!r})",
        )
    return PromptConfig(length=_int(cfg, "prompt_length", 10, what))


@dataclass(frozen=True)
class Head:
    """How a saved classification head maps onto the HF model: {adapters module index: our module path}."""

    modules: dict[int, str]
    modules_to_save: tuple[str, ...] = ()


def head(cfg: dict, layout: str, num_labels: int) -> Head:
    """``layout``: "pooler" (BERT: pooler.dense + tanh, then classifier) or "dense" (RoBERTa's
    classifier.dense + tanh + classifier.out_proj)."""
    what = "prediction head"
    if not isinstance(cfg, dict):
        _refuse(what, f"field 'config' of head_config.json must be a JSON object, got {reprlib.repr(cfg)}")
    if cfg.get("head_type") != "classification":
        _refuse(
            what,
            f"head_type={cfg.get('head_type')!r}: only classification heads map onto a sequence-classification model",
        )
    if cfg.get("num_labels") != num_labels:
        _refuse(what, f"num_labels={cfg.get('num_labels')} but the model has {num_labels}")
    if not cfg.get("bias", True):
        _refuse(what, "bias=False: the HF classifier has a bias")
    layers, pooler = cfg.get("layers"), bool(cfg.get("use_pooler", False))
    tanh = str(cfg.get("activation_function")).lower() == "tanh"
    if layout == "pooler" and pooler and layers == 1:
        return Head({1: "classifier"})
    if layout == "pooler" and not pooler and layers == 2 and tanh:
        # dense + tanh on the first token is what BERT's pooler computes: it is trained as part of the head
        return Head({1: "{base}.pooler.dense", 4: "classifier"}, modules_to_save=("pooler",))
    if layout == "dense" and not pooler and layers == 2 and tanh:
        return Head({1: "classifier.dense", 4: "classifier.out_proj"})
    _refuse(
        what,
        f"layers={layers}, use_pooler={pooler}, activation_function={cfg.get('activation_function')!r} "
        f"has no equivalent in this model's own head ({layout} layout)",
    )
