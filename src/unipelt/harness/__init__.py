"""The experiment harness behind ``unipelt train|sweep|report|demo``: GLUE data and splits
(UniPELT §4.1), one run with HF Trainer, resumable sweeps, an SQLite results store and the
paper's tables and plots. See docs/harness.md."""

from . import report, runner
from .data import Splits, load_splits
from .errors import HarnessError
from .grid import Grid, make_grid
from .record import EpochLog, RunRecord
from .spec import RunSpec, make_spec
from .store import Store
from .sweep import SweepSummary, run_sweep
from .tasks import TASKS, Task, get_task

__all__ = [
    "report",
    "runner",
    "Splits",
    "load_splits",
    "HarnessError",
    "Grid",
    "make_grid",
    "EpochLog",
    "RunRecord",
    "RunSpec",
    "make_spec",
    "Store",
    "SweepSummary",
    "run_sweep",
    "TASKS",
    "Task",
    "get_task",
]
