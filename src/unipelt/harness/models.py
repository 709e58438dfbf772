"""The model a run trains: where it is, what it is, and whether it can do the run, all checked
before any training. Its identity (a hash of its config and weights) is part of the run's key,
so a model replaced at the same path is a new run, not "already finished"."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer

from ..arch import check_supported, supported
from ..encoding import position_limit
from ..errors import UniPeltError
from ..offline import DEFAULT_MODEL
from ..offline import model_path as _library_model_path
from .errors import HarnessError
from .generative import check_can_generate
from .locate import hub_offline_reason

# transformers' weight file names; a sharded model has an index beside its shards
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHUNK, CHUNKS = 1 << 20, 64  # a weight file larger than 64 MiB is hashed from 64 evenly spread MiB


def model_path(model: str) -> str:
    """What ``from_pretrained`` gets for a spec's model (the library's ``unipelt.model_path``)."""
    try:
        return _library_model_path(model)
    except UniPeltError as e:
        raise HarnessError(f"{e}; or pass --model DIR") from None


def resolve_model(model: str | None) -> str:
    """Validate the --model choice: the offline MiniLM alias (kept as the alias, so a run's
    identity does not depend on where the package is installed), a local model directory (made
    absolute) or, when the hub is reachable, a hub name."""
    if model in (None, DEFAULT_MODEL):
        model_path(DEFAULT_MODEL)
        return DEFAULT_MODEL
    if not isinstance(model, str) or not model:
        raise HarnessError(f"the model must be a directory or a hub name, got {model!r}")
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarnessError(f"model directory {path} has no config.json: not a Hugging Face model")
        return str(path.resolve())
    if reason := hub_offline_reason():
        raise HarnessError(f"model {model!r} is not a local directory and the hub is offline ({reason})")
    return model


def _sample(path: Path) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= CHUNK * CHUNKS:
            return f.read()
        parts = [size.to_bytes(8, "little")]
        for i in range(CHUNKS):
            f.seek(i * (size - CHUNK) // (CHUNKS - 1))
            parts.append(f.read(CHUNK))
    return b"".join(parts)


@lru_cache(maxsize=64)
def files_identity(files: tuple[Path, ...], stamp: tuple) -> str:
    """A hash of the files' names and contents (sampled beyond 64 MiB); ``stamp`` (their sizes and
    modification times) keys the cache, so each is read once while it stays the same."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + _sample(path))
    return digest.hexdigest()[:16]


def model_identity(model: str) -> str:
    """A hash of a local model's config.json and weights ('' for a hub name: its files are not
    here). Cached per file sizes and modification times, so a sweep hashes each model once."""
    folder = Path(model_path(model))
    if not folder.is_dir():
        return ""
    files = (folder / "config.json", *sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")))
    return files_identity(files, tuple((p.name, file_stamp(p)) for p in sorted(folder.iterdir()) if p.is_file()))


def file_stamp(path: Path) -> tuple | None:
    """What tells a changed file from the one cached: its size and modification time."""
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


@lru_cache(maxsize=64)
def _config(path: str, stamp: tuple | None):
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a broken file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(f"model {path}: its config.json cannot be read: {first}") from None


@lru_cache(maxsize=64)
def _has_vocabulary(path: str, stamp: int) -> bool:
    """Whether the directory's tokenizer knows words: without tokenizer files transformers builds
    one of special tokens only, which reads every word as unknown (and the runs still finish)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - loading the run's tokenizer then says what is wrong
        return True
    return len(tokenizer) > len(set(tokenizer.all_special_tokens))


def _check_header(weights: Path) -> None:
    """A safetensors file whose header cannot be read (cut short, overwritten) fails here, not in
    the run, where it would be recorded as a failed attempt. Only the header is read."""
    try:
        with safe_open(weights, "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise HarnessError(f"model weights {weights} cannot be read: {e}") from None


def check_model(model: str, *, objective: str, max_length: int) -> None:
    """Everything about the model that would otherwise fail inside the run."""
    path = model_path(model)
    if Path(path).is_dir() and not any((Path(path) / w).is_file() for w in WEIGHTS):
        raise HarnessError(f"model directory {path} has no weights ({' or '.join(WEIGHTS[::2])})")
    if (Path(path) / "config.json").is_file():  # config.json alone, before transformers or weights
        try:
            check_supported(Path(path) / "config.json")
        except UniPeltError as e:
            raise HarnessError(f"model {path}: {e}") from None
    config = _config(path, file_stamp(Path(path) / "config.json"))
    if config.model_type not in supported():
        raise HarnessError(
            f"model {path} is a {config.model_type!r} model, which unipelt does not support; "
            f"supported: {', '.join(supported())}"
        )
    if (Path(path) / WEIGHTS[0]).is_file():
        _check_header(Path(path) / WEIGHTS[0])
    if Path(path).is_dir() and not _has_vocabulary(path, Path(path).stat().st_mtime_ns):  # files added: new mtime
        raise HarnessError(
            f"model directory {path} has no tokenizer files: transformers would read every word as unknown; "
            "save the tokenizer beside the model (tokenizer.save_pretrained)"
        )
    limit = position_limit(config)
    if limit and max_length > limit:
        raise HarnessError(f"--max-length {max_length} is above what model {path} can take ({limit} positions)")
    if objective == "generate":
        check_can_generate(path, config)
