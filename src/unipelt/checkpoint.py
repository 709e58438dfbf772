"""Adapter-only checkpoints: the PELT parameters and the task head as safetensors, the config
and the base model's identity as JSON. Nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import PeltConfig
from .errors import UniPeltError
from .inject import apply, fold

WEIGHTS, META = "unipelt.safetensors", "unipelt.json"
FORMAT = 1
_IDENTITY_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "vocab_size")


def _saved_names(model: nn.Module) -> list[str]:
    """What a checkpoint holds: the trainable parameters, with the prefix network folded."""
    return [n for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith("pelt_prefix.")]


def _identity(model: nn.Module, saved: set[str]) -> dict:
    cfg = model.config
    ident = {k: getattr(cfg, k, None) for k in _IDENTITY_KEYS}
    ident["name_or_path"] = getattr(cfg, "_name_or_path", "")
    emb = model.get_input_embeddings().weight
    params = dict(model.named_parameters())
    if not any(params[n] is emb for n in saved):  # a trained embedding is saved itself
        ident["embedding_probe"] = emb[:4, :8].detach().float().flatten().tolist()
    return ident


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write ``unipelt.safetensors`` and ``unipelt.json`` to ``directory``; returns it."""
    cfg: PeltConfig | None = getattr(model, "pelt_config", None)
    if cfg is None:
        raise UniPeltError("save() needs a model returned by unipelt.apply()")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    names = _saved_names(model)
    tensors = {n: params[n].detach().contiguous().cpu() for n in names}
    prefix = getattr(model, "pelt_prefix", None)
    if prefix is not None:
        with torch.no_grad():
            tensors["pelt_prefix.folded"] = (prefix.folded if prefix.folded is not None else prefix.table()).detach().cpu().contiguous()
    save_file(tensors, directory / WEIGHTS)
    meta = {"format": FORMAT, "unipelt_version": __version__, "config": cfg.to_dict(),
            "base_model": _identity(model, set(names)), "sha256": _sha256(directory / WEIGHTS)}
    (directory / META).write_text(json.dumps(meta, indent=2))
    return directory


def _read_meta(directory: Path) -> dict:
    path = directory / META
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise UniPeltError(f"{directory} is not a unipelt checkpoint: expected {META} and {WEIGHTS}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UniPeltError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise UniPeltError(f"{path} has checkpoint format {meta.get('format')!r}; this unipelt reads {FORMAT}")
    return meta


def _check_identity(saved: dict, model: nn.Module) -> None:
    current = _identity(model, set())
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs model {current[k]!r}"
             for k in _IDENTITY_KEYS if saved.get(k) != current[k]]
    probe = saved.get("embedding_probe")
    if probe is not None and not torch.allclose(torch.tensor(probe), torch.tensor(current["embedding_probe"]), atol=1e-2):
        diffs.append("the base model's embedding weights differ (a different pretrained checkpoint)")
    if diffs:
        raise UniPeltError(f"checkpoint was saved from base model {saved.get('name_or_path')!r}, which "
                           f"differs from {current['name_or_path']!r}: " + "; ".join(diffs))


def _read_tensors(directory: Path, meta: dict) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS
    if _sha256(path) != meta.get("sha256"):
        raise UniPeltError(f"{path} does not match the checksum in {META}: the file was truncated or modified")
    try:
        return load_file(path)
    except SafetensorError as e:
        raise UniPeltError(f"{path} is not a readable safetensors file: {e}") from None


def load(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the checkpoint's config to a fresh base ``model`` (or check the one it has) and load
    its weights; the prefix comes back folded. Returns ``model``."""
    directory = Path(directory)
    meta = _read_meta(directory)
    config = PeltConfig.from_dict(meta["config"])
    _check_identity(meta["base_model"], model)
    if getattr(model, "pelt_config", None) is None:
        apply(model, config)
    elif model.pelt_config != config:
        raise UniPeltError(f"the model has a different unipelt config than the checkpoint in {directory}")
    tensors = _read_tensors(directory, meta)
    fold(model)
    params = dict(model.named_parameters())
    expected = set(_saved_names(model)) | ({"pelt_prefix.folded"} if "pelt_prefix.folded" in params else set())
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise UniPeltError(f"checkpoint {directory} does not fit this model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise UniPeltError(f"{name}: checkpoint shape {tuple(tensor.shape)} vs model {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model
