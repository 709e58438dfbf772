"""Running the app in one process with uvicorn, on a loopback address only.

SIGTERM (or Ctrl-C) starts uvicorn's graceful shutdown: the listening socket closes, in-flight
requests are answered (for at most the request timeout), then the app's lifespan drains the
batcher; the process then exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys

import uvicorn

from ..errors import UniPeltError
from .app import LocalService, ServeSettings, create_app
from .engine import Engine


def loopback(host: str) -> str:
    """``host`` if it is a loopback address; the server is never exposed directly."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ok = ipaddress.ip_address(address).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise UniPeltError(
            f"--host {host!r}: unipelt serve listens on loopback addresses only (127.0.0.1, ::1); "
            "put a reverse proxy with TLS and authentication in front to expose it"
        )
    return address


def bind(host: str, port: int) -> socket.socket:
    """A socket on ``host:port`` (port 0: any free port), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UniPeltError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises a captured SIGTERM once it has shut down, so the process would end
        # "killed by SIGTERM"; a drained shutdown is a success, and exits 0.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:  # the line tests and scripts wait for: the port is accepting now
            host, port = sockets[0].getsockname()[:2]
            print(f"unipelt serve: listening on http://{host}:{port}", flush=True)


def serve_local(engine: Engine, settings: ServeSettings, host: str, port: int, *, quiet: bool = False) -> int:
    sock = bind(loopback(host), port)
    app = create_app(LocalService(engine, settings), settings)
    config = uvicorn.Config(
        app,
        log_level="warning" if quiet else "info",
        access_log=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
    )
    server = _Server(config)
    server.run(sockets=[sock])
    if not server.started:
        print("unipelt: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0
