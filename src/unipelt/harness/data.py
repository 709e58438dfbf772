"""GLUE data for one run: read the TSVs (or the hub copy), then split as UniPELT §4.1 does.

Split rule (SPEC §4): shuffle the GLUE train set with the data seed
(``numpy.random.default_rng(seed).permutation``), take the first K rows as train and the next
``dev_size`` (1,000) as dev for checkpoint selection; the GLUE dev set is the test set.
K="all" (the high-resource setting) is our reading of "whole train set, best dev score": train on
every row except the ``dev_size`` dev rows, so checkpoint selection never sees training data.
QQP has no GLUE dev file here: its test split is the last 1,000 rows of QQP/train.tsv, which
SOURCES.md describes as a held-out sample, and those rows are removed from the train pool.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import HarnessError
from .locate import EMBEDDED, GlueSource, hub_offline_reason, locate_glue
from .models import file_stamp, files_identity
from .tasks import Task

log = logging.getLogger(__name__)

DEV_SIZE = 1000
CARVED_TEST_ROWS = 1000  # SOURCES.md: "If you need a held-out slice from train, use the last 1,000 rows."
COLUMNS = ("a", "b", "label")
# files_identity of each task's train and test files (the ones _from_directory reads) in the GLUE
# copy every stored run read (../shared/data/glue, glue/SOURCES.md): runs on those files keep the
# keys they always had
KNOWN_DATA = {
    "cola": "42f3585ce2a23fcc",
    "mnli": "c24041f42d275a47",
    "mrpc": "218e7011ee184870",
    "qnli": "738cadda57b05904",
    "qqp": "34945a8bd462e21b",
    "rte": "7218ae06c0abacd8",
    "sst2": "6b7b98bfac2ec2c7",
    "stsb": "c49fbebf1559b7ee",
}


def data_identity(task: Task, glue_dir: str | Path | None = None) -> str:
    """A hash of the task's GLUE files where they are not the copy of KNOWN_DATA ('' for that copy
    and the one embedded in the package; "hub" for the hub's, whose MNLI, QNLI and QQP are the full
    sets where the project holds samples): a run on other files is a new run in the store, not
    "already finished" (as models.model_identity does for the model)."""
    try:
        source = locate_glue(glue_dir, task.directory)
    except HarnessError:  # no such directory: loading the data says so, where the run needs it
        return ""
    if source.path is None:
        return "hub"
    if source.path == EMBEDDED:
        return ""
    folder = source.path / task.directory
    files = tuple(p for p in (_file(folder, "train.tsv"), _test_file(task, folder)) if p is not None)
    digest = files_identity(files, tuple((p.name, file_stamp(p)) for p in files)) if files else ""
    return "" if digest == KNOWN_DATA.get(task.name) else digest


@dataclass(frozen=True)
class Splits:
    """The three splits of one run; each frame has columns ``a``, ``b`` (None for single
    sentences) and ``label`` (class id, or float score for regression)."""

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    test_source: str  # where the test rows came from, recorded with the run


# ASCII digits only (str.isdigit() also takes '²', which int() refuses), and few enough for int()
DIGITS = re.compile(r"[0-9]{1,30}")


def parse_k(value: str | int) -> int | str:
    """``"all"`` or a positive int: the train-set sizes the protocol allows."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    # only whole numbers: int(1.5) would quietly train on 1 example, int(True) on one too
    whole = type(value) is int or (isinstance(value, str) and DIGITS.fullmatch(value.strip()))
    k = int(value) if whole else 0
    if k <= 0:
        raise HarnessError(f"K must be a positive integer or 'all', got {value!r}")
    return k


def _column(header: list[str] | None, spec: str | int, path: Path) -> int:
    if isinstance(spec, int) or spec is None:
        return spec
    try:
        return header.index(spec)
    except ValueError:
        raise HarnessError(f"{path}: header has no column {spec!r} (columns: {', '.join(header)})") from None


def _label(task: Task, raw: str, path: Path, line: int) -> int | float:
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):  # float() also reads 'nan' and 'inf', on which every run would fail
            raise HarnessError(f"{path}:{line}: score {raw!r} is not a number")
        return score
    try:
        return task.labels.index(raw)
    except ValueError:
        raise HarnessError(f"{path}:{line}: label {raw!r} is not one of {list(task.labels)}") from None


def read_tsv(path: Path, task: Task) -> pd.DataFrame:
    """Rows of a GLUE TSV as (a, b, label); every row must have the header's number of fields.

    The csv module (not pandas) so a malformed row is reported with its line number; quoting is
    off because GLUE text contains bare quotes; utf-8-sig drops MRPC's byte-order mark. A
    ``.tsv.gz`` (the embedded copy) is read the same way.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            return pd.DataFrame(
                _rows(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), task, path), columns=COLUMNS
            )
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason})") from None
    except (csv.Error, gzip.BadGzipFile, EOFError) as e:  # e.g. a field over the csv module's size limit
        raise HarnessError(f"{path}: not a readable TSV file: {e}") from None


def _rows(reader, task: Task, path: Path) -> list[tuple]:
    header = next(reader, None) if task.header else None
    if task.header and header is None:
        raise HarnessError(f"{path}: file is empty, expected a header line")
    width = len(header) if header else None
    cols = [_column(header, c, path) for c in (task.text_a, task.text_b, task.label)]
    rows, blank = [], None
    for row in reader:
        if not row:  # blank lines may end a file (an editor's habit), not sit between rows
            blank = blank or reader.line_num
            continue
        if blank:
            raise HarnessError(f"{path}:{blank}: blank line between rows")
        width = width or len(row)  # header-less file: the first row sets the width
        need = max(width, max(c for c in cols if c is not None) + 1)
        if len(row) != width or len(row) < need:
            raise HarnessError(
                f"{path}:{reader.line_num}: malformed row: expected {need} tab-separated fields, found {len(row)}"
            )
        a, b, raw = (row[c] if c is not None else None for c in cols)
        rows.append((a, b, _label(task, raw, path, reader.line_num)))
    return rows


def _file(folder: Path, name: str) -> Path | None:
    """``name`` in ``folder``, or its gzip'd copy (how the embedded data is stored)."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _test_file(task: Task, folder: Path) -> Path | None:
    return next(filter(None, (_file(folder, n) for n in task.test_files)), None)


def _from_directory(task: Task, source: GlueSource) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    folder = source.path / task.directory
    train_path = _file(folder, "train.tsv")
    if train_path is None:
        raise HarnessError(f"missing GLUE file {folder / 'train.tsv'} (GLUE dir {source.path}, {source.how})")
    pool = read_tsv(train_path, task)
    test_path = _test_file(task, folder)
    if test_path is not None:
        test = read_tsv(test_path, task)
        if len(test) == 0:  # else every run would train, then fail on an empty evaluation
            raise HarnessError(f"{test_path} has no rows: the test split needs at least one")
        return pool, test, f"GLUE dev ({task.directory}/{test_path.name.removesuffix('.gz')})"
    if not task.carve_test:
        wanted = " or ".join(str(folder / n) for n in task.test_files)
        raise HarnessError(f"missing GLUE file {wanted} (GLUE dir {source.path}, {source.how})")
    if len(pool) <= CARVED_TEST_ROWS:
        raise HarnessError(f"{train_path} has {len(pool)} rows: too few to carve a {CARVED_TEST_ROWS}-row test split")
    carved = (
        f"carved: last {CARVED_TEST_ROWS} rows of {task.directory}/train.tsv "
        f"(no GLUE dev file here), excluded from the train pool"
    )
    return pool.iloc[:-CARVED_TEST_ROWS], pool.iloc[-CARVED_TEST_ROWS:], carved


def _from_hub(task: Task, source: GlueSource) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Fallback when no GLUE directory exists: ``nyu-mll/glue`` through ``datasets``."""
    looked = "; ".join(source.looked)
    if reason := hub_offline_reason():
        raise HarnessError(
            f"no GLUE data found for {task.name}; looked in: {looked}; the hub (not used: {reason}). "
            f"Pass --glue-dir DIR or set GLUE_DIR to a folder of GLUE's TSVs ({task.directory}/train.tsv, "
            f"{task.directory}/{task.test_files[0]}, as GLUE's download_glue_data.py writes them), "
            f"or unset {reason.split('=')[0]} to load nyu-mll/glue through datasets"
        )
    import datasets  # imported here: only this fallback needs it

    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name)
    except Exception as e:  # any failure to reach or read the hub is the same user problem
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(
            f"no GLUE data found for {task.name}; looked in: {looked}; loading nyu-mll/glue/{task.name} "
            f"from the hub failed: {first}. Pass --glue-dir DIR or set GLUE_DIR to a folder of GLUE's TSVs"
        ) from None
    test_split = "validation_matched" if task.name == "mnli" else "validation"

    def frame(split) -> pd.DataFrame:
        cols = task.hub_columns
        b = split[cols[1]] if len(cols) > 1 else [None] * len(split)
        return pd.DataFrame({"a": split[cols[0]], "b": b, "label": split["label"]})

    return frame(ds["train"]), frame(ds[test_split]), f"GLUE dev (hub nyu-mll/glue {task.name}/{test_split})"


def split_pool(
    pool: pd.DataFrame, k: int | str, seed: int, dev_size: int, where: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """First K shuffled rows = train, next ``dev_size`` = dev (see the module docstring)."""
    n = len(pool)
    if n <= dev_size:
        raise HarnessError(f"{where} has {n} training rows: not enough for a {dev_size}-row dev split")
    size = n - dev_size if k == "all" else k
    if size + dev_size > n:
        raise HarnessError(
            f"K={k} is too large for {where}: it has {n} training rows, so K + the "
            f"{dev_size} dev rows allows at most K={n - dev_size}"
        )
    order = np.random.default_rng(seed).permutation(n)
    train = pool.iloc[order[:size]].reset_index(drop=True)
    dev = pool.iloc[order[size : size + dev_size]].reset_index(drop=True)
    return train, dev


def load_splits(
    task: Task,
    k: int | str,
    seed: int,
    *,
    dev_size: int = DEV_SIZE,
    glue_dir: str | Path | None = None,
    announce: bool = True,
) -> Splits:
    """Train/dev/test for ``task`` at train size ``k`` and data seed ``seed``; ``announce``: log
    their sizes (a check before any run does not: an error it finds is then the only line)."""
    source = locate_glue(glue_dir, task.directory)
    if source.path is not None:
        pool, test, test_source = _from_directory(task, source)
    else:
        pool, test, test_source = _from_hub(task, source)
    train, dev = split_pool(pool, k, seed, dev_size, task.name)
    sizes = (task.name, len(train), len(dev), len(test), test_source)
    log.log(logging.INFO if announce else logging.DEBUG, "%s: %d train / %d dev / %d test rows; test = %s", *sizes)
    return Splits(train=train, dev=dev, test=test.reset_index(drop=True), test_source=test_source)
