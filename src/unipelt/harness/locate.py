"""Where the GLUE TSVs are: ``--glue-dir``, then ``$GLUE_DIR``, then the copy embedded in the
package (SST-2 only: what ``unipelt demo`` needs), then the hub through ``datasets``. Every place
tried is kept so the error for missing data can name each one once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..offline import switched_on
from .errors import HarnessError

# gzip'd byte copies of GLUE's files; glue/SOURCES.md says where they come from
EMBEDDED = Path(__file__).resolve().parent / "glue"


@dataclass(frozen=True)
class GlueSource:
    path: Path | None  # None: no directory found, the hub is the fallback
    how: str  # e.g. "from --glue-dir", for error messages
    looked: tuple[str, ...]


def _explicit(value: str | Path, how: str) -> GlueSource:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise HarnessError(f"GLUE directory {path} ({how}) {'is a file' if path.exists() else 'does not exist'}")
    return GlueSource(path.resolve(), how, (str(path),))


def embedded_tasks() -> tuple[str, ...]:
    """The GLUE folders (``SST-2``, ...) the package carries."""
    return tuple(sorted(p.name for p in EMBEDDED.iterdir() if p.is_dir())) if EMBEDDED.is_dir() else ()


def locate_glue(glue_dir: str | Path | None = None, directory: str | None = None) -> GlueSource:
    """The first GLUE directory found for the task whose GLUE folder is ``directory``; an explicit
    one that does not exist is an error, not a reason to silently use another copy."""
    if glue_dir is not None and not str(glue_dir).strip():  # Path("") would be the current directory
        raise HarnessError("--glue-dir (or the grid's glue_dir) is empty: give a GLUE directory, or leave it out")
    if glue_dir:
        return _explicit(glue_dir, "from --glue-dir")
    if os.environ.get("GLUE_DIR"):
        return _explicit(os.environ["GLUE_DIR"], "from $GLUE_DIR")
    carried = embedded_tasks()
    looked = (
        "--glue-dir (not given)",
        "$GLUE_DIR (not set)",
        f"the copy embedded in unipelt ({', '.join(carried) or 'none'} only)",
    )
    if directory in carried:
        return GlueSource(EMBEDDED, "the copy embedded in unipelt", looked)
    return GlueSource(None, "", looked)


def hub_offline_reason() -> str | None:
    """Why the hub must not be used, or None. Only the standard HF switches are read: probing
    the network would make every missing-data error slow."""
    return switched_on("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
