"""The SQLite results store: schema versioning, atomic writes, one row per run."""

from __future__ import annotations

import sqlite3

import pytest

from unipelt import UniPeltError
from unipelt.harness.record import EpochLog, RunRecord
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import SCHEMA_VERSION, Store


def spec(**changes) -> RunSpec:
    fields = dict(task="rte", method="lora", config='{"methods": []}', model="/m", k=100, lr=5e-4)
    return RunSpec(**{**fields, **changes})


def record(**changes) -> RunRecord:
    fields = dict(
        spec=spec(),
        status="finished",
        metric="accuracy",
        epochs=(EpochLog(epoch=1, train_loss=0.7, dev_metric=0.5), EpochLog(epoch=2, train_loss=0.6, dev_metric=0.6)),
        best_epoch=2,
        dev_metric=0.6,
        test_metric=0.55,
        params={"total": 10, "head": 2},
        train_s_per_step=0.1,
        infer_ex_per_s=100.0,
        gates={0: {"adapter": 0.4, "prefix": 0.6}},
        versions={"unipelt": "0.1.0"},
        started_at="t0",
        finished_at="t1",
    )
    return RunRecord(**{**fields, **changes})


def test_round_trip(tmp_path):
    with Store(tmp_path / "runs" / "s.sqlite") as store:  # parent folders are created
        store.write(record())
        runs = store.runs()
        assert runs.loc[0, "test_metric"] == 0.55 and runs.loc[0, "params"] == {"total": 10, "head": 2}
        assert runs.loc[0, "spec"]["lr"] == 5e-4
        assert store.finished_keys() == {spec().key}
        assert store.epochs().dev_metric.tolist() == [0.5, 0.6]
        assert store.gates().set_index("submodule").value.to_dict() == {"adapter": 0.4, "prefix": 0.6}


def test_failed_run_is_replaced_by_its_retry(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.write(RunRecord(spec=spec(), status="failed", reason="boom", metric="accuracy"))
        assert store.finished_keys() == set()
        store.write(record())
        runs = store.runs()
        assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and runs.loc[0, "attempts"] == 2


def test_a_crash_inside_the_write_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.sqlite")
    bad = record(gates={0: {"adapter": None}})  # NOT NULL violation on the last insert
    with pytest.raises(sqlite3.IntegrityError):
        store.write(bad)
    assert store.runs().empty and store.epochs().empty


def test_newer_schema_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(UniPeltError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this unipelt reads"):
        Store(path)
    assert path.read_bytes() == before


def test_not_a_store(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("hello, not a database " * 100)
    with pytest.raises(UniPeltError, match="is not a unipelt results store"):
        Store(junk)
    with pytest.raises(UniPeltError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)


def _schema_1_store(path) -> None:
    """A store as unipelt wrote it before attempts and claims (schema version 1)."""
    from unipelt.harness.store import RUNS

    db = sqlite3.connect(path)
    db.executescript(RUNS)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.commit()
    db.close()
    with sqlite3.connect(path) as db:  # one finished run, written by the v1 code path's columns
        row = Store._row(record(), attempt=3)
        db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    db.close()


def test_a_schema_1_store_is_read_as_it_is_and_migrated_on_write(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_1_store(path)
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        assert store.version == 1 and store.runs().loc[0, "test_metric"] == 0.55
        assert store.attempts().attempt.tolist() == [3]
    assert path.read_bytes() == before  # reading never migrates
    with Store(path) as store:
        assert store.version == SCHEMA_VERSION == 2
        assert store.attempts().attempt.tolist() == [3]  # the run's one known attempt becomes its history
        assert store.write(RunRecord(spec=spec(), status="failed", reason="boom", metric="accuracy")).kept_finished
        assert store.attempts().attempt.tolist() == [3, 4] and store.runs().loc[0, "status"] == "finished"


@pytest.mark.parametrize("name", ["unipelt.sqlite", "experiments.sqlite"])
def test_the_committed_stores_still_report_and_stay_unchanged(name):
    from pathlib import Path

    from unipelt.harness import report

    path = Path(__file__).resolve().parents[2] / "docs" / "results" / name
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        built = report.build(store)
    assert any(t.title.startswith("Table 1") for t in built.tables)
    assert path.read_bytes() == before
