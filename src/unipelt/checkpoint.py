"""Adapter-only checkpoints: the PELT parameters and the task head as safetensors, the config
and the base model's identity as JSON. Nothing is unpickled.

``load`` is all-or-nothing: every check (the JSON, the weights' checksum, the base model's
identity, the tensors' names and shapes) runs before the model is touched, so a refused
checkpoint leaves the model exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import PeltConfig
from .errors import UniPeltError
from .inject import (
    MARK,
    all_or_nothing,
    applied,
    enable,
    fold,
    refuse_inference_weights,
    saved_module_names,
    trained_names,
)
from .participation import check_participation
from .version import __version__

log = logging.getLogger(__name__)

WEIGHTS, META = "unipelt.safetensors", "unipelt.json"
FORMAT = 2  # 2: a fingerprint of every frozen base tensor; 1 (still read): an embedding probe
_IDENTITY_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)
SAMPLE = 4096  # values per tensor hashed: cheap on any model, and any retraining changes them
PROBE = 8  # values per tensor kept in clear, compared with a tolerance across dtypes


def _saved_names(model: nn.Module) -> list[str]:
    """What a checkpoint holds: the parameters the model's config trains (whatever their
    ``requires_grad`` says now), with the prefix network folded."""
    trained = trained_names(model, model.pelt_config)
    return [n for n, _ in model.named_parameters() if n in trained and not n.startswith("pelt_prefix.")]


def _unsaved_trainable(model: nn.Module, saved: set[str]) -> None:
    """Warn of base weights set to train by hand: the config does not name them, so the
    checkpoint holds their fingerprint, not their values."""
    extra = [n for n, p in model.named_parameters() if p.requires_grad and n not in saved and MARK not in n]
    if extra:
        log.warning(
            "save(): %d base parameter(s) require grad but are not in the config (%s%s): the checkpoint does "
            "not hold them, and loads only onto a base model where they are as they are now; name their "
            "modules in PeltConfig.modules_to_save to train and save them",
            len(extra),
            ", ".join(extra[:3]),
            ", ..." if len(extra) > 3 else "",
        )


def _base_name(name: str) -> str:
    """The name a parameter has in the plain model: wrappers keep the original as .base_layer."""
    return name.replace(".base_layer", "")


def _fingerprint(t: torch.Tensor) -> dict:
    flat = t.detach().flatten()
    sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].float().cpu()
    probe = sample[:: max(1, len(sample) // PROBE)][:PROBE]
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16],
        "probe": probe.tolist(),
    }


def _identity(model: nn.Module, saved: set[str]) -> dict:
    cfg = model.config
    ident = {k: getattr(cfg, k, None) for k in _IDENTITY_KEYS}
    ident["name_or_path"] = str(getattr(cfg, "_name_or_path", ""))
    # every base weight the checkpoint does not hold: loading onto another one would be wrong
    ident["base_tensors"] = {
        _base_name(n): _fingerprint(p) for n, p in model.named_parameters() if n not in saved and MARK not in n
    }
    return ident


def _task(model: nn.Module, pairs: bool | None, max_length: int | None) -> dict:
    """What serving the checkpoint needs to know of its task: its head's size, label names and
    kind, and, where the caller says, whether inputs are sentence pairs and how many tokens each
    input was cut to in training (the server and ``MultiTask.predict`` cut to the same)."""
    cfg = model.config
    task = {
        "num_labels": getattr(cfg, "num_labels", None),
        "problem_type": getattr(cfg, "problem_type", None),
        "id2label": {str(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()},
    }
    if pairs is not None:
        task["pairs"] = pairs
    if max_length is not None:
        task["max_length"] = max_length
    return task


def _check_task_options(pairs, max_length) -> None:
    if pairs is not None and not isinstance(pairs, bool):
        raise UniPeltError(f"save(pairs=...) must be True, False or None, got {pairs!r}")
    if max_length is not None and (type(max_length) is not int or max_length < 1):
        raise UniPeltError(f"save(max_length=...) must be a positive whole number or None, got {max_length!r}")


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256, read a chunk at a time: a huge (or sparse) file costs no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save(model: nn.Module, directory: str | Path, *, pairs: bool | None = None, max_length: int | None = None) -> Path:
    """Write ``unipelt.safetensors`` and ``unipelt.json`` to ``directory``; returns it.

    ``pairs`` (whether the task's inputs are sentence pairs) and ``max_length`` (tokens per input
    in training) are recorded for serving: ``MultiTask`` and ``unipelt serve`` take inputs of that
    kind, cut to that length."""
    _check_task_options(pairs, max_length)
    cfg: PeltConfig | None = getattr(model, "pelt_config", None)
    if cfg is None:
        raise UniPeltError("save() needs a model returned by unipelt.apply()")
    if getattr(model, "pelt_merged", False):
        raise UniPeltError(
            "save() refuses a merged model: merge() folded its LoRA/(IA)³ into the base weights, which a "
            "checkpoint does not hold, so nothing of them would be saved; save before merge(), or keep "
            "the merged model whole with save_pretrained after merge_and_unload()"
        )
    directory = Path(directory)
    params, saved = dict(model.named_parameters()), _saved_names(model)
    _unsaved_trainable(model, set(saved))
    tensors = {n: params[n].detach().contiguous().cpu() for n in saved}
    prefix = getattr(model, "pelt_prefix", None)
    if prefix is not None:
        with torch.no_grad():
            tensors["pelt_prefix.folded"] = (
                (prefix.folded if prefix.folded is not None else prefix.table()).detach().cpu().contiguous()
            )
    meta = {
        "format": FORMAT,
        "unipelt_version": __version__,
        "config": cfg.to_dict(),
        "base_model": _identity(model, set(saved)),
        "task": _task(model, pairs, max_length),
    }
    write_checkpoint(directory, tensors, meta)
    return directory


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Both files, or neither: everything that can fail (the JSON, the weights file) happens
    beside the old pair, which stays as it was until the two renames at the end."""

    def weights_then_meta(tmp: dict[str, Path]) -> None:
        save_file(tensors, tmp[WEIGHTS])
        tmp[META].write_text(json.dumps({**meta, "sha256": _sha256(tmp[WEIGHTS])}, indent=2))

    # the weights first: until the JSON with their checksum replaces the old one, load refuses the pair
    replace_together(directory, (WEIGHTS, META), weights_then_meta)


def replace_together(directory: Path, names: tuple[str, ...], write) -> None:
    """``write({name: temporary path})`` beside the final names, then rename each over in order:
    a failure while writing leaves every old file as it was, and no temporary file; nor the
    directories this call created (the target and any new parents), and no other."""
    blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == directory else f" cannot be created: {blocker}"
        raise UniPeltError(f"{directory}{where} is a file, not a directory")
    created = [p for p in (directory, *directory.parents) if not p.exists()]  # the deepest first
    directory.mkdir(parents=True, exist_ok=True)
    tmp = {name: directory / f".{name}.tmp-{os.getpid()}" for name in names}
    try:
        try:
            write(tmp)
            for name in names:
                os.replace(tmp[name], directory / name)
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)
    except BaseException:
        for path in created:  # each is empty once the one below is gone
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


# ---- reading and validating unipelt.json
def _need(value, kind, field: str, path: Path):
    """``value`` if it has type ``kind`` (bool never counts as a number), else a UniPeltError naming ``field``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise UniPeltError(f"{path}: field {field!r} must be {names}, got {value!r}")
    return value


def _field(table: dict, key: str, kind, where: str, path: Path):
    if key not in table:
        raise UniPeltError(f"{path}: field {where + key!r} is missing")
    return _need(table[key], kind, where + key, path)


def _check_tensor_entry(entry, where: str, path: Path) -> None:
    _need(entry, dict, where, path)
    for key, kind in (("shape", list), ("dtype", str), ("sha256", str), ("probe", list)):
        _field(entry, key, kind, where + ".", path)
    for v in entry["shape"]:
        _need(v, int, f"{where}.shape[]", path)
    _check_probe(entry["probe"], f"{where}.probe", path)


def _check_probe(values, field: str, path: Path) -> None:
    """Saved probes are float32 values, compared as float32 tensors: an integer beyond any float
    (10**400) is no saved value, and torch cannot convert it."""
    for v in _need(values, list, field, path):
        _need(v, (int, float), field + "[]", path)
        if isinstance(v, int) and abs(v) > sys.float_info.max:
            raise UniPeltError(f"{path}: field {field + '[]'!r} holds an integer beyond any float")


def _check_base_model(base: dict, path: Path) -> None:
    for key in _IDENTITY_KEYS:
        _field(base, key, (str if key == "model_type" else int, type(None)), "base_model.", path)
    _need(base.get("name_or_path", ""), str, "base_model.name_or_path", path)
    if "embedding_probe" in base:
        _check_probe(base["embedding_probe"], "base_model.embedding_probe", path)
    for name, entry in _need(base.get("base_tensors", {}), dict, "base_model.base_tensors", path).items():
        _check_tensor_entry(entry, f"base_model.base_tensors.{name}", path)


def _read_meta(directory: Path) -> dict:
    path = directory / META
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise UniPeltError(f"{directory} is not a unipelt checkpoint: expected {META} and {WEIGHTS}")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UniPeltError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UniPeltError(f"{path} is not valid JSON: {e}") from None
    except ValueError:  # Python reads no integer literal longer than this
        raise UniPeltError(f"{path} holds a number of over {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise UniPeltError(f"{path} nests its JSON too deeply to be a checkpoint's metadata") from None
    _need(meta, dict, "(top level)", path)
    version = meta.get("format")
    if type(version) is not int or version not in (1, FORMAT):
        raise UniPeltError(f"{path} has checkpoint format {version!r}; this unipelt reads 1 and {FORMAT}")
    for key, kind in (("unipelt_version", str), ("config", dict), ("sha256", str), ("base_model", dict)):
        _field(meta, key, kind, "", path)
    _check_base_model(meta["base_model"], path)
    if "task" in meta:  # checkpoints before serving have none
        _check_task_block(_need(meta["task"], dict, "task", path), path)
    return meta


PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")  # transformers'


def _check_task_block(task, path: Path) -> None:
    """The fields serving reads to decide what an input is; the head's own are checked on use."""
    if "pairs" in task:
        _need(task["pairs"], bool, "task.pairs", path)
    if "max_length" in task and _need(task["max_length"], int, "task.max_length", path) < 1:
        raise UniPeltError(f"{path}: field 'task.max_length' must be at least 1, got {task['max_length']}")
    if task.get("num_labels") is not None and _need(task["num_labels"], int, "task.num_labels", path) < 0:
        raise UniPeltError(f"{path}: field 'task.num_labels' must be at least 0, got {task['num_labels']}")
    if task.get("problem_type") not in PROBLEM_TYPES:
        raise UniPeltError(
            f"{path}: field 'task.problem_type' must be one of {PROBLEM_TYPES}, got {task['problem_type']!r}"
        )
    labels = task.get("id2label")
    if labels is not None and not (
        isinstance(labels, dict) and all(k.isascii() and k.isdigit() and isinstance(v, str) for k, v in labels.items())
    ):
        raise UniPeltError(f'{path}: field \'task.id2label\' must map label ids ("0", "1", ...) to names')
    if labels and isinstance(task.get("num_labels"), int) and len(labels) != task["num_labels"]:
        raise UniPeltError(
            f"{path}: field 'task.id2label' names {len(labels)} labels, 'task.num_labels' is {task['num_labels']}"
        )


def _v1_config(data: dict) -> dict:
    """Format 1 (unipelt 0.1) named standard prefix tuning composition "add"; it is "interpolate"
    now, and "add" is He et al.'s -gating ablation."""
    methods = [
        dict(m, composition="interpolate")
        if isinstance(m, dict) and m.get("method") == "prefix" and m.get("composition") == "add"
        else m
        for m in data.get("methods", [])
    ]
    return {**data, "methods": methods}


def _v1_pooler(config: PeltConfig, tensors: Iterable[str], model: nn.Module) -> PeltConfig:
    """Format 1 trained BERT's pooler in every method and saved it: it loads as modules_to_save."""
    pooler = f"{model.base_model_prefix}.pooler."
    if any(n.startswith(pooler) for n in tensors) and "pooler" not in config.modules_to_save:
        return dataclasses.replace(config, modules_to_save=(*config.modules_to_save, "pooler"))
    return config


def _config(meta: dict, path: Path) -> PeltConfig:
    data = meta["config"]
    if isinstance(data, dict) and "head" not in data:
        data = {**data, "head": "model"}  # saved before heads existed: trained with the model's own head
    try:
        return PeltConfig.from_dict(_v1_config(data) if meta["format"] == 1 and isinstance(data, dict) else data)
    except UniPeltError as e:
        raise UniPeltError(f"{path}: field 'config': {e}") from None
    except (TypeError, ValueError, AttributeError) as e:  # a malformed entry the config does not name
        raise UniPeltError(f"{path}: field 'config' is not a PELT config: {e}") from None


# ---- checking the base model
def _same(saved: dict, current: dict) -> bool:
    if saved["dtype"] == current["dtype"]:
        return saved["sha256"] == current["sha256"]
    # another precision of the same weights hashes differently: compare the probe values instead
    if len(saved["probe"]) != len(current["probe"]):  # the JSON is outside the weights' checksum
        return False
    return torch.allclose(
        torch.tensor(saved["probe"], dtype=torch.float32),
        torch.tensor(current["probe"], dtype=torch.float32),
        rtol=1e-2,
        atol=1e-3,
    )


def same_base(a: dict, b: dict) -> bool:
    """Whether two checkpoints' ``base_model`` entries hold the same base weights, as ``load``
    judges a model: the identity keys and every base tensor (another dtype compares by value).
    Where each was loaded from (``name_or_path``) does not count."""
    if any(a.get(k) != b.get(k) for k in _IDENTITY_KEYS):
        return False
    probes = [x.get("embedding_probe") for x in (a, b)]  # format 1
    if probes[0] is not None or probes[1] is not None:
        if None in probes or len(probes[0]) != len(probes[1]):
            return False
        as_floats = [torch.tensor(p, dtype=torch.float32) for p in probes]  # JSON integers too
        if not torch.allclose(*as_floats, atol=1e-2):
            return False
    ta, tb = a.get("base_tensors", {}), b.get("base_tensors", {})
    return ta.keys() == tb.keys() and all(ta[n]["shape"] == tb[n]["shape"] and _same(ta[n], tb[n]) for n in ta)


def _differing_tensor(saved: dict, model: nn.Module) -> str | None:
    """The first base tensor of the checkpoint that this model lacks or holds differently."""
    params = {_base_name(n): p for n, p in model.named_parameters()}
    for name, want in saved.items():
        have = params.get(name)
        if have is None:
            return f"base tensor {name} is missing from this model"
        if list(have.shape) != want["shape"]:
            return f"base tensor {name}: checkpoint shape {tuple(want['shape'])} vs model {tuple(have.shape)}"
        if not _same(want, _fingerprint(have)):
            return (
                f"base tensor {name} differs (the base model's weights differ: a different pretrained "
                "checkpoint, or one with LoRA merged in)"
            )
    return None


def _legacy_probe_differs(probe: list, model: nn.Module) -> str | None:
    """Format 1 kept only a 4x8 corner of the input embeddings."""
    current = model.get_input_embeddings().weight[:4, :8].detach().float().flatten()
    if len(probe) != len(current) or not torch.allclose(torch.tensor(probe, dtype=torch.float32), current, atol=1e-2):
        return "the base model's embedding weights differ (a different pretrained checkpoint)"
    return None


def _check_identity(saved: dict, model: nn.Module) -> None:
    cfg = model.config
    diffs = [
        f"{k}: checkpoint {saved[k]!r} vs model {getattr(cfg, k, None)!r}"
        for k in _IDENTITY_KEYS
        if saved[k] != getattr(cfg, k, None)
    ]
    if not diffs:
        tensor = _differing_tensor(saved.get("base_tensors", {}), model)
        probe = saved.get("embedding_probe")
        diffs = [d for d in (tensor, probe is not None and _legacy_probe_differs(probe, model)) if d]
    if diffs:
        names = [n for n in (saved.get("name_or_path"), getattr(cfg, "_name_or_path", "")) if n]
        which = f" ({' vs '.join(map(repr, names))})" if names else ""
        raise UniPeltError(
            f"the checkpoint was saved from another base model than this one{which}: " + "; ".join(diffs)
        )


# ---- checking the tensors against the model they will go into
@torch.inference_mode(False)  # under inference_mode the copy's tensors could not be set to train in a dry apply
def _meta_copy(model: nn.Module) -> nn.Module:
    """The model's structure with every tensor on the meta device.

    A dry run of ``apply`` on it says which tensors the real model will have, at no memory cost
    and without touching the model; undoing a real ``apply`` instead would have to know
    everything apply changes, and a full deep copy would double the memory.
    """
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def dry_apply(model: nn.Module, config: PeltConfig, what: str, *, new: bool = True, on_meta: bool = False) -> nn.Module:
    """``config`` applied to ``model``'s structure on the meta device (a copy, or ``model`` itself
    when it is ``on_meta`` already), then ``check_size``: what ``apply`` would refuse, or a
    config asking for huge modules (r = 2**40), is found at no memory cost, and neither ``model``
    nor the user's RNG (the modules' initialisation) is touched."""
    base = sum(p.numel() for p in model.parameters())
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        dry = model if on_meta else _meta_copy(model)
        applied(dry, config, new=new)
    check_size(dry, base, what)
    return dry


def _expected_shapes(model: nn.Module, config: PeltConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The shape of each tensor the checkpoint must hold, and the names it may lack (``_unsaved_before``)."""
    if getattr(model, "pelt_config", None) is None:
        target = dry_apply(model, config, "the checkpoint's config", new=False)
    else:
        target = _meta_copy(model)
    with torch.device("meta"):
        fold(target)
    params = dict(target.named_parameters())
    names = _saved_names(target) + (["pelt_prefix.folded"] if "pelt_prefix.folded" in params else [])
    return {n: tuple(params[n].shape) for n in names}, {n for n in saved_module_names(target, config) if WRAPPED in n}


WRAPPED = ".base_layer."  # in the name of a base parameter below a unipelt wrapper


def _unsaved_before(optional: set[str], tensors: dict[str, torch.Tensor], directory: Path) -> set[str]:
    """The parameters of ``modules_to_save`` below a wrapper that the checkpoint lacks: an older
    unipelt neither trained nor saved them (it matched their names with the wrapper in the path),
    so the base model's weights are what such a checkpoint trained with, and they stay."""
    absent = optional - tensors.keys()
    if absent:
        log.warning(
            "%s holds no weights for %s, modules_to_save that the unipelt which saved it did not train: "
            "the base model's weights stay, as they were in its training",
            directory,
            ", ".join(sorted({n.rpartition(".")[0] for n in absent})[:3]),
        )
    return absent


ADDED_FLOOR = 1 << 27  # added parameters any base model may get (512 MB in float32): tiny test
# models' prefix networks outnumber their base, real ones' (9.4M on BERT-base) do not


def check_size(applied: nn.Module, base: int, what: str = "the checkpoint's config") -> None:
    """Refuse a config whose modules, before folding, outnumber both the base model's parameters
    and ``ADDED_FLOOR``: a few-KB checkpoint (its prefix is stored folded) must not make ``load``
    allocate gigabytes for a reparameterisation network it asks for (a prefix ``mid_dim`` of 3e6)."""
    added = sum(p.numel() for n, p in applied.named_parameters() if MARK in n)
    limit = max(base, ADDED_FLOOR)
    if added > limit:
        raise UniPeltError(
            f"{what} asks for {added:,} added parameters, more than the {limit:,} "
            "allowed for this base model: refused before allocating them"
        )


def _check_fits(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor], directory: Path) -> None:
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise UniPeltError(
            f"checkpoint {directory} does not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for name, tensor in tensors.items():
        if expected[name] != tuple(tensor.shape):
            raise UniPeltError(f"{name}: checkpoint shape {tuple(tensor.shape)} vs model {expected[name]}")


def read_metadata(directory: str | Path) -> tuple[dict, PeltConfig]:
    """The checkpoint's metadata and its config as saved, checked without a model or the weights."""
    directory = Path(directory)
    meta = _read_meta(directory)
    return meta, _config(meta, directory / META)


def read_config(directory: str | Path, model: nn.Module) -> tuple[dict, PeltConfig]:
    """The checkpoint's metadata and the config ``load`` would apply to ``model``, read without
    its weights: format 1's saved pooler is seen in the file's header."""
    directory = Path(directory)
    meta, config = read_metadata(directory)
    if meta["format"] != 1:
        return meta, config
    try:
        with safe_open(directory / WEIGHTS, "pt") as f:
            names = list(f.keys())
    except SafetensorError as e:
        raise UniPeltError(f"{directory / WEIGHTS} is not a readable safetensors file: {e}") from None
    return meta, _v1_pooler(config, names, model)


def _read_tensors(directory: Path, meta: dict) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS
    if _sha256(path) != meta["sha256"]:
        raise UniPeltError(f"{path} does not match the checksum in {META}: the file was truncated or modified")
    try:
        return check_floats(load_file(path), path)
    except SafetensorError as e:
        raise UniPeltError(f"{path} is not a readable safetensors file: {e}") from None


FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # what a trained module can hold


def check_floats(tensors: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """``tensors``, once each is of a dtype a parameter can take a value from (a float4 or int
    tensor cannot be copied into one) and holds finite numbers (NaN weights answer NaN, or, where
    sdpa drops them, answer wrongly without a sign): refused before the model is touched."""
    for name, t in tensors.items():
        if t.dtype not in FLOATS:
            kinds = ", ".join(str(f).removeprefix("torch.") for f in FLOATS)
            raise UniPeltError(f"{source}: {name} is {str(t.dtype).removeprefix('torch.')}, not one of {kinds}")
        if not bool(t.isfinite().all()):
            raise UniPeltError(f"{source}: {name} holds NaN or infinite values")
    return tensors


def copy_value(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    """``param.copy_(value)``, refused where the model's dtype turns a finite value into inf
    (1e5 in float16): the caller's ``all_or_nothing`` then puts the model back."""
    param.copy_(value)
    if value.dtype != param.dtype and not bool(param.isfinite().all()):
        raise UniPeltError(
            f"{what} holds values beyond {str(param.dtype).removeprefix('torch.')}'s range, the model's dtype"
        )


def load(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the checkpoint's config to a fresh base ``model`` (or check the one it has) and load
    its weights; the prefix comes back folded. Returns ``model``; on any error it is unchanged."""
    directory = Path(directory)
    meta = _read_meta(directory)
    config = _config(meta, directory / META)
    tensors = _read_tensors(directory, meta)
    if meta["format"] == 1:
        config = _v1_pooler(config, tensors, model)
    if getattr(model, "pelt_merged", False):
        raise UniPeltError(
            f"load() refuses a merged model: merge() folded its LoRA/(IA)³ into the base weights, where "
            f"the checkpoint in {directory} would add to them; load into a fresh base model"
        )
    _check_identity(meta["base_model"], model)
    refuse_inference_weights(model)  # before all_or_nothing: its undo cannot reset an inference tensor's flags
    if getattr(model, "pelt_config", None) not in (None, config):
        raise UniPeltError(f"the model has a different unipelt config than the checkpoint in {directory}")
    expected, optional = _expected_shapes(model, config)
    absent = _unsaved_before(optional, tensors, directory)
    _check_fits({n: shape for n, shape in expected.items() if n not in absent}, tensors, directory)
    with all_or_nothing(model) as undo:
        if getattr(model, "pelt_config", None) is None:
            applied(model, config, new=False)
        fold(model)
        params = dict(model.named_parameters())
        undo.keep(params[name] for name in tensors)  # the head's, or a model applied before
        with torch.no_grad():
            for name, tensor in tensors.items():
                copy_value(params[name], tensor, f"{directory}: {name}")
        _restore_task(model, meta)
        with enable(model):  # the check runs the modules, also inside ``with unipelt.disable(model):``
            check_participation(model, after="load")  # the folded prefix, or a model applied before
    return model


def _restore_task(model: nn.Module, meta: dict) -> None:
    """The checkpoint's problem type where the model has none (a resave then records the same
    task, which ``merge`` compares), and its class names (a fresh model says LABEL_0, LABEL_1)
    where they name exactly the model's classes."""
    task = meta.get("task") or {}  # _read_meta has checked it: an object, its id2label one or None
    if getattr(model.config, "problem_type", None) is None:
        model.config.problem_type = task.get("problem_type")
    saved = task.get("id2label")
    n = getattr(model.config, "num_labels", None)
    if saved is None or sorted(saved) != sorted(str(i) for i in range(n or 0)):
        return
    names = {i: str(saved[str(i)]) for i in range(n)}
    model.config.id2label, model.config.label2id = names, {name: i for i, name in names.items()}
