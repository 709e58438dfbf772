"""Sweeps: resumable after an interruption or a kill, failures recorded and skipped past."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from unipelt.harness import run_sweep, runner
from unipelt.harness.record import RunRecord
from unipelt.harness.store import Store

from .conftest import sweep_process_argv, tiny_grid


def _grid(glue_dir, tiny_model, **changes):
    return tiny_grid(
        tiny_model, glue_dir, **{"tasks": "rte,sst2", "presets": "lora,adapter", "data_seeds": "111,222", **changes}
    )


def _fake(spec, *args, **kwargs) -> RunRecord:
    return RunRecord(spec=spec, status="finished", metric="accuracy", test_metric=0.5, params={"total": 1})


def test_interrupted_sweep_resumes_and_records_every_run_once(tmp_path, glue_dir, tiny_model, monkeypatch):
    specs = _grid(glue_dir, tiny_model).specs()
    assert len(specs) == 8
    calls = []

    def interrupted_on_third(spec, *args, **kwargs):
        calls.append(spec.key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third run
        return _fake(spec)

    store = Store(tmp_path / "s.sqlite")
    monkeypatch.setattr(runner, "run", interrupted_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(specs, store, progress=False)
    assert len(store.finished_keys()) == 2

    calls.clear()
    monkeypatch.setattr(runner, "run", lambda spec, *a, **kw: calls.append(spec.key) or _fake(spec))
    summary = run_sweep(specs, store, progress=False)
    assert (summary.skipped, summary.finished, summary.failed) == (2, 6, 0)
    assert len(calls) == 6  # the first two were not run again
    runs = store.runs()
    assert sorted(runs.run_key) == sorted(s.key for s in specs) and (runs.attempts == 1).all()
    assert run_sweep(specs, store, progress=False).skipped == 8


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, glue_dir, tiny_model, monkeypatch):
    specs = _grid(glue_dir, tiny_model, tasks="rte", data_seeds="111").specs()  # lora, adapter
    real_train = runner._train

    def broken_adapter(spec, *args):
        if spec.method == "adapter":
            raise RuntimeError("injected failure")
        return real_train(spec, *args)

    store = Store(tmp_path / "s.sqlite")
    monkeypatch.setattr(runner, "_train", broken_adapter)
    summary = run_sweep(specs, store, progress=False)
    assert (summary.finished, summary.failed) == (1, 1)
    runs = store.runs().set_index("method")
    assert runs.loc["adapter", "status"] == "failed"
    assert runs.loc["adapter", "reason"] == "RuntimeError: injected failure"
    assert runs.loc["lora", "status"] == "finished" and len(store.epochs()) == 1

    monkeypatch.setattr(runner, "_train", real_train)  # a rerun retries only the failed run
    summary = run_sweep(specs, store, progress=False)
    assert (summary.skipped, summary.finished) == (1, 1)
    assert store.runs().set_index("method").loc["adapter", "attempts"] == 2


def test_nan_loss_fails_the_run_with_its_reason(glue_dir, tiny_model):
    from unipelt.harness import make_spec

    spec = make_spec(
        task="rte",
        preset="lora",
        model=tiny_model,
        k=16,
        lr=3e38,  # finite, the largest float32: the first step makes the weights inf, the loss nan
        epochs=3,
        dev_size=20,
        glue_dir=str(glue_dir),
    )
    record = runner.run(spec, runner.RunOptions(progress=False))
    assert record.status == "failed" and "training loss is nan" in record.reason


def _finished(path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'finished'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_killed_sweep_process_resumes(tmp_path, glue_dir, tiny_model):
    """SIGKILL the CLI after its first recorded run, restart it: every run ends up recorded once."""
    store = tmp_path / "s.sqlite"
    argv = sweep_process_argv(tiny_model, glue_dir, store, epochs=2)
    proc = subprocess.Popen(argv, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _finished(store) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    killed_at = _finished(store)
    assert 1 <= killed_at < 4, proc.stderr.read().decode()[-2000:]

    done = subprocess.run(argv, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{killed_at} were already finished" in done.stdout
    with Store(store) as s:
        runs = s.runs()
    assert (
        len(runs) == 4 and runs.run_key.is_unique and (runs.status == "finished").all() and (runs.attempts == 1).all()
    )


def test_two_local_workers(tmp_path, glue_dir, tiny_model):
    specs = _grid(glue_dir, tiny_model, tasks="rte", data_seeds="111").specs()
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(specs, store, workers=2, progress=False)
        assert (summary.finished, summary.failed) == (2, 0)
        assert set(store.finished_keys()) == {s.key for s in specs}


def test_ray_backend_on_a_local_instance(tmp_path, glue_dir, tiny_model):
    """Runs go to Ray as it has room for them (one CPU here: one at a time), so a sweep claims
    a run only when it can start it."""
    import ray  # in the test extra, as CI installs it: a missing ray fails here, it is not skipped

    from unipelt.harness.ray_backend import run_on_ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        specs = _grid(glue_dir, tiny_model, tasks="rte", data_seeds="111").specs()
        drawn = []
        counted = (drawn.append(s) or s for s in specs)
        for done, record in enumerate(run_on_ray(counted), start=1):
            assert record.status == "finished" and len(drawn) == done, (done, len(drawn))
        with Store(tmp_path / "s.sqlite") as store:
            summary = run_sweep(specs, store, backend="ray", progress=False)
            assert (summary.finished, summary.failed) == (2, 0)
            assert len(store.runs()) == 2
    finally:
        ray.shutdown()


def test_a_run_on_changed_glue_files_is_a_new_run_not_already_finished(tmp_path, own_glue, tiny_model, monkeypatch):
    """The key used to ignore the data: after a dev.tsv was edited a resumed sweep reported every
    run finished, and the store mixed scores on two datasets under one key."""
    store = Store(tmp_path / "s.sqlite")
    monkeypatch.setattr(runner, "run", lambda spec, *a, **kw: _fake(spec))
    specs = _grid(own_glue, tiny_model, tasks="rte", data_seeds="111").specs()
    assert run_sweep(specs, store, progress=False).finished == 2
    same = _grid(own_glue, tiny_model, tasks="rte", data_seeds="111").specs()
    assert run_sweep(same, store, progress=False).skipped == 2
    dev = own_glue / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text() + dev.read_text().splitlines()[-1] + "\n")
    again = _grid(own_glue, tiny_model, tasks="rte", data_seeds="111").specs()
    assert {s.data_id for s in again} != {s.data_id for s in specs}
    summary = run_sweep(again, store, progress=False)
    assert (summary.skipped, summary.finished) == (0, 2)


def test_the_known_glue_copy_keeps_the_keys_runs_were_stored_under(tmp_path):
    """data_id is '' for the copy KNOWN_DATA describes (the embedded SST-2 is its bytes, gzip'd),
    so the committed studies' keys stand."""
    import gzip

    from unipelt.harness.data import data_identity
    from unipelt.harness.locate import EMBEDDED
    from unipelt.harness.tasks import get_task

    (tmp_path / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_bytes(gzip.decompress((EMBEDDED / "SST-2" / f"{name}.gz").read_bytes()))
    assert data_identity(get_task("sst2"), tmp_path) == ""
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\n")
    assert data_identity(get_task("sst2"), tmp_path) != ""
    gz = tmp_path / "gz" / "SST-2"  # the embedded layout, edited: the files the loader reads are hashed
    gz.mkdir(parents=True)
    (gz / "train.tsv.gz").write_bytes((EMBEDDED / "SST-2" / "train.tsv.gz").read_bytes())
    (gz / "dev.tsv.gz").write_bytes(gzip.compress(b"sentence\tlabel\nfine\t1\n"))
    assert data_identity(get_task("sst2"), tmp_path / "gz") not in ("", data_identity(get_task("sst2"), tmp_path))


def test_the_hubs_glue_is_not_taken_for_the_projects_copy(monkeypatch):
    """The hub's MNLI, QNLI and QQP are the full sets (the project's train files are samples): a
    hub run had the key of a run on the project's files, and a sweep called it finished."""
    from unipelt.harness.data import data_identity
    from unipelt.harness.tasks import get_task

    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert data_identity(get_task("mnli")) == "hub"  # no copy here: the hub is where it would load
    assert data_identity(get_task("sst2")) == ""  # the embedded copy is the project's
