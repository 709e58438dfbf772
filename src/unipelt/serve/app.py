"""The HTTP API (FastAPI): one app for both backends, over a ``Service`` that answers rows.

``POST /v1/predict``, ``GET /v1/tasks``, ``GET /health``, ``GET /metrics``; with an admin token,
``POST``/``DELETE /v1/tasks/{name}``. Every refusal is a 4xx JSON body ``{"error": message}``;
nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .batcher import Batcher
from .engine import TASK_NAME, Engine, Row, ServeError, TaskSpec
from .metrics import Metrics

ADMIN_OFF = "admin endpoints are off: start the server with --admin-token or $UNIPELT_ADMIN_TOKEN"


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_inputs: int = 256  # per request
    max_body_bytes: int = 1 << 20
    max_queued_rows: int = 8192  # beyond this, 503 rather than unbounded memory
    request_timeout_s: float = 60.0
    admin_token: str | None = None
    tasks_dir: Path | None = None  # where POST /v1/tasks/{name} may load from

    def __post_init__(self):
        # each limit in the terms of its flag: a value outside it leaves a server that never
        # answers (--max-wait-ms inf), answers only 504s (--request-timeout 0) or dies (nan)
        _within("--max-batch", self.max_batch, 1, self.max_queued_rows)
        _within("--max-inputs", self.max_inputs, 1, self.max_queued_rows)
        _within("max_body_bytes (--max-body-kb x 1024)", self.max_body_bytes, 1, MAX_BODY_KB * 1024)
        _within("--request-timeout", self.request_timeout_s, 0.001, MAX_TIMEOUT_S)
        _within("--max-wait-ms", self.max_wait_ms, 0, MAX_WAIT_MS, " (and under --request-timeout)")
        if self.max_wait_ms >= self.request_timeout_s * 1000:  # every batch would wait out its requests
            raise ValueError(
                f"--max-wait-ms must be under --request-timeout ({self.request_timeout_s * 1000:g} ms), "
                f"got {self.max_wait_ms!r}"
            )
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("the admin token must have at least 16 characters")
        if self.admin_token is not None and not (self.admin_token.isascii() and self.admin_token.isprintable()):
            # HTTP headers arrive as latin-1 bytes: another character could never be matched
            raise ValueError("the admin token must be printable ASCII characters")


MAX_WAIT_MS = 10_000.0  # a batch that waits longer to fill is a stalled server
MAX_TIMEOUT_S = 3600.0
MAX_BODY_KB = 64 * 1024


def _within(flag: str, value, low: float, high: float, why: str = "") -> None:
    """Refuse ``value`` unless it is a finite number in [low, high] (nan and inf included)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high:
        raise ValueError(f"{flag} must be a number from {low:g} to {high:g}{why}, got {value!r}")


class Service(Protocol):
    engine: Engine  # the tasks and their checks; forwards go through predict()

    async def start(self, metrics: Metrics) -> None: ...
    async def stop(self) -> None: ...
    async def predict(self, rows: list[Row]) -> list[dict]: ...
    async def add(self, name: str, spec: TaskSpec) -> dict: ...
    async def remove(self, name: str) -> None: ...
    def failure(self) -> str | None: ...  # why it cannot answer (a dead batch worker), else None


class LocalService:
    """One process: the engine behind the dynamic batcher; task changes run in a thread too."""

    def __init__(self, engine: Engine, settings: ServeSettings):
        self.engine, self.settings, self.batcher = engine, settings, None

    async def start(self, metrics: Metrics) -> None:
        s = self.settings
        self.batcher = Batcher(
            self.engine.run,
            max_batch=s.max_batch,
            max_wait_s=s.max_wait_ms / 1000,
            max_queued=max(s.max_queued_rows, s.max_batch),
            on_batch=metrics.batch_rows.observe,
        )
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.close()

    async def predict(self, rows: list[Row]) -> list[dict]:
        return await self.batcher.submit(rows)

    def failure(self) -> str | None:
        return self.batcher.failure() if self.batcher is not None else None

    async def add(self, name: str, spec: TaskSpec) -> dict:
        return (await asyncio.to_thread(self.engine.add, name, spec)).as_json()

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self.engine.remove, name)


# ---- request bodies
def _text(i: int, x: Any) -> str | tuple[str, str]:
    if isinstance(x, str):
        return _unicode(i, x)
    if isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x):
        return (_unicode(i, x[0]), _unicode(i, x[1]))
    raise ValueError(f"inputs[{i}] must be a string or a pair [string, string], got {type(x).__name__} {str(x)[:40]!r}")


def _unicode(i: int, s: str) -> str:
    """``s`` if it is text a tokenizer can take: JSON's escapes can spell a lone surrogate
    ("\\udfff"), which no tokenizer encodes; refused here, it fails only its own request."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"inputs[{i}] is not valid Unicode text: {e.reason} at position {e.start}") from None
    return s


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: StrictStr
    inputs: list[Any] = Field(min_length=1, description='texts, or sentence pairs as [["a", "b"], ...]')

    @field_validator("inputs")
    @classmethod
    def _texts(cls, v: list) -> list:
        return [_text(i, x) for i, x in enumerate(v)]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(description="checkpoint directory, relative to the server's --tasks-dir")
    pairs: StrictBool | None = Field(None, description="whether the task takes sentence pairs")


# ---- the app
def create_app(service: Service, settings: ServeSettings) -> FastAPI:
    metrics = Metrics(settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start(metrics)
        yield
        await service.stop()  # after uvicorn stopped accepting: finishes what is queued

    app = FastAPI(title="unipelt", lifespan=lifespan)
    _errors(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, routes=app.router.routes)
    _predict_routes(app, service, settings, metrics)
    _task_routes(app, service, settings)
    return app


def _predict_routes(app: FastAPI, service: Service, settings: ServeSettings, metrics: Metrics) -> None:
    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> JSONResponse:
        if len(body.inputs) > settings.max_inputs:
            raise ServeError(
                413,
                f"{len(body.inputs)} inputs in one request; at most {settings.max_inputs}: "
                "split it into several requests",
            )
        checked = service.engine.check(body.task, body.inputs)
        rows = service.engine.rows(body.task, body.inputs, checked)
        try:
            outputs = await asyncio.wait_for(service.predict(rows), settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(
                504, f"no answer within {settings.request_timeout_s} s: the server is overloaded, retry later"
            ) from None
        metrics.rows.labels(body.task).inc(len(rows))
        return JSONResponse({"task": body.task, "outputs": outputs})

    @app.get("/health")
    async def health() -> JSONResponse:
        failure = service.failure()
        if failure is not None:  # a load balancer must stop sending requests here
            return JSONResponse({"status": "error", "error": failure, "tasks": len(service.engine.info)}, 503)
        return JSONResponse({"status": "ok", "tasks": len(service.engine.info)})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _task_routes(app: FastAPI, service: Service, settings: ServeSettings) -> None:
    admin = _admin_check(settings)
    name_param = PathParam(pattern=TASK_NAME, description="task name: letters, digits, _ . -")

    @app.get("/v1/tasks")
    async def tasks() -> JSONResponse:
        return JSONResponse({"tasks": service.engine.tasks()})

    @app.post("/v1/tasks/{name}", status_code=201, dependencies=[Depends(admin)])
    async def load(body: LoadRequest, name: str = name_param) -> JSONResponse:
        spec = TaskSpec(path=_inside(settings.tasks_dir, body.path), pairs=body.pairs)
        return JSONResponse(await service.add(name, spec), status_code=201)

    @app.delete("/v1/tasks/{name}", dependencies=[Depends(admin)])
    async def unload(name: str = name_param) -> JSONResponse:
        await service.remove(name)
        return JSONResponse({"removed": name})


def _admin_check(settings: ServeSettings):
    def check(request: Request) -> None:
        if not settings.admin_token:
            raise ServeError(404, ADMIN_OFF)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServeError(401, "admin endpoints need the header 'Authorization: Bearer <admin token>'")
        if not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise ServeError(403, "wrong admin token")

    return check


def _inside(root: Path | None, relative: str) -> Path:
    """``relative`` resolved under ``root``; symlinks or '..' that leave it are refused."""
    if root is None:
        raise ServeError(
            404,
            "loading tasks is off: the server was started without --tasks-dir "
            "(and its --task directories have no common parent)",
        )
    if "\x00" in relative:  # no file name holds one, and the path functions raise on it
        raise ServeError(400, "path holds a NUL character")
    try:
        relative.encode("utf-8")  # JSON can spell a lone surrogate, which no file system takes
    except UnicodeEncodeError as e:
        raise ServeError(400, f"path is not valid Unicode text: {e.reason} at position {e.start}") from None
    base = root.resolve()
    try:
        path = (base / relative).resolve()
        found = path.is_dir()
    except (OSError, RuntimeError) as e:  # a name too long, a symlink loop
        raise ServeError(400, f"path {relative[:80]!r} cannot be resolved: {e}") from None
    where = f"the server's tasks directory {base}"
    if not path.is_relative_to(base):
        raise ServeError(400, f"path {relative!r} is outside {where}; give it relative to it")
    if Path(relative).is_absolute():  # inside, but a client should not depend on where the server keeps it
        inside = str(path.relative_to(base))
        raise ServeError(400, f"path {relative!r} is absolute; give it relative to {where}: {inside!r}")
    if not found:
        raise ServeError(404, f"no checkpoint directory {relative!r} in the server's tasks directory")
    return path


def _parsed_as_json(content_type: str) -> bool:
    """Whether FastAPI read a body with this Content-Type as JSON: application/json or
    application/*+json (its rule; with none given it does not, its strict_content_type)."""
    major, _, minor = content_type.split(";")[0].strip().lower().partition("/")
    return major == "application" and (minor == "json" or minor.endswith("+json"))


def _errors(app: FastAPI) -> None:
    """Every refusal as ``{"error": message}``: the message is what the client should change."""

    @app.exception_handler(ServeError)
    async def refused(_: Request, e: ServeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if request.method == "POST" and not _parsed_as_json(request.headers.get("content-type", "")):
            return JSONResponse(
                {"error": "send the body as JSON, with the header 'Content-Type: application/json'"}, status_code=415
            )
        if any(err.get("type") == "json_invalid" for err in errors):
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        parts = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where and not msg.startswith(where) else msg)
        return JSONResponse({"error": "; ".join(parts)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with a 413 before the app parses them; stop answering a
    client that left (``_unless_gone``).

    A body up to DRAIN times the limit is read to its end and dropped, so that the client, which
    sends its whole body before reading, gets the 413 rather than a reset connection; a larger
    one is refused at once and its connection closed.
    """

    DRAIN = 16

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit * self.DRAIN):
            return await _too_large(scope, receive, send, self.limit, close=True)
        chunks, size, more = [], 0, True
        while more:  # a chunked body has no declared length: count it as it comes
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body, more = message.get("body", b""), message.get("more_body", False)
            size += len(body)
            if size <= self.limit:
                chunks.append(body)
            elif size > self.limit * self.DRAIN:
                return await _too_large(scope, receive, send, self.limit, close=True)
        if size > self.limit:
            return await _too_large(scope, receive, send, self.limit, close=False)
        body, replayed, gone = b"".join(chunks), False, asyncio.Event()

        async def replay():
            nonlocal replayed
            if replayed:  # after the body, only the client's disconnect comes
                await gone.wait()
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await _unless_gone(self.app(scope, replay, send), receive, gone)


async def _unless_gone(answer, receive, gone: asyncio.Event) -> None:
    """Run ``answer`` until it is done or the client leaves; then it is cancelled, so a request's
    rows still queued are never run (the batcher skips a cancelled caller's), and ``Observe``
    counts a 499. The server reports a lost connection as ``http.disconnect``, which nothing else
    reads once the whole body was."""

    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    answering, watching = asyncio.ensure_future(answer), asyncio.ensure_future(watch())
    try:
        await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request cancelled from outside (shutdown): both go with it
        answering.cancel()
        watching.cancel()
        raise
    watching.cancel()
    if not answering.done():  # the client left before the answer
        answering.cancel()
    try:
        await answering
    except asyncio.CancelledError:
        if not gone.is_set():
            raise


async def _too_large(scope, receive, send, limit: int, close: bool) -> None:
    # "close" when the rest of the body is never read: the connection cannot carry another request
    response = JSONResponse(
        {"error": f"the body is over {limit} bytes: send fewer or shorter inputs"},
        status_code=413,
        headers={"Connection": "close"} if close else None,
    )
    await response(scope, receive, send)


class Observe:
    """Count every response by route and status, and time it. A request whose client left before
    any answer counts as status 499 (nginx's "client closed request"), not as a server error."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(self._route(scope), status or 499, time.perf_counter() - start)

    def _route(self, scope) -> str:
        """The route's template; a request refused before routing (BodyLimit's 413) is matched
        here. No label per unknown URL: those are "unmatched"."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"
