"""Ray backend: each run is a Ray task on an existing cluster (``ray.init(address="auto")``) or,
when none is running, on a local Ray instance. Optional: ``pip install 'unipelt[ray]'``.

Cluster nodes need unipelt installed and the GLUE data and model at the same paths (a shared
file system), or GLUE_DIR set on them; records come back to the driver, which writes the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from . import runner
from .errors import HarnessError
from .record import RunRecord
from .spec import RunSpec

log = logging.getLogger(__name__)


def _run_remote(spec: RunSpec, threads: int) -> RunRecord:
    import torch

    torch.set_num_threads(threads)
    runner.quiet_transformers()
    return runner.run(spec, runner.RunOptions(progress=False))


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    try:
        ray.init(address="auto")  # a running cluster (RAY_ADDRESS or `ray start`)
    except ConnectionError:
        log.info("no running Ray cluster found: starting a local Ray instance")
        ray.init()


def _slots(ray, threads_per_run: int) -> int:
    """Runs the cluster can train at once now (an autoscaled cluster's grow as it does)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_run)


def run_on_ray(
    specs: Iterable[RunSpec], *, threads_per_run: int = 1, address: str | None = None
) -> Iterator[RunRecord]:
    """Yield records as Ray tasks finish; a task that dies (worker crash) becomes a failed run.
    Only as many runs as the cluster has room for are submitted: the next spec is drawn (and so
    claimed in the store) when one finishes, so a run queued in Ray is never claimed from another
    sweep that could train it now."""
    try:
        import ray
    except ImportError:
        raise HarnessError("--backend ray needs Ray: pip install 'unipelt[ray]'") from None
    _connect(ray, address)
    remote = ray.remote(num_cpus=threads_per_run)(_run_remote)
    specs, pending = iter(specs), {}
    try:
        while True:
            while len(pending) < _slots(ray, threads_per_run) and (spec := next(specs, None)) is not None:
                pending[remote.remote(spec, threads_per_run)] = spec
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the task or its worker died: that run failed
                yield runner.failed_record(spec, f"ray task failed: {str(e).splitlines()[0]}")
    finally:
        for ref in pending:
            ray.cancel(ref)
