"""Scale-out on Ray Serve: the same engine and the same FastAPI app, as a Serve deployment of N
replicas behind Ray's HTTP proxy, batched by ``@serve.batch`` instead of our batcher.

Each replica loads the model and every ``--task`` itself (one row of a batch is one batch
item, so ``--max-batch`` counts rows as in the local backend). Loading or unloading a task
while serving is not offered here: a request reaches one replica, and changing the tasks of
all of them is a redeploy (restart with other ``--task`` flags), not an HTTP call.
Deployment arguments travel through Ray's own serialisation; checkpoints are still read by
each replica from disk, as safetensors and JSON.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading

from ray import serve

from ..errors import UniPeltError
from .app import ServeSettings, create_app
from .engine import Engine, Row, ServeError, TaskSpec
from .metrics import Metrics

NOT_HERE = (
    "loading or unloading tasks while serving is offered by the local backend only; with --backend ray "
    "restart the server with the new --task flags (every replica loads them)"
)


class RayService:
    """The app's service inside one replica: rows go to the replica's ``@serve.batch`` method."""

    def __init__(self, replica: "UniPeltReplica"):
        self.replica, self.engine = replica, replica.engine

    async def start(self, metrics: Metrics) -> None:
        self.replica.metrics = metrics

    async def stop(self) -> None:
        pass  # Ray drains a replica's ongoing requests before stopping it

    async def predict(self, rows: list[Row]) -> list[dict]:
        answers = await asyncio.gather(*(self.replica.rows(r) for r in rows))
        for a in answers:
            if isinstance(a, Exception):
                raise a
        return answers

    async def add(self, name: str, spec: TaskSpec) -> dict:
        raise ServeError(501, NOT_HERE)

    async def remove(self, name: str) -> None:
        raise ServeError(501, NOT_HERE)

    def failure(self) -> str | None:
        return None  # Ray Serve restarts a replica whose health check fails


@serve.deployment
@serve.ingress()
class UniPeltReplica:
    def __init__(
        self, model_dir: str, tasks: dict[str, TaskSpec], max_length: int | None, settings: ServeSettings, threads: int
    ):
        import torch

        torch.set_num_threads(threads)  # replicas on one machine must not each take every core
        self.settings, self.metrics = settings, None
        self.engine = Engine.from_directory(model_dir, max_length)
        for name, spec in tasks.items():
            try:
                self.engine.add(name, spec)
            except ServeError as e:  # reaches the driver inside Ray's deployment error (serve_ray)
                raise UniPeltError(f"--task {name}: {e.message}") from None
        self.rows.set_max_batch_size(settings.max_batch)
        self.rows.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    def __serve_build_asgi_app__(self):
        return create_app(RayService(self), self.settings)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)  # reset from the settings in __init__
    async def rows(self, rows: list[Row]) -> list:
        if self.metrics is not None:
            self.metrics.batch_rows.observe(len(rows))
        return await asyncio.to_thread(self.engine.run, rows)


def free_port(host: str) -> int:
    """Ray's proxy binds the port itself, so port 0 is turned into a free port here first."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_cpus(replicas: int, cpus_per_replica: float, cpus: float) -> None:
    """A local Ray started here has this machine's CPUs and no more: replicas it cannot place
    would wait for CPUs forever, and the server would never open its port."""
    if round(replicas * cpus_per_replica, 4) > cpus:  # Ray counts CPUs in 1/10000ths: 25 x 0.28 fits 7
        raise UniPeltError(
            f"--replicas {replicas} x --cpus-per-replica {cpus_per_replica:g} needs {replicas * cpus_per_replica:g} "
            f"CPUs; the local Ray started here has {cpus:g}: ask for fewer, or give --ray-address of a larger cluster"
        )


def serve_ray(
    model_dir: str,
    tasks: dict[str, TaskSpec],
    max_length: int | None,
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    replicas: int,
    cpus_per_replica: float = 1,
    address: str | None = None,
) -> int:
    import ray

    port = port or free_port(host)
    # no address: a new local Ray ("local"), where None would join RAY_ADDRESS's or a `ray start` cluster
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        if address == "local":  # a cluster may scale up: only a local one's CPUs are all there is
            _check_cpus(replicas, cpus_per_replica, ray.cluster_resources().get("CPU", 0))
        serve.start(http_options={"host": host, "port": port})
        app = UniPeltReplica.options(
            num_replicas=replicas,
            # a replica batches only what it holds at once: let it hold a few batches' worth of requests
            max_ongoing_requests=max(2 * settings.max_batch, 32),
            graceful_shutdown_timeout_s=settings.request_timeout_s,
            ray_actor_options={"num_cpus": cpus_per_replica},
        ).bind(model_dir, tasks, max_length, settings, max(1, int(cpus_per_replica)))
        try:
            serve.run(app, name="unipelt", route_prefix="/")
        except RuntimeError as e:  # a replica's refusal, wrapped in Ray's report of the failed deployment
            found = re.search(r"UniPeltError: (.+)", str(e))
            raise UniPeltError(f"Ray Serve: {found[1] if found else str(e).splitlines()[0]}") from None
        print(f"unipelt serve: listening on http://{host}:{port} (Ray Serve, {replicas} replica(s))", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        serve.shutdown()  # stops the proxy, then drains each replica's ongoing requests
    finally:
        ray.shutdown()
    return 0
