"""Nothing a user does loses a finished run: failed reruns keep the finished result, output paths
are checked before work, sweeps share a store through claims, workers die with their parent, a
replaced model is a new run, a diverged run is a failure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch

from unipelt import cli, get_preset
from unipelt.harness import make_spec, report, run_sweep, runner
from unipelt.harness.callbacks import BestOnDev
from unipelt.harness.record import EpochLog, RunRecord
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import LEASE_TTL, Store

from .conftest import cli_error, finished_record, sweep_process_argv, tiny_grid, tiny_run_flags, train_argv


def _spec() -> RunSpec:
    return RunSpec(task="rte", method="lora", config=get_preset("lora"), model="/models/tiny", k=16, lr=1e-3)


def _fake(spec, *args, **kwargs) -> RunRecord:
    epochs = (EpochLog(epoch=1, train_loss=0.7, dev_metric=0.5),)
    return replace(finished_record(spec), epochs=epochs, finished_at="first")


def _failing(spec, *args, **kwargs) -> RunRecord:
    return runner.failed_record(spec, "OSError: model directory broken since")


@pytest.fixture
def train(glue_dir, tiny_model, tmp_path):
    return train_argv(tiny_model, glue_dir, tmp_path / "s.sqlite", epochs=1)


# ---- 1. a failed attempt never replaces a finished result
def test_a_failed_rerun_keeps_the_finished_result(capsys, train, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run", _fake)
    assert cli.main(train) == 0
    monkeypatch.setattr(runner, "run", _failing)
    assert cli.main([*train, "--force"]) == 1
    out = capsys.readouterr().out
    assert "run failed: OSError: model directory broken since (attempt 2 recorded" in out
    assert "finished result (test accuracy 0.5000, first) is kept" in out
    with Store(tmp_path / "s.sqlite") as store:
        runs, attempts = store.runs(), store.attempts()
        assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and runs.loc[0, "attempts"] == 2
        assert len(store.epochs()) == 1  # the finished attempt's epochs are kept
        assert attempts.status.tolist() == ["finished", "failed"] and attempts.attempt.tolist() == [1, 2]
        assert attempts.reason.iloc[1] == "OSError: model directory broken since"
    assert cli.main(train) == 0 and "already finished" in capsys.readouterr().out
    with Store(tmp_path / "s.sqlite", readonly=True) as store:
        summary = report.build(store).summary
    assert summary.startswith("1 finished and 0 failed runs (1 failed attempt(s) of finished runs kept as history)")


def test_a_concurrent_failed_duplicate_keeps_the_finished_result(tmp_path, glue_dir, tiny_model):
    spec = make_spec(task="rte", preset="lora", model=tiny_model, k=16, dev_size=20, glue_dir=str(glue_dir))
    with Store(tmp_path / "s.sqlite") as first, Store(tmp_path / "s.sqlite") as second:
        assert not first.write(_fake(spec)).kept_finished
        written = second.write(_failing(spec))
        assert written.kept_finished and written.attempt == 2
        assert first.runs().loc[0, "status"] == "finished" and first.finished_keys() == {spec.key}
        later = replace(_fake(spec), test_metric=0.75)  # a finished rerun is the run's result
        assert first.write(later).attempt == 3 and first.runs().loc[0, "test_metric"] == 0.75


# ---- 2. output paths are checked before any work
def _blocker(tmp_path) -> Path:
    """A regular file: a path under it can never be created (even by root)."""
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


def _outputs(tmp_path, case: str) -> tuple[list[str], str]:
    """(flags, the error they must give) for each output path that cannot be written."""
    blocker = _blocker(tmp_path)
    return {
        "save under a file": (
            ["--save", str(blocker / "ckpt")],
            f"--save directory {blocker / 'ckpt'} cannot be created: {blocker} is a file",
        ),
        "save is a file": (["--save", str(blocker)], f"--save directory {blocker} is a file, not a directory"),
        "store is a directory": (["--store", str(tmp_path)], f"results store {tmp_path} is a directory"),
        "store under a file": (
            ["--store", str(blocker / "s.sqlite")],
            f"results store {blocker / 's.sqlite'} cannot be created: {blocker} is a file",
        ),
    }[case]


@pytest.mark.parametrize("case", ["save under a file", "save is a file", "store is a directory", "store under a file"])
def test_unwritable_outputs_fail_before_training(capsys, train, tmp_path, monkeypatch, case):
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("trained despite a bad output path"))
    flags, message = _outputs(tmp_path, case)
    assert message in cli_error(capsys, [*train, *flags])
    assert not (tmp_path / "s.sqlite").exists()


def test_a_failed_save_after_training_keeps_the_run_finished(capsys, train, tmp_path, monkeypatch):
    def disk_full(model, directory, **recorded):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "save", disk_full)
    assert cli.main([*train, "--save", str(tmp_path / "ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "unipelt: error: the run finished and is recorded, but saving it failed: "
        "OSError: [Errno 28] No space left on device"
    )
    with Store(tmp_path / "s.sqlite") as store:
        assert store.runs().loc[0, "status"] == "finished"


@pytest.mark.parametrize(
    "out, message",
    [
        (lambda t: _blocker(t), "is a file, not a directory"),
        (lambda t: _blocker(t) / "report", "cannot be created"),
    ],
)
def test_report_out_that_cannot_be_written(capsys, tmp_path, out, message):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.write(_fake(_spec()))
    before = path.read_bytes()
    assert message in cli_error(capsys, ["report", "--store", str(path), "--out", str(out(tmp_path))])
    assert path.read_bytes() == before


# ---- 3. claims: sweeps on one store share the grid
def test_a_claimed_run_is_busy_for_others_until_written(tmp_path):
    key = _spec().key
    with Store(tmp_path / "s.sqlite") as first, Store(tmp_path / "s.sqlite") as second:
        assert first.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert first.claim(key).status == "claimed"
        busy = second.claim(key)
        assert busy.status == "busy" and busy.owner == first.owner
        first.write(_fake(_spec()))
        assert second.claim(key).status == "finished"
        assert second.claim(key, force=True).status == "claimed"


def test_a_dead_or_silent_owner_loses_its_claim(tmp_path):
    key = _spec().key
    with Store(tmp_path / "s.sqlite") as first, Store(tmp_path / "s.sqlite") as second:
        first.claim(key)
        first.db.execute("UPDATE leases SET heartbeat = heartbeat - ?", (2 * LEASE_TTL,))  # silent for 2 TTLs
        assert second.claim(key).status == "claimed"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        second.db.execute("UPDATE leases SET pid = ?", (int(dead.stdout),))  # its owner process is gone
        assert first.claim(key).status == "claimed"


def test_closing_a_store_releases_its_claims(tmp_path):
    key = _spec().key
    with Store(tmp_path / "s.sqlite") as first:
        first.claim(key)
    with Store(tmp_path / "s.sqlite") as second:
        assert second.claim(key).status == "claimed"


def test_bad_execution_flags_leave_the_store_alone(capsys, glue_dir, tiny_model, tmp_path):
    argv = [
        "sweep",
        "--tasks",
        "rte",
        "--presets",
        "lora",
        "--k",
        "16",
        *tiny_run_flags(tiny_model, glue_dir, tmp_path / "s.sqlite"),
    ]
    assert "--workers must be at least 1, got 0" in cli_error(capsys, [*argv, "--workers", "0"])
    assert not (tmp_path / "s.sqlite").exists()


def test_a_sweep_leaves_runs_another_sweep_holds(tmp_path, glue_dir, tiny_model, monkeypatch):
    specs = tiny_grid(tiny_model, glue_dir, tasks="rte", presets="lora,adapter,bitfit").specs()
    calls = []
    monkeypatch.setattr(runner, "run", lambda spec, *a, **k: calls.append(spec.method) or _fake(spec))
    with Store(tmp_path / "s.sqlite") as other, Store(tmp_path / "s.sqlite") as mine:
        other.claim(specs[1].key)
        summary = run_sweep(specs, mine, progress=False)
    assert calls == ["lora", "bitfit"]
    assert (summary.finished, summary.elsewhere, summary.skipped) == (2, 1, 0)


def _finished_now(stdout: str) -> int:
    return int(stdout.split(" finished now")[0].rsplit(" ", 1)[1])


def test_two_sweep_processes_on_one_store_train_each_run_once(tmp_path, glue_dir, tiny_model):
    store = tmp_path / "s.sqlite"
    argv = sweep_process_argv(tiny_model, glue_dir, store, epochs=1)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert sum(_finished_now(out) for out, _ in outputs) == 4
    with Store(store) as s:
        attempts = s.attempts()
        assert len(attempts) == 4 and attempts.run_key.is_unique and (attempts.status == "finished").all()


# ---- 4. workers die with their parent
WORKERS = """
import time, psutil
from unipelt.harness.sweep import worker_pool
pool = worker_pool(2)
futures = [pool.submit(time.sleep, 600) for _ in range(2)]
while len([c for c in psutil.Process().children() if "spawn_main" in " ".join(c.cmdline())]) < 2:
    time.sleep(0.05)
print("ready", flush=True)
time.sleep(600)
"""


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


def test_workers_die_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", WORKERS], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        workers = [c for c in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
    finally:
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait()
    deadline = time.monotonic() + 120  # a bound on the wait, not a timing assertion
    while not all(map(_gone, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w.pid for w in workers if not _gone(w)]
    for pid in alive:
        psutil.Process(pid).kill()
    assert not alive, f"workers {alive} outlived their killed parent"


STOPPED = """
import time, psutil
from unipelt.harness import sweep
sweep._run_in_worker = time.sleep  # a run of 0.01 s and one of 600 s
records = sweep._pooled(iter([0.01, 600]), 2)
next(records)
records.close()  # what a failed store write or an interrupt does to the sweep's loop
workers = [c for c in psutil.Process().children() if "spawn_main" in " ".join(c.cmdline())]
print(sum(c.status() != psutil.STATUS_ZOMBIE for c in workers), flush=True)
"""


def test_a_stopped_sweep_ends_its_runs_in_flight_at_once():
    """After a failed store write (or an interrupt of the parent alone) the pool waited for every
    run in flight, whose results it then dropped: an hour's run held the error line an hour."""
    out = subprocess.run([sys.executable, "-c", STOPPED], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


# ---- 5. the model's identity is part of the run key
def test_a_model_replaced_at_the_same_path_is_a_new_run(capsys, train, tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    argv = [*train, "--model", str(model_dir)]
    calls = []
    monkeypatch.setattr(runner, "run", lambda spec, *a, **k: calls.append(spec) or _fake(spec))
    assert cli.main(argv) == 0 and len(calls) == 1
    assert cli.main(argv) == 0 and "already finished" in capsys.readouterr().out
    retrained = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        retrained.bert.encoder.layer[0].output.dense.weight.add_(1.0)
    retrained.save_pretrained(model_dir)
    assert cli.main(argv) == 0 and len(calls) == 2 and "already finished" not in capsys.readouterr().out
    assert calls[0].model == calls[1].model and calls[0].model_id != calls[1].model_id


# ---- 6. a diverged run is a failure; non-finite numbers are stored as valid JSON
def test_divergence_rule():
    best = BestOnDev(patience=10)
    best.first_loss = 0.7
    best.epochs = [
        EpochLog(epoch=1, train_loss=3e10, dev_metric=0.5),
        EpochLog(epoch=2, train_loss=7e10, dev_metric=0.5),
    ]
    assert best.divergence(10.0) == (
        "diverged: training loss rose from 0.7 at the start (epoch 1: 3e+10) to 7e+10 at epoch 2, over 10x"
    )
    best.epochs[-1] = EpochLog(epoch=2, train_loss=0.5, dev_metric=0.5)
    assert best.divergence(10.0) is None
    best.first_loss, best.epochs[-1] = 1e-4, EpochLog(epoch=2, train_loss=0.005, dev_metric=0.5)
    assert best.divergence(10.0) is None  # a tenfold rise near zero is noise
    best.epochs[-1] = EpochLog(epoch=2, train_loss=float("inf"), dev_metric=0.5)
    assert best.divergence(10.0) == "diverged: training loss is inf at epoch 2"


def test_a_huge_learning_rate_fails_as_diverged(glue_dir, tiny_model, tmp_path):
    # the head alone: its logits grow without bound while staying finite (LoRA's attention turns NaN first)
    spec = make_spec(
        task="rte",
        preset="head-only",
        model=tiny_model,
        k=32,
        head_lr=1e4,
        epochs=3,
        dev_size=20,
        glue_dir=str(glue_dir),
    )
    record = runner.run(spec, runner.RunOptions(progress=False))
    # from about ln 2, the loss of a 2-class head at the start, to thousands
    assert record.status == "failed" and re.match(
        r"diverged: training loss rose from 0\.\d+ at the start .* over 10x$", record.reason
    ), record.reason


def test_non_finite_numbers_are_stored_as_strict_json_and_an_infinite_lr_is_refused():
    from unipelt.harness.errors import HarnessError
    from unipelt.harness.store import _json

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    text = _json({"loss": float("nan"), "rows": [1.0, float("-inf")], "nested": {"lr": float("inf")}})
    assert json.loads(text, parse_constant=refuse) == {"loss": "nan", "rows": [1.0, "-inf"], "nested": {"lr": "inf"}}
    with pytest.raises(HarnessError, match="learning rate must be a positive number"):
        replace(_spec(), lr=float("inf"))
