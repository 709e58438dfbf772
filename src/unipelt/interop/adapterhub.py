"""``from_adapters``: a module saved by AdapterHub's ``save_adapter`` (adapters 1.x), loaded into
unipelt with the same outputs (tests/test_interop_adapters.py checks logits against adapters).

The directory holds ``adapter_config.json`` and ``adapter.safetensors`` or ``pytorch_adapter.bin``,
and with a flex head ``head_config.json`` and ``model_head.safetensors`` or
``pytorch_model_head.bin``. Parameter names follow adapters' BERT-family modules
(``<base>.encoder.layer.<i>.output.adapters.<name>.adapter_down.0.weight``, ...), so BERT,
RoBERTa and XLM-RoBERTa checkpoints are read; other architectures are refused.
"""

from __future__ import annotations

import re
import reprlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..arch import spec_for
from ..config import PeltConfig
from ..errors import UniPeltError
from . import adapterhub_config as hub
from ._safe import first_file, install, read_json, read_tensors, require_fresh

FAMILY = ("bert", "roberta", "xlm-roberta")
# adapters' module paths inside one BERT-family layer, by unipelt's name for the place
ADAPTER_SITES = {"attention.output": "attn", "output": "ffn"}
LORA_SITES = {
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}


@dataclass
class Tensors:
    """An adapters state dict, sorted by where each tensor goes."""

    adapters: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)  # (site, layer)
    lora: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)  # (target, layer)
    prefix_gates: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    prefix: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: torch.Tensor | None = None


def _sort(tensors: dict[str, torch.Tensor], base: str, name: str, source: Path) -> Tensors:
    b, n = re.escape(base), re.escape(name)
    layer = re.compile(rf"{b}\.encoder\.layer\.(\d+)\.(.+)\.(adapters|loras)\.{n}\.(.+)")
    gate = re.compile(rf"{b}\.encoder\.layer\.(\d+)\.attention\.self\.prefix_tuning\.prefix_gates\.{n}\.(.+)")
    # the prefix pool is saved once and again under every layer's attention (the same tensors)
    pool = re.compile(
        rf"{b}\.(?:encoder\.layer\.\d+\.attention\.self\.prefix_tuning\.pool|prefix_tuning)"
        rf"\.prefix_tunings\.{n}\.self_prefix\.(.+)"
    )
    prompt = f"{base}.prompt_tuning.prompt_tunings.{name}.prompt_embedding.weight"
    out = Tensors()
    for key, t in tensors.items():
        if m := layer.fullmatch(key):
            i, path, kind, rest = int(m[1]), m[2], m[3], m[4]
            sites = ADAPTER_SITES if kind == "adapters" else LORA_SITES
            if path not in sites:
                raise UniPeltError(f"{source}: tensor {key!r} sits at {path!r}, which unipelt does not map")
            (out.adapters if kind == "adapters" else out.lora).setdefault((sites[path], i), {})[rest] = t
        elif m := gate.fullmatch(key):
            out.prefix_gates.setdefault(int(m[1]), {})[m[2]] = t
        elif m := pool.fullmatch(key):
            if m[1] in out.prefix and not torch.equal(out.prefix[m[1]], t):
                raise UniPeltError(f"{source}: the copies of prefix tensor {m[1]!r} differ")
            out.prefix[m[1]] = t
        elif key == prompt:
            out.prompt = t
        else:
            raise UniPeltError(f"{source}: tensor {key!r} is not part of adapter {name!r} in a {base} model")
    return out


def _methods(cfg: dict, model: nn.Module) -> list:
    if not isinstance(cfg, dict):
        raise UniPeltError(f"the adapters config must be a JSON object, got {reprlib.repr(cfg)}")
    arch = cfg.get("architecture")
    if arch == "union":  # of methods: adapters flattens a union of unions, and so must a saved config
        configs = cfg.get("configs", [])
        if not isinstance(configs, list) or any(isinstance(c, dict) and c.get("architecture") == arch for c in configs):
            raise UniPeltError(
                f"the adapters union's field 'configs' must list method configs, got {reprlib.repr(configs)}"
            )
        return [m for c in configs for m in _methods(c, model)]
    if arch in (None, "bottleneck"):
        return hub.bottleneck(cfg, model.config.hidden_size)
    if arch == "prefix_tuning":
        return [hub.prefix(cfg)]
    if arch == "lora":
        return [hub.lora(cfg)]
    if arch == "prompt_tuning":
        return [hub.prompt(cfg, spec_for(model).prompt_at)]
    raise UniPeltError(f"adapters method {arch!r} has no unipelt equivalent (mtl_lora and reft are not implemented)")


def _head_layout(model: nn.Module) -> str | None:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear) and getattr(model.base_model, "pooler", None) is not None:
        return "pooler"
    if isinstance(getattr(head, "dense", None), nn.Linear) and isinstance(getattr(head, "out_proj", None), nn.Linear):
        return "dense"
    return None


def _read_head(directory: Path, model: nn.Module, name: str) -> tuple[hub.Head, dict] | None:
    if not (directory / "head_config.json").is_file():
        warnings.warn(f"{directory} has no saved prediction head: the model keeps its own", stacklevel=3)
        return None
    layout = _head_layout(model)
    if layout is None:
        raise UniPeltError(
            f"{directory} holds a classification head, but {type(model).__name__} has no "
            "BERT- or RoBERTa-style classifier to take it; load a *ForSequenceClassification model"
        )
    plan = hub.head(read_json(directory / "head_config.json").get("config", {}), layout, model.config.num_labels)
    path = first_file(directory, ("model_head.safetensors", "pytorch_model_head.bin"))
    if path is None:
        raise UniPeltError(f"{directory} has head_config.json but no head weights")
    tensors = read_tensors(path)
    expected = {f"heads.{name}.{i}.{p}" for i in plan.modules for p in ("weight", "bias")}
    if set(tensors) != expected:
        raise UniPeltError(f"{path}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
    return plan, tensors


def _low_rank(block, down: torch.Tensor, up: torch.Tensor, biases: tuple | None = None) -> dict:
    """adapters' Linear weights (out, in) as unipelt's LowRank (1, in, out) factors."""
    out = {block.down: down.T[None], block.up: up.T[None]}
    if biases is not None:
        out.update({block.down_bias: biases[0][None], block.up_bias: biases[1]})
    return out


def _gate(module, t: dict, prefix: str = "gate.") -> dict:
    return {module.proj.weight: t.pop(prefix + "weight"), module.proj.bias: t.pop(prefix + "bias")}


class _Assign:
    """Maps the sorted tensors onto a model that ``apply`` has prepared (real or meta)."""

    def __init__(self, config: PeltConfig, name: str, tensors: Tensors, head, source: Path):
        self.config, self.name, self.tensors, self.head, self.source = config, name, tensors, head, source

    def __call__(self, model: nn.Module) -> dict:
        spec = spec_for(model)
        stack = spec.stacks[0]
        att, ffn = stack.attention[0], stack.ffn
        self.layers = model.base_model.get_submodule(stack.layers)
        self.norms = {"attn": att.norm, "ffn": ffn.norm}
        self.linears = {"q": att.q, "k": att.k, "v": att.v, "ffn_in": ffn.ffn_in[0], "ffn_out": ffn.ffn_out[0]}
        out = {}
        for (site, i), t in self.tensors.adapters.items():
            out.update(self._adapter(site, i, dict(t)))
        for (target, i), t in self.tensors.lora.items():
            if not isinstance(self.linears[target], str):  # an arch.Part of a fused map
                raise UniPeltError(
                    f"AdapterHub LoRA on {target} of a fused projection ({self.linears[target].path}) is not imported"
                )
            t = dict(t)
            wrapped = self._at(i, self.linears[target], "pelt_lora", f"LoRA on {target}")
            out.update(_low_rank(wrapped.pelt_lora, t.pop("lora_A"), t.pop("lora_B")))
            out.update(self._maybe_gate(wrapped, t, f"LoRA {target} of layer {i}"))
        for i, t in self.tensors.prefix_gates.items():
            layer_prefix = self._at(i, att.input, "pelt_prefix", "prefix").pelt_prefix
            out.update(self._maybe_gate(layer_prefix, dict(t), f"prefix of layer {i}", prefix=""))
        out.update(self._prefix(model))
        if self.tensors.prompt is not None:
            prompt = getattr(model.base_model.get_submodule(spec.embeddings), "pelt_prompt", None)
            if prompt is None:
                raise UniPeltError(f"{self.source}: tensors for a prompt, which its config does not declare")
            out[prompt] = self.tensors.prompt
        if self.head is not None:
            plan, tensors = self.head
            for index, path in plan.modules.items():
                linear = model.get_submodule(path.format(base=model.base_model_prefix))
                for p in ("weight", "bias"):
                    out[getattr(linear, p)] = tensors[f"heads.{self.name}.{index}.{p}"]
        return out

    def _at(self, i: int, path: str, attribute: str, what: str):
        if i >= len(self.layers):
            raise UniPeltError(f"{self.source}: {what} of layer {i}, but the model has {len(self.layers)} layers")
        module = self.layers[i].get_submodule(path)
        if getattr(module, attribute, None) is None:
            raise UniPeltError(f"{self.source}: tensors for a {what} in layer {i}, which its config does not declare")
        return module

    def _maybe_gate(self, module, t: dict, what: str, prefix: str = "gate.") -> dict:
        out = _gate(module.pelt_gate, t, prefix) if module.pelt_gate is not None and t else {}
        if t:
            raise UniPeltError(f"{self.source}: unexpected tensors {sorted(t)} for the {what}")
        return out

    def _adapter(self, site: str, i: int, t: dict) -> dict:
        cfg = next((c for c in self.config.methods if getattr(c, "target", None) == site), None)
        if cfg is None:
            raise UniPeltError(f"{self.source}: tensors for a {site} adapter, which its config does not declare")
        group = (
            "pelt_adapter_parallel"
            if cfg.insertion == "parallel"
            else "pelt_adapter_houlsby"
            if cfg.placement == "houlsby"
            else "pelt_adapter_sequential"
        )
        adapter = getattr(self._at(i, self.norms[site], group, f"{site} adapter"), group)[0]
        out = _low_rank(
            adapter.block,
            t.pop("adapter_down.0.weight"),
            t.pop("adapter_up.weight"),
            (t.pop("adapter_down.0.bias"), t.pop("adapter_up.bias")),
        )
        if "scaling" in t and isinstance(getattr(adapter.scale, "value", None), nn.Parameter):  # a learned scale
            out[adapter.scale.value] = t.pop("scaling").reshape(())
        return {**out, **self._maybe_gate(adapter, t, f"{site} adapter of layer {i}")}

    def _prefix(self, model: nn.Module) -> dict:
        t = dict(self.tensors.prefix)
        encoder = getattr(model, "pelt_prefix", None)
        if not t:
            return {}
        if encoder is None:
            raise UniPeltError(f"{self.source}: prefix tensors, but its config declares no prefix tuning")
        if encoder.folded is not None:  # flat: the (l, 2·L·d) table itself
            flat = t.pop("control_trans")
            out = {encoder.folded: flat.view(encoder.length, encoder.slots, 2, -1).permute(1, 2, 0, 3)}
        else:
            net = encoder.nets[0]
            out = {net.embedding.weight: t.pop("wte.weight")}
            for i, linear in ((0, net.mlp_in), (2, net.mlp_out)):
                out.update(
                    {linear.weight: t.pop(f"control_trans.{i}.weight"), linear.bias: t.pop(f"control_trans.{i}.bias")}
                )
        if t:
            raise UniPeltError(f"{self.source}: unexpected prefix tensors {sorted(t)}")
        return out


def from_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load an AdapterHub ``adapters`` module saved with ``save_adapter`` into a fresh base
    ``model`` (the base it was trained on) as the equivalent unipelt config; its prediction head
    too, when one was saved and this model's own head computes the same function. Configs unipelt
    cannot express exactly are refused with the reason. Returns ``model``."""
    require_fresh(model)
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise UniPeltError(f"{directory} is not an adapters module: expected adapter_config.json")
    meta = read_json(directory / "adapter_config.json")
    model_type = model.config.model_type
    if model_type not in FAMILY:
        raise UniPeltError(f"from_adapters reads BERT-family checkpoints ({', '.join(FAMILY)}), not {model_type!r}")
    for key, ours in (("model_type", model_type), ("hidden_size", model.config.hidden_size)):
        if meta.get(key, ours) != ours:
            raise UniPeltError(f"{directory} was saved from a {key}={meta[key]!r} model, this one has {ours!r}")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise UniPeltError(f"{directory / 'adapter_config.json'} names no adapter")
    methods = _methods(meta.get("config"), model)
    weights = first_file(directory, ("adapter.safetensors", "pytorch_adapter.bin"))
    if weights is None:
        raise UniPeltError(f"{directory} has no adapter.safetensors or pytorch_adapter.bin")
    tensors = _sort(read_tensors(weights), model.base_model_prefix, name, weights)
    head = _read_head(directory, model, name)
    gated = any(getattr(m, "composition", None) == "gated" for m in methods)
    config = PeltConfig(
        methods=tuple(methods),
        gate_pooling="mean" if gated else "masked_mean",
        modules_to_save=head[0].modules_to_save if head else (),
        head="model",  # AdapterHub's heads read the model's pooler or first token, never a mean
    )
    return install(model, config, _Assign(config, name, tensors, head, weights), str(directory))
