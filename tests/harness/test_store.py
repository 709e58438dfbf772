"""The SQLite results store: schema versioning, atomic writes, one row per run."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from unipelt import PeltConfig, UniPeltError, get_preset
from unipelt.harness.record import EpochLog, RunRecord
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import SCHEMA_VERSION, Store


def spec(**changes) -> RunSpec:
    fields = dict(task="rte", method="lora", config=get_preset("lora"), model="/m", k=100, lr=5e-4)
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


RELEASE_1 = Path(__file__).resolve().parents[2] / "docs" / "results" / "release-1"


@pytest.mark.parametrize("name", ["unipelt.sqlite", "experiments.sqlite"])
def test_the_committed_stores_still_report_and_stay_unchanged(name):
    from unipelt.harness import report

    path = RELEASE_1 / name
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        built = report.build(store)
    assert any(t.title.startswith("Table 1") for t in built.tables)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["unipelt.sqlite", "experiments.sqlite"])
def test_stored_specs_key_as_they_were_keyed(name):
    """The committed stores' runs (written before the spec held a typed config, and before
    bf16) rebuild from their stored specs to their stored keys, so resumed sweeps skip them.
    Only runs whose config still has the same JSON: adapter and prefix configs have gained
    fields since (placement, networks), which changes their key whatever derives it."""
    with Store(RELEASE_1 / name, readonly=True) as store:
        runs = store.runs()
    same = runs[[PeltConfig.from_dict(s["config"]).to_dict() == s["config"] for s in runs.spec]]
    specs = [RunSpec.from_dict(s) for s in same.spec]
    assert [s.key for s in specs] == same.run_key.tolist() and set(same.method) >= {"full", "lora"}
    assert all(not s.bf16 for s in specs) and replace(specs[0], bf16=True).key != specs[0].key


def test_stored_columns_are_the_specs_column_fields(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.write(record(spec=spec(bf16=True, k="all")))
        columns = {r[1] for r in store.db.execute("PRAGMA table_info(runs)")}
        row = store.runs().iloc[0]
    assert set(spec().columns()) <= columns and row.k == "all"
    assert (
        RunSpec.from_dict(row.spec) == spec(bf16=True, k="all") and row.spec["config"] == get_preset("lora").to_dict()
    )


def test_no_wal_files_are_left_after_a_clean_exit(tmp_path):
    """`unipelt demo` ended with runs/demo.sqlite-wal and -shm beside the store: the report's
    read-only connection, the last to close, cannot remove them. The store file is not written."""
    path = tmp_path / "s.sqlite"
    with Store(path):
        pass
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        store.runs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]
    assert path.read_bytes() == before


def test_a_run_stored_under_its_key_from_before_whole_floats_is_finished(tmp_path, monkeypatch):
    """``alpha: 2`` in a config file is now keyed as 2.0: a store written before holds the run
    under the older key, and a resumed sweep trained it again (the report then averaged both)."""
    from unipelt import LoRAConfig
    from unipelt.harness import runner, sweep

    config = PeltConfig(methods=(LoRAConfig(alpha=2, dropout=0),))  # whole numbers, as YAML reads them
    run = spec(method="mine", config=config)
    assert len(run.keys) == 2 and run.keys[0] == spec(method="mine", config=get_preset("lora")).key
    with monkeypatch.context() as m:  # the store as the older code wrote it
        m.setattr(RunSpec, "key", property(lambda s: s._hash(s.config.to_dict(floats=False))))
        with Store(tmp_path / "s.sqlite") as store:
            store.write(record(spec=run))

    def trains(*_args, **_kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "run", trains)
    with Store(tmp_path / "s.sqlite") as store:
        summary = sweep.run_sweep([run], store, progress=False)
        assert store.claim(run.key, older=run.keys[1:]).status == "finished"
    assert (summary.skipped, summary.finished) == (1, 0)
