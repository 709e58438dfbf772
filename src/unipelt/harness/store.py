"""The results store: one SQLite file (stdlib ``sqlite3``), one row per run.

A run is written once, at its end, in a single transaction (its row, its epochs, its gate
values), so a crash leaves either the whole run or nothing. Re-running a failed run replaces its
row; a finished run is never written twice. The ``schema_version`` table lets a newer unipelt
migrate an older file and makes an older unipelt refuse a newer one instead of misreading it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .errors import HarnessError
from .record import RunRecord

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("runs") / "unipelt.sqlite"

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
    run_key TEXT PRIMARY KEY,
    task TEXT NOT NULL, method TEXT NOT NULL, k TEXT NOT NULL, data_seed INTEGER NOT NULL,
    model_seed INTEGER NOT NULL, model TEXT NOT NULL, lr REAL NOT NULL,
    spec TEXT NOT NULL,                     -- the RunSpec as JSON, PELT config included
    status TEXT NOT NULL CHECK (status IN ('finished', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    metric TEXT NOT NULL, best_epoch INTEGER, dev_metric REAL, test_metric REAL,
    test_source TEXT NOT NULL DEFAULT '',
    sizes TEXT NOT NULL, params TEXT NOT NULL,  -- JSON: rows per split, count_parameters()
    train_s_per_step REAL, infer_ex_per_s REAL,
    versions TEXT NOT NULL, host TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE epochs (
    run_key TEXT NOT NULL REFERENCES runs (run_key) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, train_loss REAL, dev_metric REAL,
    PRIMARY KEY (run_key, epoch)
);
CREATE TABLE gates (
    run_key TEXT NOT NULL REFERENCES runs (run_key) ON DELETE CASCADE,
    layer INTEGER NOT NULL, submodule TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (run_key, layer, submodule)
);
"""


class Store:
    """Open (or, with ``create``, make) the store at ``path``."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, create: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            if not create:
                raise HarnessError(f"results store {self.path} does not exist")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every write below opens its own explicit transaction
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        try:
            self._check_schema()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise HarnessError(f"{self.path} is not a unipelt results store (SQLite): {e}") from None
        except HarnessError:
            self.db.close()
            raise

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_schema(self) -> None:
        if not self._tables():
            with self.transaction():
                if not self._tables():  # re-checked under the write lock: another process may have won
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        tables = self._tables()
        if "schema_version" not in tables:
            raise HarnessError(f"{self.path} is an SQLite file but not a unipelt results store (no schema_version table)")
        version = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HarnessError(f"results store {self.path} has schema version {version}, newer than this unipelt "
                               f"reads ({SCHEMA_VERSION}); upgrade unipelt to use it (the file was left unchanged)")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two sweeps writing at once wait, not fail
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing
    def write(self, record: RunRecord) -> None:
        """Record a run atomically; a previous (failed) attempt of the same run is replaced."""
        spec = record.spec
        spec_json = json.dumps({**asdict(spec), "config": json.loads(spec.config)}, sort_keys=True)
        row = dict(run_key=spec.key, task=spec.task, method=spec.method, k=str(spec.k), data_seed=spec.data_seed,
                   model_seed=spec.model_seed, model=spec.model, lr=spec.lr, spec=spec_json, status=record.status,
                   reason=record.reason, metric=record.metric, best_epoch=record.best_epoch,
                   dev_metric=record.dev_metric, test_metric=record.test_metric, test_source=record.test_source,
                   sizes=json.dumps(record.sizes), params=json.dumps(record.params),
                   train_s_per_step=record.train_s_per_step, infer_ex_per_s=record.infer_ex_per_s,
                   versions=json.dumps(record.versions), host=record.host, started_at=record.started_at,
                   finished_at=record.finished_at)
        with self.transaction() as db:
            prior = db.execute("SELECT attempts FROM runs WHERE run_key = ?", (spec.key,)).fetchone()
            row["attempts"] = prior[0] + 1 if prior else 1
            db.execute("DELETE FROM runs WHERE run_key = ?", (spec.key,))  # cascades to epochs, gates
            db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            db.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?)",
                           [(spec.key, e.epoch, e.train_loss, e.dev_metric) for e in record.epochs])
            db.executemany("INSERT INTO gates VALUES (?, ?, ?, ?)",
                           [(spec.key, layer, name, value) for layer, values in record.gates.items()
                            for name, value in values.items()])

    # ---- reading
    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT run_key FROM runs WHERE status = 'finished'")}

    def runs(self, status: str | None = None) -> pd.DataFrame:
        """All runs (or those with ``status``); JSON columns are decoded."""
        query, args = "SELECT * FROM runs", ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        frame = pd.read_sql_query(query + " ORDER BY task, method, k, data_seed", self.db, params=args)
        for col in ("spec", "sizes", "params", "versions"):
            frame[col] = frame[col].map(json.loads)
        return frame

    def epochs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM epochs ORDER BY run_key, epoch", self.db)

    def gates(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT g.*, r.task, r.method, r.k, r.model FROM gates g JOIN runs r USING (run_key) "
            "WHERE r.status = 'finished' ORDER BY r.method, r.task, g.layer, g.submodule", self.db)
