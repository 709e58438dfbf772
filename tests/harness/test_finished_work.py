"""A finished run survives what can fail after it (issue 29, items 6-8 and 13): its score is
recorded before the optional save, a save or a store write that fails says in one line what was
kept, a full disk leaves no empty store, NaN scores are failed runs, a report's mean keeps NaN
seeds visible, and a store that cannot be opened says why."""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace

import pytest
from safetensors import SafetensorError

from unipelt import cli, get_preset
from unipelt.harness import report, run_sweep, runner
from unipelt.harness import store as store_module
from unipelt.harness.errors import HarnessError
from unipelt.harness.objective import Classify
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import Store

from .conftest import finished_record, tiny_grid, train_argv


@pytest.fixture
def train(glue_dir, tiny_model, tmp_path):
    return train_argv(tiny_model, glue_dir, tmp_path / "s.sqlite", epochs=1)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("unipelt: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- item 6: the score is recorded first; a failed save or write says what was kept
def test_a_save_that_fails_in_safetensors_keeps_the_run_finished(capsys, train, tmp_path, monkeypatch):
    seen = {}

    def full_disk(model, directory, **recorded):
        with Store(tmp_path / "s.sqlite", readonly=True) as other:  # the score is recorded before the save
            seen["status"] = other.runs().status.tolist()
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(runner, "save", full_disk)
    assert cli.main([*train, "--save", str(tmp_path / "ckpt")]) == 1
    err = _one_line(capsys)
    assert "the run finished and is recorded, but saving it failed: SafetensorError" in err
    assert seen["status"] == ["finished"]
    with Store(tmp_path / "s.sqlite") as store:
        assert store.runs().status.tolist() == ["finished"] and store.attempts().status.tolist() == ["finished"]


def _lock_after_loading(monkeypatch, path):
    """Hold the store's write lock from another connection once the model is loaded (after the
    claim), so that recording the run at its end waits past the (shortened) busy timeout."""
    load, held = runner.load_model, []

    def load_then_lock(*args, **kwargs):
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.append(db)
        return load(*args, **kwargs)

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    monkeypatch.setattr(runner, "load_model", load_then_lock)
    return held


def test_a_store_locked_at_the_end_of_a_run_says_what_was_kept(capsys, train, tmp_path, monkeypatch):
    held = _lock_after_loading(monkeypatch, tmp_path / "s.sqlite")
    assert cli.main([*train, "--save", str(tmp_path / "ckpt")]) == 1
    err = _one_line(capsys)
    assert re.search(r"finished with test accuracy \d\.\d{4} \(best epoch 1\); its checkpoint is saved in", err)
    assert "it is not recorded: cannot write to results store" in err and "another process holds its lock" in err
    assert (tmp_path / "ckpt" / "unipelt.safetensors").is_file()
    held[0].execute("ROLLBACK")
    with Store(tmp_path / "s.sqlite") as store:
        assert store.attempts().empty  # nothing half-written


def test_a_sweep_whose_store_cannot_be_written_stops_with_one_line(tmp_path, glue_dir, tiny_model, monkeypatch):
    specs = tiny_grid(tiny_model, glue_dir, tasks="rte", presets="lora,adapter").specs()
    path, held = tmp_path / "s.sqlite", []
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)

    def run(spec, *args, **kwargs):
        if spec.method == "adapter":
            held.append(sqlite3.connect(path, isolation_level=None))
            held[0].execute("BEGIN IMMEDIATE")
        return finished_record(spec)

    monkeypatch.setattr(runner, "run", run)
    with Store(path) as store:
        with pytest.raises(HarnessError) as caught:
            run_sweep(specs, store, progress=False)
        held[0].execute("ROLLBACK")
        assert store.runs().method.tolist() == ["lora"]
    message = str(caught.value)
    assert "another process holds its lock" in message and "adapter" in message
    assert "finished with test accuracy 0.5000 and is not recorded; the 1 run(s)" in message and "\n" not in message


FULL_DISK = """
import resource, signal, sys
from unipelt import get_preset
from unipelt.harness.errors import HarnessError
from unipelt.harness.record import RunRecord
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import Store

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
spec = RunSpec(task="rte", method="lora", config=get_preset("lora"), model="/m", k=16, lr=1e-3)
new, existing = sys.argv[1:]
limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
try:
    limit()
    Store(new)
except HarnessError as e:
    print(e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
with Store(existing) as store:
    limit()  # the disk fills during the run: recording it at the end fails
    try:
        store.write(RunRecord(spec=spec, status="finished", metric="accuracy", test_metric=0.5))
    except HarnessError as e:
        print(e)
try:  # reading needs a shared-memory file beside a WAL store: no room for it either
    Store(existing, readonly=True)
except HarnessError as e:
    print(e)
"""


def test_a_full_disk_leaves_no_empty_store_and_an_existing_one_unchanged(tmp_path):
    existing = tmp_path / "old.sqlite"
    Store(existing).close()
    before = existing.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "new.sqlite"), str(existing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    assert lines[0].startswith(f"cannot write to results store {tmp_path / 'new.sqlite'}: ") and "limit" in lines[0]
    assert lines[1].startswith(f"cannot write to results store {existing}: ")
    assert lines[2].startswith(f"cannot open results store {existing}: reading or writing the file failed")
    assert not (tmp_path / "new.sqlite").exists()
    assert existing.read_bytes() == before


# ---- item 7: NaN scores are failed runs; a report's mean does not drop a NaN seed
@pytest.mark.parametrize("where", ["dev", "test"])
def test_a_nan_score_fails_the_run(glue_dir, tiny_model, monkeypatch, where):
    score = Classify.score

    def nan_on(self, trainer, dataset):
        value = score(self, trainer, dataset)
        return math.nan if (len(dataset) == 20) == (where == "dev") else value  # the dev split has 20 rows

    monkeypatch.setattr(Classify, "score", nan_on)
    spec = tiny_grid(tiny_model, glue_dir, tasks="rte", presets="lora").specs()[0]
    record = runner.run(spec, runner.RunOptions(progress=False))
    assert record.status == "failed"
    assert record.reason == (
        "no epoch has a dev score (dev scores: nan)" if where == "dev" else "the test score is nan"
    )


def test_a_report_mean_keeps_a_nan_seed_visible(tmp_path):
    def finished(seed, value):
        spec = RunSpec(task="rte", method="lora", config=get_preset("lora"), model="/m", k=100, data_seed=seed, lr=1e-4)
        return replace(finished_record(spec), test_metric=value, test_source="GLUE dev", versions={"unipelt": "0"})

    with Store(tmp_path / "s.sqlite") as store:  # as an older unipelt stored a NaN score: NULL
        store.write(finished(111, 0.7))
        store.write(finished(222, math.nan))
        built = report.build(store)
    table = next(t for t in built.tables if t.title.startswith("Table 1"))
    row = next(r for r in table.rows if r[0].text == "lora")
    assert row[1].text == "–"  # not 70.0, the mean of the other seed alone


# ---- item 13: each reason a store cannot be opened has its own line
def test_a_locked_store_is_not_called_not_a_store(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("BEGIN EXCLUSIVE")  # in rollback-journal mode an exclusive lock keeps readers out
    try:
        with pytest.raises(HarnessError) as caught:
            Store(path, readonly=True)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert "another process holds its lock" in str(caught.value)
    assert "not a unipelt results store" not in str(caught.value)


READ_ONLY_MOUNT = """
set -e
mount -t tmpfs -o size=4m tmpfs "$1"
cp "$3" "$1/s.sqlite"
mount -o remount,ro "$1"
"$2" -m unipelt.cli report --store "$1/s.sqlite" --out "$4"
"""


def test_report_reads_a_wal_store_on_a_read_only_mount(tmp_path):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount to make a read-only file system")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here: {probe.stderr.decode().strip()}")
    source = tmp_path / "source.sqlite"
    with Store(source) as store:
        store.write(replace(finished_record(_rte()), test_source="GLUE dev", versions={"unipelt": "0"}))
    mount = tmp_path / "mnt"
    mount.mkdir()
    out = tmp_path / "out"
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            READ_ONLY_MOUNT,
            "sh",
            str(mount),
            sys.executable,
            str(source),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "report:" in done.stdout and (out / "report.md").is_file()


def _rte() -> RunSpec:
    return RunSpec(task="rte", method="lora", config=get_preset("lora"), model="/m", k=16, lr=1e-3)
