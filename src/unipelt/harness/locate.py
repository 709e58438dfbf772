"""Where the GLUE TSVs are: ``--glue-dir``, then ``GLUE_DIR``, then ``../shared/data/glue``
relative to the working directory and to this repository's checkout. Every place tried is kept
so the error for missing data can name them all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError

RELATIVE = Path("..") / "shared" / "data" / "glue"
_REPO = Path(__file__).resolve().parents[3]  # src/unipelt/harness/locate.py -> repository root


@dataclass(frozen=True)
class GlueSource:
    path: Path | None  # None: no directory found, the hub is the fallback
    how: str  # e.g. "from --glue-dir", for error messages
    looked: tuple[str, ...]


def _explicit(value: str | Path, how: str) -> GlueSource:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise HarnessError(f"GLUE directory {path} ({how}) does not exist")
    return GlueSource(path.resolve(), how, (str(path),))


def locate_glue(glue_dir: str | Path | None = None) -> GlueSource:
    """The first GLUE directory found; an explicit one that does not exist is an error, not a
    reason to silently use another copy."""
    if glue_dir:
        return _explicit(glue_dir, "from --glue-dir")
    if os.environ.get("GLUE_DIR"):
        return _explicit(os.environ["GLUE_DIR"], "from $GLUE_DIR")
    candidates = [(Path.cwd() / RELATIVE, "relative to the working directory")]
    if (_REPO / "pyproject.toml").is_file():  # installed from a checkout, not from a wheel
        candidates.append((_REPO / RELATIVE, "relative to the unipelt checkout"))
    looked = tuple(f"{p.resolve()} ({how})" for p, how in candidates) + (
        "--glue-dir (not given)",
        "$GLUE_DIR (not set)",
    )
    for path, how in candidates:
        if path.is_dir():
            return GlueSource(path.resolve(), how, looked)
    return GlueSource(None, "", looked)


def hub_offline_reason() -> str | None:
    """Why the hub must not be used, or None. Only the standard HF switches are read: probing
    the network would make every missing-data error slow."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None
