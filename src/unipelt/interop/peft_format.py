"""HF peft checkpoints in both directions: ``from_peft`` (LoRA, prompt tuning) and ``to_peft``.

A peft checkpoint is ``adapter_config.json`` + ``adapter_model.safetensors``; tensor names are the
model's module paths under ``base_model.model.``: ``<module>.lora_A.weight`` (r, in) and
``.lora_B.weight`` (out, r), the task head's own names, and ``prompt_embeddings`` (l, d) for
prompt tuning. tests/test_interop_peft.py checks each direction against peft itself.

What maps exactly (peft 0.21 on transformers 5):
- LoRA: ``W x + lora_alpha/r · B A x`` with dropout on x, unipelt's ungated LoRA; with
  ``use_dora``, unipelt's DoRA (``lora_magnitude_vector`` is its ``pelt_magnitude.weight``).
  ``target_modules`` must select exactly the maps of some unipelt targets, in every layer.
- prompt tuning on a decoder-only causal LM: peft prepends the l embeddings to the input; under a
  causal mask with rotary positions that is what unipelt's prompt computes for the real tokens
  (peft's logits carry l extra leading positions), where no sliding window lets peft's prompt
  slide out of a token's view.
What is refused, and why:
- prompt tuning elsewhere: GPT-2's learned positions move by l under peft's prompt; a sliding
  window hides peft's prompt from later tokens; BERT's family and seq2seq models get peft's prompt in front of the
  word embeddings, before position embeddings and LayerNorm (BERT) or on both stacks (seq2seq);
  a decoder-only sequence classifier under peft reads the last position of padded rows.
- prefix tuning: peft serves it as a key/value cache. BERT's family takes none under
  transformers 5; in rotary decoders the cache shifts the tokens' positions by l, so queries
  meet the unrotated prefix keys at other angles than in unipelt (which keeps positions at 0);
  in encoder-decoders only the decoder is prefixed.
- gates, adapters, BitFit and any combination of methods: peft has no such config.
"""

from __future__ import annotations

import json
import re
import reprlib
from pathlib import Path
from typing import get_args

import torch
from safetensors.torch import save_file
from torch import nn

from ..arch import path_of, spec_for
from ..attention import is_conv1d, is_linear
from ..checkpoint import replace_together
from ..config import ALL_ATTENTION, PeltConfig
from ..errors import UniPeltError
from ..inject import MARK, head_parameter_names
from ..methods.dora import DoRAConfig, DoRALinear
from ..methods.lora import LoRAConfig, LoRALinear, LoRATarget
from ..methods.prompt import PromptConfig
from ..wrappers import has
from ._safe import install, read_json, read_tensors, require_fresh

CONFIG, WEIGHTS, ROOT = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
# peft LoRA options that change what a layer computes: a checkpoint that sets one is refused, where
# importing it as plain LoRA would silently give other outputs (lora_bias's B bias, aLoRA's tokens)
LORA_TARGETS = get_args(LoRATarget)
_UNSUPPORTED = (
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "lora_bias",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
)


def _selects(target_modules: str | list[str], name: str) -> bool:
    """peft's rule: a string is a regular expression the whole name matches; a list holds names
    a module's path is, or ends in after a dot."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in target_modules)


def _target_paths(model: nn.Module) -> dict[tuple[str, str], tuple[set[str], bool]]:
    """(LoRA target, attention kind or "ffn") -> the full paths of the linear maps it adapts in
    ``model``, and whether any of them is a part of a fused map."""
    names = {id(m): n for n, m in model.named_modules()}
    base = names[id(model.base_model)]
    found: dict[tuple[str, str], tuple[set[str], bool]] = {}
    for stack in spec_for(model).present_stacks(model.base_model):
        for i, layer in enumerate(model.base_model.get_submodule(stack.layers)):
            for key, projections in stack.lora_paths().items():
                present = [p for p in projections if has(layer, path_of(p))]
                paths, fused = found.get(key, (set(), False))
                paths |= {".".join(filter(None, (base, stack.layers, str(i), path_of(p)))) for p in present}
                found[key] = paths, fused or any(not isinstance(p, str) for p in present)
    return found


def _lora_places(cfg: dict, model: nn.Module, targets: dict) -> list[tuple[str, str]]:
    """The (target, kind) pairs whose linear maps (``targets``: ``_target_paths``) are exactly the
    ones peft's target_modules select."""
    modules = cfg["target_modules"]
    if modules == "all-linear":
        raise UniPeltError("peft's target_modules 'all-linear' is not read: list the modules the checkpoint adapts")
    linears = {n: m for n, m in model.named_modules() if is_linear(m)}
    selected = {n for n in linears if _selects(modules, n)}
    if not selected:
        raise UniPeltError(
            f"peft target_modules {reprlib.repr(modules)} select no linear map of {type(model).__name__}"
        )
    # peft's flag for weights stored (in, out), GPT-2's Conv1D: the same A and B, another merge
    if {is_conv1d(linears[n]) for n in selected} != {bool(cfg.get("fan_in_fan_out", False))}:
        raise UniPeltError(
            f"the peft checkpoint's fan_in_fan_out={cfg.get('fan_in_fan_out', False)} does not match how "
            f"{type(model).__name__} stores the weights it adapts"
        )
    places, covered = [], set()
    for key, (paths, fused) in targets.items():
        if not paths & selected:
            continue
        if not paths <= selected:
            raise UniPeltError(
                f"peft adapts {sorted(paths & selected)[:2]}... but not {sorted(paths - selected)[:2]}...: "
                f"unipelt's LoRA target {key[0]!r} adapts that map in every layer"
            )
        if fused:
            raise UniPeltError(
                f"peft LoRA on {type(model).__name__} cannot be imported: peft adapts a fused map with one A and B, "
                f"where unipelt's LoRA target {key[0]!r} owns its rows of it"
            )
        places.append(key)
        covered |= paths
    if unknown := sorted(selected - covered):
        raise UniPeltError(f"peft target_modules select {unknown[:4]}, which have no unipelt equivalent")
    return places


def _lora_configs(cfg: dict, model: nn.Module) -> tuple[LoRAConfig | DoRAConfig, ...]:
    """One config per set of attention kinds its targets adapt (BART: q in self-attention only)."""
    for key in _UNSUPPORTED:
        value = cfg.get(key)  # layers_to_transform=0 is set: layer 0 only
        if value is not None and value is not False and not (isinstance(value, (str, list, dict)) and not value):
            raise UniPeltError(f"the peft checkpoint uses {key}, which unipelt does not implement")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("bias", "none") != "none":
        raise UniPeltError("peft checkpoints with rank/alpha patterns or trained biases are not supported")
    targets = _target_paths(model)
    places = _lora_places(cfg, model, targets)
    kinds = tuple(k for k in ALL_ATTENTION if any(where == k for _, where in targets))
    by_kinds: dict[tuple[str, ...], list[str]] = {}
    for target in LORA_TARGETS:
        where = tuple(k for k in (*ALL_ATTENTION, "ffn") if (target, k) in places)
        if where:  # every kind the model has, or the FFN: the default, ALL_ATTENTION
            by_kinds.setdefault(ALL_ATTENTION if where in (kinds, ("ffn",)) else where, []).append(target)
    kind = DoRAConfig if cfg.get("use_dora") else LoRAConfig
    common = dict(
        r=cfg["r"],
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        use_rslora=bool(cfg.get("use_rslora", False)),
    )
    return tuple(kind(targets=tuple(t), attention=a, **common) for a, t in by_kinds.items())


def _is_causal_lm(model: nn.Module) -> bool:
    """A decoder-only language model: Llama's ``...ForCausalLM`` as much as ``GPT2LMHeadModel``."""
    config = model.config
    lm = getattr(model, "get_output_embeddings", lambda: None)() is not None
    return lm and not getattr(config, "is_encoder_decoder", False) and spec_for(model).embeddings is None


def _slides(config) -> bool:
    """Whether a layer attends through a sliding window: one is set, and ``layer_types``, where
    the config lists them (Gemma-2, Qwen2), name a sliding layer; Mistral and Phi-3 list none."""
    types = getattr(config, "layer_types", None)
    return bool(getattr(config, "sliding_window", None)) and (types is None or "sliding_attention" in types)


def _prompt_refusal(model: nn.Module) -> str | None:
    """Why peft's prompt tuning and unipelt's differ on ``model``, or None where they agree."""
    if spec_for(model).embeddings is not None:
        return (
            "peft inserts the prompt in front of the word embeddings, before position embeddings and "
            "LayerNorm (BERT's family) or into both stacks (seq2seq); unipelt's follows the embedding module"
        )
    if not _is_causal_lm(model):
        return (
            "peft's prompt-tuned sequence classifier passes inputs_embeds only, so the classifier reads the "
            "last position even in right-padded rows; only causal LMs compute the same function"
        )
    if spec_for(model).absolute_positions:
        return (
            "its positions are learned: peft's prompt in front moves the input's positions by l, "
            "where unipelt's keeps the plain model's"
        )
    if _slides(model.config):
        return (
            f"it attends through a sliding window of {model.config.sliding_window}: peft's prompt tokens slide "
            "out of it, where unipelt's, as a prefix's keys, stay visible to every token"
        )
    return None


def _prompt_config(cfg: dict, model: nn.Module) -> PromptConfig:
    if why := _prompt_refusal(model):
        raise UniPeltError(f"peft prompt tuning on {type(model).__name__}: {why}")
    if cfg.get("num_transformer_submodules", 1) != 1 or cfg.get("token_dim") != model.config.hidden_size:
        raise UniPeltError("the peft prompt does not fit this model (token_dim or transformer submodules differ)")
    return PromptConfig(length=int(cfg["num_virtual_tokens"]))


# the type of every field read here (null: absent), and the fields each method needs
_TYPES = {
    "peft_type": str,
    "r": int,
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "target_modules": (str, list),
    "bias": str,
    "use_dora": bool,
    "use_rslora": bool,
    "fan_in_fan_out": bool,
    "rank_pattern": dict,
    "alpha_pattern": dict,
    "num_virtual_tokens": int,
    "token_dim": int,
    "num_transformer_submodules": int,
}
_REQUIRED = {"LORA": ("r", "lora_alpha", "target_modules"), "PROMPT_TUNING": ("num_virtual_tokens",)}


def _check_fields(cfg: dict, path: Path) -> None:
    """Every field read here has its type (a bool is not a number), before any is used."""
    for key, kinds in _TYPES.items():
        value, kinds = cfg.get(key), kinds if isinstance(kinds, tuple) else (kinds,)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            names = " or ".join(k.__name__ for k in kinds)
            raise UniPeltError(f"{path}: field {key!r} must be {names}, got {reprlib.repr(value)}")
    modules = cfg.get("target_modules")
    if isinstance(modules, list) and not all(isinstance(m, str) for m in modules):
        raise UniPeltError(f"{path}: field 'target_modules' must list module names, got {reprlib.repr(modules)}")
    if isinstance(modules, str):
        try:
            re.compile(modules)
        except re.error as e:
            raise UniPeltError(f"{path}: field 'target_modules' is not a valid regular expression: {e}") from None
    if "lora_dropout" in cfg and cfg["lora_dropout"] is None:  # peft's own LoraLayer fails on null too
        raise UniPeltError(f"{path}: field 'lora_dropout' must be a number (0.0: no dropout), got null")
    for key in _REQUIRED.get(cfg.get("peft_type"), ()):
        if cfg.get(key) is None:
            raise UniPeltError(f"{path}: field {key!r} is missing")


_REFUSED = {
    "PREFIX_TUNING": "peft serves the prefix as a key/value cache: BERT's family takes none under transformers 5, "
    "rotary decoders then start the tokens' positions at l (unipelt keeps 0), and encoder-decoders "
    "get a prefix in the decoder only",
}


def _assign(tensors: dict[str, torch.Tensor], source: Path):
    def assign(model: nn.Module) -> dict:
        modules, params, out = dict(model.named_modules()), dict(model.named_parameters()), {}
        for key, tensor in tensors.items():
            name = key.removeprefix(ROOT)
            if key == "prompt_embeddings":
                prompt = getattr(model, "pelt_prompt", None)
                if prompt is None:
                    raise UniPeltError(f"{source}: tensor {key!r} is a prompt's, and this config has no prompt")
                out[prompt.embeddings] = tensor
            elif name.endswith((".lora_A.weight", ".lora_B.weight")):  # a lora_B.bias has no place here
                owner, _, part = name.partition(".lora_")
                block = getattr(modules.get(owner), "pelt_lora", None)
                if block is None:
                    raise UniPeltError(f"{source}: tensor {key!r} adapts {owner!r}, which has no LoRA here")
                out[block.down if part.startswith("A") else block.up] = tensor.T[None]
            elif name.endswith(".lora_magnitude_vector"):  # DoRA's m, one per output row
                owner = modules.get(name.removesuffix(".lora_magnitude_vector"))
                if not isinstance(owner, DoRALinear):
                    raise UniPeltError(f"{source}: tensor {key!r} has no DoRA here")
                out[owner.pelt_magnitude.weight] = tensor
            elif name in params and params[name].requires_grad:  # the task head, declared modules_to_save
                out[params[name]] = tensor
            elif name in params:
                raise UniPeltError(
                    f"{source}: tensor {key!r} would replace the frozen base weight {name!r}; a peft checkpoint "
                    "brings the adapter's own tensors, the task head and the modules its modules_to_save declares"
                )
            else:
                raise UniPeltError(f"{source}: tensor {key!r} has no place in this model")
        return out

    return assign


def from_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply a HF peft checkpoint (LoRA, or prompt tuning on a causal LM) to a fresh base
    ``model``; the task head it saved is loaded too. Refuses what unipelt cannot compute the same."""
    require_fresh(model)
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG, directory / WEIGHTS
    if not cfg_path.is_file() or not weights_path.is_file():
        raise UniPeltError(
            f"{directory} is not a peft checkpoint: expected {CONFIG} and {WEIGHTS} "
            "(pickled .bin files are never loaded)"
        )
    cfg = read_json(cfg_path)
    _check_fields(cfg, cfg_path)
    kind = cfg.get("peft_type")
    if kind in _REFUSED:
        raise UniPeltError(f"peft {kind} cannot be imported exactly: {_REFUSED[kind]}")
    if kind == "LORA":
        methods = _lora_configs(cfg, model)
    elif kind == "PROMPT_TUNING":
        methods = (_prompt_config(cfg, model),)
    else:
        raise UniPeltError(f"peft {kind!r} checkpoints cannot be imported; unipelt reads LORA and PROMPT_TUNING")
    # peft trains the model class's own head: never the summary "auto" would pick for this backbone
    config = PeltConfig(methods=methods, modules_to_save=_modules_to_save(cfg, model, cfg_path), head="model")
    return install(model, config, _assign(read_tensors(weights_path), weights_path), str(directory))


def _output_tie(model: nn.Module, module: nn.Module) -> str | None:
    """Why ``module`` cannot be a module to save under both libraries, or None: it is the output
    embedding, which unipelt keeps frozen, or shares a weight with it (tied input embeddings):
    peft trains a copy and leaves the output embedding as it was, unipelt the shared tensor."""
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is None:
        return None
    if module is output:
        return "the output embedding, which unipelt keeps frozen"
    tied = {id(p) for p in output.parameters()}
    if any(id(p) in tied for p in module.parameters()):
        return "whose weight is tied to the output embedding: peft trains a copy of it, unipelt the tied weight"
    return None


def _modules_to_save(cfg: dict, model: nn.Module, path: Path) -> tuple[str, ...]:
    """The modules peft's ``modules_to_save`` selects, by peft's rule (every module whose path ends
    with a name: "LayerNorm" is each of BERT's), inside the base model as unipelt's; the task head
    outside it trains anyway, and a name no module has is passed over, as peft does. An output
    embedding (a causal LM's ``lm_head``) is refused: unipelt keeps it frozen."""
    declared = cfg.get("modules_to_save") or []
    declared = [declared] if isinstance(declared, str) else declared
    if not isinstance(declared, list) or not all(isinstance(m, str) and m for m in declared):
        raise UniPeltError(f"{path}: field 'modules_to_save' must be a list of module names, got {declared!r}")
    prefix = "" if model.base_model is model else f"{model.base_model_prefix}."
    selected = []
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or not name.endswith(tuple(declared)):
            continue
        if why := _output_tie(model, module):
            raise UniPeltError(f"{path}: modules_to_save selects {name!r}, {why}: such a checkpoint cannot be imported")
        if name.startswith(prefix):
            selected.append(name.removeprefix(prefix))
    return tuple(dict.fromkeys(selected))


# ---- export
def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if _is_causal_lm(model):
        return "CAUSAL_LM"
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM")):
        if name.endswith(suffix):
            return task
    return None


def _plain(name: str) -> str:
    """The name a module has in the plain HF model peft will load into."""
    return name.replace(".base_layer", "")


def _export_refusal(cfg: PeltConfig, model: nn.Module) -> str | None:
    kinds = {type(m).__name__ for m in cfg.methods}
    if cfg.head in ("mean", "last"):
        return f"its task head reads the {cfg.head} summary (heads.py): peft's classifier reads the model's own"
    if cfg.gated:
        return "it is gated (UniPELT): peft has no gates"
    if kinds in ({"LoRAConfig"}, {"DoRAConfig"}):
        if len({(m.r, m.alpha, m.dropout, m.use_rslora) for m in cfg.methods}) > 1:
            return "its LoRA configs differ in r, alpha, dropout or scale (peft's rank/alpha patterns are not written)"
        parts = [_plain(n) for n, m in model.named_modules() if isinstance(m, LoRALinear) and m.rows is not None]
        if parts:
            return f"its LoRA adapts part of a fused projection ({parts[0]}): peft's LoRA adapts a whole linear map"
        return None
    if kinds == {"PromptConfig"}:
        return _prompt_refusal(model)
    if len(cfg.methods) > 1:
        return f"it combines {sorted(kinds)}: a peft checkpoint holds one method"
    if kinds == {"PrefixConfig"}:
        return _REFUSED["PREFIX_TUNING"]
    return f"peft has no equivalent of {kinds.pop()} written here"


def _target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """peft's leaf names when they pick out exactly the adapted linear maps, else their full paths."""
    linears = {_plain(n) for n, m in model.named_modules() if is_linear(m) and MARK not in n}
    linears = {n.removesuffix(".base_layer") for n in linears} | set(adapted)
    leaves = {n.rpartition(".")[2] for n in adapted}
    return sorted(leaves) if {n for n in linears if n.rpartition(".")[2] in leaves} == set(adapted) else sorted(adapted)


def _lora_export(model: nn.Module, cfg: PeltConfig) -> tuple[dict, dict]:
    wrapped = [(_plain(n), m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not wrapped:
        raise UniPeltError("to_peft: the model has no LoRA left to export (was it merged?)")
    tensors = {}
    for name, m in wrapped:
        tensors[f"{ROOT}{name}.lora_A.weight"] = m.pelt_lora.down[0].T  # (r, in)
        tensors[f"{ROOT}{name}.lora_B.weight"] = m.pelt_lora.up[0].T  # (out, r)
        if isinstance(m, DoRALinear):
            tensors[f"{ROOT}{name}.lora_magnitude_vector"] = m.pelt_magnitude.weight
    lora = cfg.methods[0]
    return {
        "peft_type": "LORA",
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": _target_modules(model, [n for n, _ in wrapped]),
        "bias": "none",
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for _, m in wrapped),  # GPT-2's W is stored (in, out)
        "use_rslora": lora.use_rslora,
        "use_dora": isinstance(lora, DoRAConfig),
        "init_lora_weights": True,
    }, tensors


def _prompt_export(model: nn.Module) -> tuple[dict, dict]:
    embeddings = model.pelt_prompt.embeddings
    c = model.config
    return {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": embeddings.shape[0],
        "token_dim": embeddings.shape[1],
        "num_transformer_submodules": 1,
        "num_attention_heads": c.num_attention_heads,
        "num_layers": c.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
    }, {"prompt_embeddings": embeddings}


def to_peft(model: nn.Module, directory: str | Path) -> Path:
    """Write a unipelt model with ungated LoRA (or, on a causal LM, prompt tuning) as a peft
    checkpoint that ``PeftModel.from_pretrained`` loads with the same logits; the task head and
    ``modules_to_save`` go along as peft's ``modules_to_save``. Refuses what peft cannot express."""
    cfg: PeltConfig | None = getattr(model, "pelt_config", None)
    if cfg is None:
        raise UniPeltError("to_peft() needs a model returned by unipelt.apply()")
    if why := _export_refusal(cfg, model):
        raise UniPeltError(f"to_peft: this model cannot be written as a peft checkpoint: {why}")
    lora = isinstance(cfg.methods[0], (LoRAConfig, DoRAConfig))
    config, tensors = _lora_export(model, cfg) if lora else _prompt_export(model)
    params = dict(model.named_parameters())
    # full paths: peft takes a module when its name ends with an entry ("norm" would take every
    # layer's input_layernorm too); a bare base model (BertModel) has no prefix
    base = f"{model.base_model_prefix}." if model.base_model is not model else ""
    for m in cfg.modules_to_save:
        module = model.base_model.get_submodule(m)
        if any(isinstance(inner, (LoRALinear, DoRALinear)) for inner in module.modules()):
            raise UniPeltError(
                f"to_peft: modules_to_save {m!r} holds LoRA layers, which peft would replace by the saved copy"
            )
        if why := _output_tie(model, module):
            raise UniPeltError(f"to_peft: modules_to_save {m!r} is a module {why}")
    saved = sorted(head_parameter_names(model)) + [
        n for n in params if any(_plain(n).startswith(f"{base}{m}.") for m in cfg.modules_to_save)
    ]
    tensors.update({f"{ROOT}{_plain(n)}": params[n] for n in saved})
    modules = sorted({n.split(".")[0] for n in head_parameter_names(model)}) + [
        f"{base}{m}" for m in cfg.modules_to_save
    ]
    config.update(
        {
            "task_type": _task_type(model),
            "modules_to_save": modules or None,
            "inference_mode": True,
            "base_model_name_or_path": str(getattr(model.config, "_name_or_path", "") or "") or None,
        }
    )
    directory = Path(directory)

    def write(tmp: dict[str, Path]) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp[WEIGHTS])
        tmp[CONFIG].write_text(json.dumps(config, indent=2) + "\n")

    replace_together(directory, (WEIGHTS, CONFIG), write)  # a failed export leaves the old one
    return directory
