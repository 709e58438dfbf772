"""Output paths checked before any work: a store, a checkpoint directory or a report directory
that cannot be written is reported in a second, not after hours of training. Nothing is
created here."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HarnessError

_WRITE = os.W_OK | os.X_OK  # a directory's entries can be created only with both


def _creatable(path: Path, what: str) -> None:
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise HarnessError(f"{what} {path} cannot be created: {ancestor} is a file, not a directory")
    if not os.access(ancestor, _WRITE):
        raise HarnessError(f"{what} {path} cannot be created: directory {ancestor} is not writable")


def check_store_path(path: Path, *, exists: bool, writable: bool) -> None:
    """A results store that can be opened: an existing file when ``exists``, and one this process
    can write (with its directory, where SQLite keeps its journal) when ``writable``."""
    if path.is_dir():
        raise HarnessError(f"results store {path} is a directory; give a file, e.g. {path / 'unipelt.sqlite'}")
    if not path.exists():
        if exists:
            raise HarnessError(f"results store {path} does not exist")
        _creatable(path, "results store")
    elif writable and not (os.access(path, os.R_OK | os.W_OK) and os.access(path.absolute().parent, _WRITE)):
        raise HarnessError(f"results store {path} is not writable (the file and its directory must be)")
    elif not os.access(path, os.R_OK):
        raise HarnessError(f"results store {path} is not readable")


def inputs_of(specs) -> dict[Path, str]:
    """The directories runs read (their models, their GLUE data): an output must not be written
    into one. A model directory's identity is a hash of its files: a checkpoint saved inside it
    would change every later run's key."""
    from ..offline import DEFAULT_MODEL, model_path

    found: dict[Path, str] = {}
    for spec in specs:
        model = model_path(DEFAULT_MODEL) if spec.model == DEFAULT_MODEL else spec.model
        glue = spec.glue_dir or os.environ.get("GLUE_DIR")
        for flag, where in (("--model", model), ("--glue-dir", glue)):
            if where and Path(where).expanduser().is_dir():
                found.setdefault(Path(where).expanduser().resolve(), flag)
    return found


def check_output_dir(
    path: str | Path, what: str, inputs: dict[Path, str] | None = None, store: str | Path | None = None
) -> None:
    """A directory that exists and is writable, or that can be created, outside ``inputs``, and
    not where the results ``store`` (a file, perhaps not yet created) will be."""
    if not str(path).strip():  # Path("") is the current directory: an unset variable, not a choice
        raise HarnessError(f"{what} is empty: give a directory")
    path = Path(path)
    if store is not None and path.expanduser().resolve() == Path(store).expanduser().resolve():
        raise HarnessError(f"{what} {path} is the results store's path: give them different paths")
    for source, flag in (inputs or {}).items():
        if path.expanduser().resolve().is_relative_to(source):
            raise HarnessError(f"{what} {path} is inside the {flag} directory {source}: write it elsewhere")
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{what} {path} is a file, not a directory")
    if not path.exists():
        _creatable(path, what)
    elif not os.access(path, _WRITE):
        raise HarnessError(f"{what} {path} is not writable")
