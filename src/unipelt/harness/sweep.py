"""Run a grid of specs, skipping those the store already holds as finished, so an interrupted
sweep resumes where it stopped. Results are written by this (driver) process only: workers, local
or Ray, return records; the store never sees concurrent writers from one sweep."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
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


def preflight(specs: Iterable[RunSpec]) -> None:
    """Check that every (task, K) can be split before any run starts, so a bad grid fails in
    seconds rather than after hours of training. The data seed cannot change the outcome."""
    cases = {(s.task, str(s.k), s.dev_size, s.glue_dir): s for s in specs}
    for s in cases.values():
        load_splits(get_task(s.task), s.k, 0, dev_size=s.dev_size, glue_dir=s.glue_dir)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _run_in_worker(spec: RunSpec, threads: int) -> RunRecord:
    """Entry point of a local worker process: its own slice of the cores, no per-run bar
    (several bars from several processes would interleave)."""
    import torch

    torch.set_num_threads(threads)
    runner.quiet_transformers()
    return runner.run(spec, runner.RunOptions(progress=False))


def _local(specs: list[RunSpec], workers: int, progress: bool) -> Iterator[RunRecord]:
    if workers == 1:
        for spec in specs:
            yield runner.run(spec, runner.RunOptions(progress=progress, progress_position=1))
        return
    threads = threads_per_worker(workers)
    # spawn: a forked child would inherit torch's thread pools and the parent's open store
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_in_worker, spec, threads) for spec in specs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise HarnessError("a sweep worker process died (killed or out of memory); finished runs are "
                               "saved, rerun the same command to resume") from None
        finally:
            for future in futures:
                future.cancel()


def execute(specs: list[RunSpec], workers: int, backend: str, ray_address: str | None,
            progress: bool = True) -> Iterator[RunRecord]:
    if backend == "ray":
        from .ray_backend import run_on_ray

        return run_on_ray(specs, threads_per_run=1, address=ray_address)
    if backend != "local":
        raise HarnessError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return _local(specs, workers, progress)


def run_sweep(specs: list[RunSpec], store: Store, *, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, progress: bool = True) -> SweepSummary:
    """Run every spec not yet finished in ``store``; each result is recorded as it arrives."""
    if workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {workers}")
    done = store.finished_keys()
    todo = list({s.key: s for s in specs if s.key not in done}.values())  # dedupe, keep order
    skipped = len({s.key for s in specs}) - len(todo)
    log.info("sweep: %d runs, %d already finished, %d to run", skipped + len(todo), skipped, len(todo))
    preflight(todo)
    counts = {"finished": 0, "failed": 0}
    with tqdm(total=len(todo), desc="sweep", unit="run", position=0, disable=not progress, dynamic_ncols=True) as bar:
        for record in execute(todo, workers, backend, ray_address, progress):
            store.write(record)
            counts[record.status] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"])
    return SweepSummary(total=skipped + len(todo), skipped=skipped, **counts)
