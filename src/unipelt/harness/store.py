"""The results store: one SQLite file (stdlib ``sqlite3``, WAL mode), one row per run.

``runs`` holds each run's result: its latest finished attempt, or, while none finished, its
latest failed one; a failed attempt never replaces a finished result. ``attempts`` keeps every
attempt. An attempt is written once, at its end, in a single transaction (its row, its epochs,
its gate values), so a crash leaves either the whole attempt or nothing.

``leases`` lets several sweeps share one store: a process claims a run before training it and
keeps the claim alive with a heartbeat; a claim whose heartbeat stopped (its owner crashed)
expires. The ``schema_version`` table lets a newer unipelt migrate an older file and makes an
older unipelt refuse a newer one instead of misreading it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from .errors import HarnessError
from .paths import check_store_path
from .record import RunRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_STORE = Path("runs") / "unipelt.sqlite"
BUSY_TIMEOUT = 60.0  # seconds a writer waits for another's transaction
LEASE_TTL = 300.0  # a claim without a heartbeat for this long belongs to a dead process
HEARTBEAT = 30.0

RUNS = """
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
# Schema 2. Not tied to runs by a foreign key: the runs row of a run is replaced, its history stays.
ATTEMPTS_AND_LEASES = """
CREATE TABLE attempts (
    run_key TEXT NOT NULL, attempt INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', test_metric REAL,
    host TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (run_key, attempt)
);
CREATE TABLE leases (
    run_key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL  -- time.time() of the owner's last sign of life
);
"""
# From schema 1: the one attempt each run row stands for becomes its history.
MIGRATE_1 = (
    ATTEMPTS_AND_LEASES
    + """
INSERT INTO attempts SELECT run_key, attempts, status, reason, test_metric, host, started_at, finished_at FROM runs;
"""
)


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def _json(value) -> str:
    """Strict JSON: a non-finite float (a diverged loss, an older store's lr of inf) is stored as a string."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v

    return json.dumps(clean(value), sort_keys=True, allow_nan=False)


def _cause(e: sqlite3.Error) -> str:
    """What an SQLite error means, in words: each cause its own message."""
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"another process holds its lock and kept it past the wait ({e})"
    if name.startswith("SQLITE_FULL"):
        return f"the disk is full ({e})"
    if name.startswith("SQLITE_IOERR"):
        return f"reading or writing the file failed: a full disk or a file size limit? ({e})"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
        return f"the file or its directory cannot be written, or it cannot be opened ({e})"
    return str(e)


def check_store(path: Path) -> None:
    """``path`` checked as ``Store`` would open it for writing, the file there (if not empty)
    opened read-only: a file that is no unipelt store, or of a newer schema, is refused before any
    run starts and the data are read, and changes nothing."""
    check_store_path(path, exists=False, writable=True)
    if path.is_file() and path.stat().st_size:
        Store(path, readonly=True).close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """Whether this process may train a run now: ``status`` is 'claimed', 'finished' (the store
    has its result) or 'busy' (a live process holds it: ``owner``, heartbeat ``age`` seconds ago)."""

    status: str
    owner: str = ""
    age: float = 0.0


@dataclass(frozen=True)
class Written:
    attempt: int  # this attempt's number
    kept_finished: bool  # it failed, and the run's earlier finished result stays its result


class _Heartbeat(threading.Thread):
    """Refreshes this process's claims on its own connection (sqlite3 connections are not
    shared between threads), so a long run keeps its claim."""

    def __init__(self, path: Path, owner: str):
        super().__init__(daemon=True, name="unipelt-heartbeat")
        self.path, self.owner, self.stopped = path, owner, threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            while not self.stopped.wait(HEARTBEAT):
                try:
                    db.execute("UPDATE leases SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner))
                except sqlite3.Error as e:  # a missed beat is survivable: the TTL is ten of them
                    log.warning("could not refresh run claims in %s: %s", self.path, e)
        finally:
            db.close()


class Store:
    """Open (or, with ``create``, make) the store at ``path``; ``readonly`` never writes the file
    (a store from an older schema is read as it is)."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, create: bool = True, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        self.owner = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heartbeat: _Heartbeat | None = None
        check_store_path(self.path, exists=readonly or not create, writable=not readonly)
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._connect()
            if readonly:
                self._open_read_only_mount()
            else:
                self._open()
        except (sqlite3.Error, HarnessError) as e:
            if hasattr(self, "db"):
                self.db.close()
            if created:  # a full disk must not leave a 0-byte store behind
                self._remove_empty()
            if not isinstance(e, sqlite3.Error):
                raise
            if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise HarnessError(f"{self.path} is not a unipelt results store (SQLite): {e}") from None
            if getattr(e, "sqlite_errorname", "") == "SQLITE_CORRUPT":
                raise HarnessError(f"results store {self.path} is damaged ({e}); the file was left unchanged") from None
            raise HarnessError(f"cannot open results store {self.path}: {_cause(e)}") from None

    def _open_read_only_mount(self) -> None:
        """Read a store in a directory this process cannot write (a read-only mount). SQLite reads
        a WAL-mode file through a shared-memory file beside it, which cannot be created there; a
        cleanly closed store has nothing in its WAL, so it is read as an immutable file instead."""
        try:
            self._open()
        except sqlite3.OperationalError as e:
            wal = self.path.with_name(self.path.name + "-wal")
            if getattr(e, "sqlite_errorname", "") != "SQLITE_CANTOPEN" or os.access(self.path.parent, os.W_OK):
                raise
            if wal.exists() and wal.stat().st_size > 0:
                raise HarnessError(
                    f"results store {self.path} is on a read-only file system and was not closed "
                    f"cleanly ({wal.name} holds writes not yet in it): copy the store with its "
                    f"{wal.name} file to a writable directory and report from there"
                ) from None
            self.db.close()
            uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._open()

    def _remove_empty(self) -> None:
        """Remove the store this process began to create, if nothing was written to it."""
        try:
            if self.path.stat().st_size == 0:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remove the empty results store %s: %s", self.path, e)

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: every write below opens its own explicit transaction
        if self.readonly:
            return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _open(self) -> None:
        if not self._tables() and not self.readonly:
            with self.transaction():
                if not self._tables():  # re-checked under the write lock: another process may have won
                    for statement in _statements(RUNS + ATTEMPTS_AND_LEASES):
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        self.version = self._version()
        if "runs" not in self._tables():
            raise HarnessError(f"{self.path} is not a unipelt results store (no runs table)")
        # a damaged page would end a sweep hours later, or be rewritten in WAL mode below: look first
        if (check := self.db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            raise HarnessError(f"results store {self.path} is damaged ({check}); the file was left unchanged")
        if not self.readonly:
            if self.version < SCHEMA_VERSION:
                self._migrate()
            # readers never block the writer, nor it them; set only on a checked store: it changes the file
            self.db.execute("PRAGMA journal_mode = WAL")

    def _version(self) -> int:
        if "schema_version" not in self._tables():
            raise HarnessError(f"{self.path} is not a unipelt results store (no schema_version table)")
        version = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if not isinstance(version, int) or version < 1:
            raise HarnessError(f"{self.path} is not a unipelt results store (schema version {version!r})")
        if version > SCHEMA_VERSION:
            raise HarnessError(
                f"results store {self.path} has schema version {version}, newer than this unipelt "
                f"reads ({SCHEMA_VERSION}); upgrade unipelt to use it (the file was left unchanged)"
            )
        return version

    def _migrate(self) -> None:
        with self.transaction() as db:
            if db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _statements(MIGRATE_1):
                    db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        log.info("migrated results store %s to schema version %d", self.path, SCHEMA_VERSION)
        self.version = SCHEMA_VERSION

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two sweeps writing at once wait, not fail
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise HarnessError(f"cannot write to results store {self.path}: {_cause(e)}") from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as e:
            if self.db.in_transaction:  # SQLite may have rolled back already (a full disk)
                self.db.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):  # a full disk, an I/O error: nothing was written
                raise HarnessError(f"cannot write to results store {self.path}: {_cause(e)}") from None
            raise

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stopped.set()
            self._heartbeat.join()
        if not self.readonly:
            try:  # an interrupted sweep's claims: free for the next one at once
                self.db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
            except sqlite3.Error as e:
                log.warning("could not release run claims in %s: %s", self.path, e)
        self.db.close()
        if self.readonly:
            self._remove_wal_files()

    def _remove_wal_files(self) -> None:
        """SQLite removes a store's -wal and -shm files when the last connection closes, but not
        when that connection is read-only (``unipelt report``): a read-write connection that only
        reads removes them. Only with an empty WAL, so the store file itself is never written; if
        another process still has the store open, the files stay (they are its)."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.exists() and wal.stat().st_size == 0 and os.access(self.path.parent, os.W_OK | os.X_OK):
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
                try:
                    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                finally:
                    db.close()
        except (OSError, sqlite3.Error) as e:  # tidying only: the report is already read
            log.debug("left %s beside %s: %s", wal.name, self.path, e)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- claims
    def _holder(self, db: sqlite3.Connection, key: str) -> Claim | None:
        """The live claim another process holds on ``key``, if any."""
        row = db.execute("SELECT owner, host, pid, heartbeat FROM leases WHERE run_key = ?", (key,)).fetchone()
        if row is None or row[0] == self.owner:
            return None
        owner, host, pid, beat = row
        age = time.time() - beat
        # on this host a dead owner is known at once; elsewhere only its silence says so
        if age > LEASE_TTL or (host == platform.node() and not _pid_alive(pid)):
            return None
        return Claim("busy", owner, age)

    def claim(self, key: str, *, force: bool = False, older: tuple[str, ...] = ()) -> Claim:
        """Claim run ``key`` for this process unless it is finished, under it or under one of its
        ``older`` keys (``RunSpec.keys``; ignored with ``force``), or a live process holds it."""
        keys = (key, *older)
        with self.transaction() as db:
            finished = f"SELECT 1 FROM runs WHERE run_key IN ({', '.join('?' * len(keys))}) AND status = 'finished'"
            if not force and db.execute(finished, keys).fetchone():
                return Claim("finished")
            if (holder := self._holder(db, key)) is not None:
                return holder
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                (key, self.owner, platform.node(), os.getpid(), time.time()),
            )
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self.owner)
            self._heartbeat.start()
        return Claim("claimed")

    def release(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE run_key = ? AND owner = ?", (key, self.owner))

    # ---- writing
    @staticmethod
    def _row(record: RunRecord, attempt: int) -> dict:
        """The run's key, its spec's column fields and whole spec, and every field of the record
        but those kept elsewhere (epochs, gates) or not at all (save_error); dicts as JSON."""
        spec, elsewhere = record.spec, ("spec", "epochs", "gates", "save_error")
        values = {f.name: getattr(record, f.name) for f in fields(RunRecord) if f.name not in elsewhere}
        values = {name: _json(v) if isinstance(v, dict) else v for name, v in values.items()}
        return dict(run_key=spec.key, **spec.columns(), spec=_json(spec.to_dict()), **values, attempts=attempt)

    def write(self, record: RunRecord) -> Written:
        """Record an attempt atomically and release this process's claim on the run. It becomes
        the run's result unless it failed and the run has a finished result."""
        key = record.spec.key
        with self.transaction() as db:
            attempt = (
                1 + db.execute("SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE run_key = ?", (key,)).fetchone()[0]
            )
            db.execute(
                "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    attempt,
                    record.status,
                    record.reason,
                    record.test_metric,
                    record.host,
                    record.started_at,
                    record.finished_at,
                ),
            )
            current = db.execute("SELECT status FROM runs WHERE run_key = ?", (key,)).fetchone()
            keep = record.status == "failed" and current is not None and current[0] == "finished"
            if keep:
                db.execute("UPDATE runs SET attempts = ? WHERE run_key = ?", (attempt, key))
            else:
                self._replace(db, record, attempt)
            db.execute("DELETE FROM leases WHERE run_key = ? AND owner = ?", (key, self.owner))
        return Written(attempt, keep)

    def _replace(self, db: sqlite3.Connection, record: RunRecord, attempt: int) -> None:
        key, row = record.spec.key, self._row(record, attempt)
        db.execute("DELETE FROM runs WHERE run_key = ?", (key,))  # cascades to epochs, gates
        db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        db.executemany(
            "INSERT INTO epochs VALUES (?, ?, ?, ?)",
            [(key, e.epoch, e.train_loss, e.dev_metric) for e in record.epochs],
        )
        db.executemany(
            "INSERT INTO gates VALUES (?, ?, ?, ?)",
            [(key, layer, name, value) for layer, values in record.gates.items() for name, value in values.items()],
        )

    # ---- reading
    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT run_key FROM runs WHERE status = 'finished'")}

    def result(self, key: str) -> pd.Series | None:
        """The run's current result row, if the store has one."""
        rows = self._runs("WHERE run_key = ?", (key,))
        return None if rows.empty else rows.iloc[0]

    def runs(self, status: str | None = None) -> pd.DataFrame:
        """All runs (or those with ``status``); JSON columns are decoded."""
        return self._runs("WHERE status = ?", (status,)) if status else self._runs()

    def _runs(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        frame = pd.read_sql_query(
            f"SELECT * FROM runs {where} ORDER BY task, method, k, data_seed", self.db, params=args
        )
        for col in ("spec", "sizes", "params", "versions"):
            frame[col] = frame[col].map(json.loads)
            bad = ~frame[col].map(lambda v: isinstance(v, dict))  # only a hand edit writes another
            if bad.any():
                raise ValueError(f"run {frame.run_key[bad].iloc[0][:12]}'s {col} is not a JSON object")
        return frame

    def attempts(self) -> pd.DataFrame:
        """Every attempt of every run, oldest first (a schema-1 store read as it is: one per run)."""
        if self.version < 2:
            return pd.read_sql_query(
                "SELECT run_key, attempts AS attempt, status, reason, test_metric, host, "
                "started_at, finished_at FROM runs ORDER BY run_key",
                self.db,
            )
        return pd.read_sql_query("SELECT * FROM attempts ORDER BY run_key, attempt", self.db)

    def epochs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM epochs ORDER BY run_key, epoch", self.db)

    def gates(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT g.*, r.task, r.method, r.k, r.model FROM gates g JOIN runs r USING (run_key) "
            "WHERE r.status = 'finished' ORDER BY r.method, r.task, g.layer, g.submodule",
            self.db,
        )
