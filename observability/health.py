"""The replica's HTTP surface: status, liveness, readiness and Prometheus metrics.

Routes (Starlette; mountable in a FastAPI app with `app.mount("/", health_router(...))`):
- `GET /v1/health/scheduler/status`: 200 with the dict the status provider
  returns, or 503 `{"error": ...}` if it raises, is not JSON-able or takes
  longer than `status_timeout_s`.
- `GET /healthz`, `GET /readyz`: 200 `{"status": "ok"}` or 503
  `{"status": "fail", "reason": ...}` from the liveness / readiness check.
- `GET /metrics`: the registry in Prometheus text format.

Guarantees: URL passwords are masked in every JSON body; a failing provider or
check answers 503, never 500. `serve_http` runs uvicorn inside the caller's
task group, installs no signal handlers, leaves logging configuration alone,
and on cancellation stops accepting, closes connections and returns.

Does not guarantee: authentication; bind to a private interface if needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp

from .redact import redact_text, redact_value

__all__ = [
    "STATUS_PATH",
    "Check",
    "HttpServerError",
    "StatusProvider",
    "create_health_app",
    "health_router",
    "health_routes",
    "serve_http",
]

log = logging.getLogger("lightsched.http")

STATUS_PATH = "/v1/health/scheduler/status"
StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
Check = Callable[[], tuple[bool, str]]


class HttpServerError(OSError):
    """The health server could not start (address in use, app startup failed)."""


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return redact_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _json(body: Any, status_code: int) -> Response:
    # Rendered here (not by JSONResponse) so a NaN or an odd type becomes a 503, not a 500.
    content = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(content, status_code=status_code, media_type="application/json")


def health_routes(
    status: StatusProvider,
    liveness: Check,
    readiness: Check,
    registry: CollectorRegistry,
    *,
    status_timeout_s: float = 5.0,
) -> list[Route]:
    async def status_endpoint(request: Request) -> Response:
        try:
            with anyio.fail_after(status_timeout_s):
                body = await status()
            return _json(redact_value(body), 200)
        except TimeoutError:
            log.warning("status provider timed out", extra={"event": "http.status_timeout"})
            return _json({"error": f"status not available within {status_timeout_s:g} s"}, 503)
        except Exception as exc:
            log.warning("status provider failed", exc_info=True, extra={"event": "http.status_failed"})
            return _json({"error": _error_text(exc)}, 503)

    def probe(check: Check, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                ok, reason = check()
            except Exception as exc:
                ok, reason = False, f"{name} check raised {_error_text(exc)}"
            if ok:
                return _json({"status": "ok"}, 200)
            return _json({"status": "fail", "reason": redact_text(reason)}, 503)

        return endpoint

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route(STATUS_PATH, status_endpoint, methods=["GET"], name="scheduler_status"),
        Route("/healthz", probe(liveness, "liveness"), methods=["GET"], name="healthz"),
        Route("/readyz", probe(readiness, "readiness"), methods=["GET"], name="readyz"),
        Route("/metrics", metrics_endpoint, methods=["GET"], name="metrics"),
    ]


def health_router(
    status: StatusProvider,
    liveness: Check,
    readiness: Check,
    registry: CollectorRegistry,
    *,
    status_timeout_s: float = 5.0,
) -> Router:
    """The routes as one ASGI app, to mount in an existing (FastAPI/Starlette) app."""
    return Router(routes=health_routes(status, liveness, readiness, registry, status_timeout_s=status_timeout_s))


def create_health_app(
    status: StatusProvider,
    liveness: Check,
    readiness: Check,
    registry: CollectorRegistry,
    *,
    status_timeout_s: float = 5.0,
) -> Starlette:
    return Starlette(routes=health_routes(status, liveness, readiness, registry, status_timeout_s=status_timeout_s))


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The scheduler owns SIGINT/SIGTERM (anyio signal receiver); uvicorn must not replace them.
        yield


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise HttpServerError(f"cannot bind the HTTP server to {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HttpServerError(f"cannot bind the HTTP server to {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


async def serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    shutdown_timeout_s: float = 5.0,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; `await tg.start(serve_http, ...)` returns the bound port.

    `port=0` binds a free port. Raises `HttpServerError` if the address is
    unavailable or the app's startup fails.
    """
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,  # ours (observability.logs) stays in force
        access_log=False,
        ws="none",  # no websocket routes: don't import a websocket library
        lifespan="auto",
        server_header=False,
        timeout_graceful_shutdown=math.ceil(shutdown_timeout_s),  # typed int; whole seconds are enough
    )
    server = _Server(config)
    finished = anyio.Event()
    failure: list[BaseException] = []
    scopes: list[anyio.CancelScope] = []  # the server's own scope, to cancel if graceful exit hangs

    async def run() -> None:
        try:
            # Shielded so the caller's cancellation reaches uvicorn as `should_exit`
            # (graceful: close listeners and connections), not as a cancel mid-request.
            with anyio.CancelScope(shield=True) as scope:
                scopes.append(scope)
                await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's way of saying "startup failed"
            failure.append(exc)
        finally:
            finished.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, name=f"uvicorn {host}:{bound_port}")
            try:
                while not server.started and not finished.is_set():
                    await anyio.sleep(0.01)  # uvicorn offers a flag, not an event
                if server.started:
                    log.info(
                        "http server listening on %s:%d",
                        host,
                        bound_port,
                        extra={"event": "http.listening", "host": host, "port": bound_port},
                    )
                    task_status.started(bound_port)
                await finished.wait()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(shutdown_timeout_s + 1.0):
                    await finished.wait()
                if not finished.is_set():
                    server.force_exit = True
                    for scope in scopes:
                        scope.cancel()
    finally:
        sock.close()
    if failure or not server.started:
        raise HttpServerError(f"the HTTP server on {host}:{bound_port} failed to start (see the log above)")
