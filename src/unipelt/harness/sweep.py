"""Run a grid of specs, skipping those the store already holds as finished, so an interrupted
sweep resumes where it stopped. Each run is claimed in the store just before it starts, so
several sweeps on one store share the grid instead of training each run twice. Results are
written by the driver process only: workers, local or Ray, return records."""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from tqdm.auto import tqdm

from . import runner
from .data import load_splits
from .errors import HarnessError
from .record import RunRecord
from .spec import RunSpec
from .store import Store
from .tasks import get_task

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int  # already finished in the store
    finished: int
    failed: int
    elsewhere: int = 0  # being trained by another sweep on the same store
    kept: int = 0  # failed attempts of runs whose earlier finished result stays


def preflight(specs: Iterable[RunSpec]) -> None:
    """Check that every (task, K) can be split, and that every model and config can be built
    (``runner.dry_run``), before any run starts, so a bad grid fails in seconds rather than
    after hours of training, and records nothing. The seeds cannot change the outcome."""
    specs = list(specs)
    cases = {(s.task, str(s.k), s.dev_size, s.glue_dir): s for s in specs}
    for s in cases.values():
        load_splits(get_task(s.task), s.k, 0, dev_size=s.dev_size, glue_dir=s.glue_dir, announce=False)
    task = lambda s: get_task(s.task)  # noqa: E731
    models = {(s.model, s.objective, task(s).num_labels, task(s).is_regression, s.config): s for s in specs}
    for s in models.values():
        runner.dry_run(s, task(s))


def check_execution(workers: int, backend: str) -> None:
    """How the sweep runs, checked before the store is opened."""
    if type(workers) is not int or workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {workers}")
    if backend not in BACKENDS:
        raise HarnessError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise HarnessError("--backend ray needs Ray: pip install 'unipelt[ray]'")


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _exit_with_parent() -> None:
    """A worker outlives a killed parent (SIGKILL runs no cleanup) unless it watches for it:
    the parent's sentinel becomes ready when the parent dies, whatever killed it."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _start_worker(threads: int) -> None:
    """Initializer of a local worker process: its own slice of the cores, no per-run bar
    (several bars from several processes would interleave), and death with its parent."""
    import torch

    threading.Thread(target=_exit_with_parent, daemon=True, name="unipelt-parent-watch").start()
    torch.set_num_threads(threads)
    runner.quiet_transformers()


def _run_in_worker(spec: RunSpec) -> RunRecord:
    return runner.run(spec, runner.RunOptions(progress=False))


def worker_pool(workers: int) -> ProcessPoolExecutor:
    # spawn: a forked child would inherit torch's thread pools and the parent's open store
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(threads_per_worker(workers),),
    )


def _pooled(specs: Iterator[RunSpec], workers: int) -> Iterator[RunRecord]:
    """At most ``workers`` runs in flight; the next spec is drawn (and so claimed) only when a
    worker is free, so a run waiting in a queue is never claimed away from another sweep."""
    pool, pending, drained = worker_pool(workers), set(), False
    try:
        while True:
            while len(pending) < workers and (spec := next(specs, None)) is not None:
                pending.add(pool.submit(_run_in_worker, spec))
            if not pending:
                drained = True
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BrokenProcessPool:
        raise HarnessError(
            "a sweep worker process died (killed or out of memory); finished runs are "
            "saved, rerun the same command to resume"
        ) from None
    finally:
        if drained:
            pool.shutdown()
        else:
            _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """End the pool now: a sweep stopped by an error or an interrupt does not wait for the runs in
    flight, whose results it would not record (their claims go with this process; a rerun resumes
    them)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():  # SIGTERM ignored (stuck in a C call)
            process.kill()
            process.join()


def _local(specs: Iterator[RunSpec], workers: int, progress: bool) -> Iterator[RunRecord]:
    if workers == 1:
        for spec in specs:
            yield runner.run(spec, runner.RunOptions(progress=progress, progress_position=1))
        return
    yield from _pooled(specs, workers)


def execute(
    specs: Iterator[RunSpec], workers: int, backend: str, ray_address: str | None, progress: bool = True
) -> Iterator[RunRecord]:
    check_execution(workers, backend)
    if backend == "ray":
        from .ray_backend import run_on_ray

        return run_on_ray(specs, threads_per_run=1, address=ray_address)
    return _local(iter(specs), workers, progress)


def _claimed(specs: list[RunSpec], store: Store, counts: Counter, bar) -> Iterator[RunSpec]:
    """The specs this process claims, in order; the others are counted (finished meanwhile,
    or being trained by another sweep) and passed over."""
    for spec in specs:
        claim = store.claim(spec.key, older=spec.keys[1:])
        if claim.status == "claimed":
            yield spec
            continue
        counts["finished_elsewhere" if claim.status == "finished" else "busy"] += 1
        bar.update(1)
        if claim.status == "busy":
            log.info("%s: being trained by %s, left to it", spec.label(), claim.owner)


def _write(store: Store, record: RunRecord, counts: Counter):
    """Record one run; a store that cannot take it (a full disk, a lock held past the wait) stops
    the sweep with one line that says what is kept."""
    try:
        return store.write(record)
    except HarnessError as e:
        outcome = (
            f"finished with test {record.metric} {record.test_metric:.4f}"
            if record.status == "finished"
            else f"failed: {record.reason}"
        )
        recorded = counts["finished"] + counts["failed"]
        raise HarnessError(
            f"{e}; {record.spec.label()} {outcome} and is not recorded; the {recorded} run(s) this "
            "sweep recorded before it are kept: rerun the same command to resume"
        ) from None


def run_sweep(
    specs: list[RunSpec],
    store: Store,
    *,
    workers: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run every spec not yet finished in ``store``; each result is recorded as it arrives."""
    check_execution(workers, backend)
    unique = list({s.key: s for s in specs}.values())  # dedupe, keep order
    done = store.finished_keys()
    todo = [s for s in unique if done.isdisjoint(s.keys)]
    log.info("sweep: %d runs, %d already finished, %d to run", len(unique), len(unique) - len(todo), len(todo))
    preflight(todo)
    counts: Counter = Counter()
    with tqdm(total=len(todo), desc="sweep", unit="run", position=0, disable=not progress, dynamic_ncols=True) as bar:
        for record in execute(_claimed(todo, store, counts, bar), workers, backend, ray_address, progress):
            written = _write(store, record, counts)
            counts[record.status] += 1
            counts["kept"] += written.kept_finished
            bar.update(1)
            bar.set_postfix(failed=counts["failed"])
    return SweepSummary(
        total=len(unique),
        skipped=len(unique) - len(todo) + counts["finished_elsewhere"],
        finished=counts["finished"],
        failed=counts["failed"],
        elsewhere=counts["busy"],
        kept=counts["kept"],
    )
