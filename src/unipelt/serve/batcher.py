"""Dynamic batching on one event loop: rows of concurrent requests, for any mix of tasks, are
gathered into one batch of up to ``max_batch`` rows, or whatever arrived within ``max_wait_s``
of the first, and run in a worker thread so the loop keeps accepting requests meanwhile.

Each row carries its own future, so a caller gets exactly its rows back in its order however
its request was split between batches. ``close()`` refuses new requests and lets the worker
finish everything already queued (graceful shutdown).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from .engine import Row, ServeError

_STOP = object()


class Batcher:
    def __init__(
        self,
        run: Callable[[Sequence[Row]], list],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queued: int,
        on_batch: Callable[[int], None] = lambda n: None,
    ):
        if max_batch < 1 or max_wait_s < 0 or max_queued < max_batch:
            raise ValueError(
                f"max_batch {max_batch} must be >= 1, max_wait_s {max_wait_s} >= 0 and "
                f"max_queued {max_queued} >= max_batch"
            )
        self.run, self.max_batch, self.max_wait_s, self.max_queued = run, max_batch, max_wait_s, max_queued
        self.on_batch = on_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.worker: asyncio.Task | None = None
        # batches run on a thread of their own: in the loop's shared pool, hot loads waiting
        # their turn (Engine.loading) could take every thread and stall the batches behind them
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unipelt-batch")

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def failure(self) -> str | None:
        """Why the worker stopped while the batcher is open (it would leave every request to
        time out), else None. ``/health`` reports it."""
        if self.worker is None or not self.worker.done() or self.closed:
            return None
        if self.worker.cancelled():
            return "the batch worker was cancelled"
        error = self.worker.exception()
        return f"the batch worker stopped: {type(error).__name__}: {error}" if error else "the batch worker stopped"

    async def submit(self, rows: Sequence[Row]) -> list[dict]:
        """The answers to ``rows`` in their order; the first refused row's ServeError if any is."""
        if self.closed:
            raise ServeError(503, "the server is shutting down")
        if (failure := self.failure()) is not None:  # nothing would answer: say so now, not at the timeout
            raise ServeError(503, f"the server cannot answer: {failure}")
        if self.queue.qsize() + len(rows) > self.max_queued:  # backpressure instead of unbounded memory
            raise ServeError(503, f"the server is overloaded ({self.queue.qsize()} rows queued); retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        for row, future in zip(rows, futures):  # no await in between: a request's rows stay together
            self.queue.put_nowait((row, future))
        answers = await asyncio.gather(*futures)
        for a in answers:
            if isinstance(a, Exception):
                raise a
        return answers

    async def close(self) -> None:
        """Refuse new rows, then wait for the worker to answer every queued one."""
        self.closed = True
        if self.worker is not None and not self.worker.done():  # a dead worker has nothing to drain
            self.queue.put_nowait(_STOP)
            await self.worker
        self.thread.shutdown(wait=False)

    async def _work(self) -> None:
        stop = False
        while not stop:
            batch, stop = await self._gather()
            live = [(r, f) for r, f in batch if not f.done()]  # a cancelled caller is not run
            if not live:
                continue
            self.on_batch(len(live))
            try:
                answers = await asyncio.get_running_loop().run_in_executor(self.thread, self.run, [r for r, _ in live])
            except Exception as e:  # a bug, not a bad request: fail this batch, keep serving
                answers = [ServeError(500, f"internal error: {type(e).__name__}: {e}")] * len(live)
            for (_, future), answer in zip(live, answers):
                if not future.done():
                    future.set_result(answer)

    async def _gather(self) -> tuple[list, bool]:
        """Up to max_batch queued rows: the first one blocks, the rest wait at most max_wait_s."""
        first = await self.queue.get()
        if first is _STOP:
            return [], True
        batch, loop = [first], asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
                    break
            else:
                item = self.queue.get_nowait()
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False
