"""The health/metrics HTTP surface on real uvicorn servers on loopback, called with httpx."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp

from observability.health import (
    STATUS_PATH,
    HttpServerError,
    create_health_app,
    health_router,
    serve_http,
)
from observability.telemetry import Telemetry

pytestmark = pytest.mark.anyio

LEADER_STATUS: dict[str, Any] = {
    "scheduler_running": True,
    "job_count": 2,
    "jobs": [
        {"id": "tick", "next_run": "2025-03-01T12:00:30+00:00", "last_outcome": "success"},
        {"id": "report", "next_run": "2025-03-01T13:00:00+00:00", "last_outcome": None},
    ],
    "is_leader": True,
    "leader": {"replica_id": "replica-a", "fencing_token": 12},
    "replica_id": "replica-a",
    "fencing_token": 12,
    "lease_left_s": 13.2,
    "redis_url": "redis://:hunter2@redis:6379/0",
}


class Probe:
    """A liveness/readiness check the test flips."""

    def __init__(self) -> None:
        self.ok, self.reason = True, "ok"

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.reason


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, app, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
        tg.cancel_scope.cancel()


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def make_status(status: dict[str, Any]) -> Callable[[], Any]:
    async def provide() -> dict[str, Any]:
        return status

    return provide


async def test_leader_endpoints_answer_status_probes_and_metrics() -> None:
    telemetry = Telemetry("replica-a")
    telemetry.leadership_acquired(12)
    live, ready = Probe(), Probe()
    app = create_health_app(make_status(LEADER_STATUS), live, ready, telemetry.registry)

    async with serving(app) as client:
        status = await client.get(STATUS_PATH)
        assert status.status_code == 200
        assert status.headers["content-type"] == "application/json"
        body = status.json()
        assert body == {**LEADER_STATUS, "redis_url": "redis://:***@redis:6379/0"}
        assert "hunter2" not in status.text

        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ok"}

        live.ok, live.reason = False, "elector task is not running"
        ready.ok, ready.reason = False, "redis unreachable at redis://:hunter2@redis:6379"
        healthz, readyz = await client.get("/healthz"), await client.get("/readyz")
        assert healthz.status_code == 503
        assert healthz.json() == {"status": "fail", "reason": "elector task is not running"}
        assert readyz.status_code == 503
        assert readyz.json() == {"status": "fail", "reason": "redis unreachable at redis://:***@redis:6379"}

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        parsed = families(metrics.text)
        assert parsed["lightsched_is_leader"].samples[0].value == 1
        assert parsed["lightsched_fencing_token"].samples[0].value == 12
        assert "lightsched_job_runs" in parsed


async def test_follower_status_and_metrics() -> None:
    telemetry = Telemetry("replica-b")
    telemetry.leader_observed("replica-a")
    follower = {
        **LEADER_STATUS,
        "is_leader": False,
        "replica_id": "replica-b",
        "fencing_token": None,
        "lease_left_s": None,
        "scheduler_running": False,
    }
    app = create_health_app(make_status(follower), Probe(), Probe(), telemetry.registry)

    async with serving(app) as client:
        body = (await client.get(STATUS_PATH)).json()
        assert body["is_leader"] is False and body["leader"]["replica_id"] == "replica-a"
        parsed = families((await client.get("/metrics")).text)
        assert parsed["lightsched_is_leader"].samples[0].value == 0
        [leader] = parsed["lightsched_leader_info"].samples
        assert leader.labels == {"leader_replica_id": "replica-a"}


async def test_failing_status_provider_and_check_answer_503_without_secrets() -> None:
    async def broken() -> dict[str, Any]:
        raise ConnectionError("cannot reach redis://:hunter2@redis:6379")

    async def not_json() -> dict[str, Any]:
        return {"lease_left_s": float("nan")}

    def raising_check() -> tuple[bool, str]:
        raise LookupError("no elector")

    telemetry = Telemetry("r")
    async with serving(create_health_app(broken, raising_check, Probe(), telemetry.registry)) as client:
        response = await client.get(STATUS_PATH)
        assert response.status_code == 503
        assert response.json() == {"error": "ConnectionError: cannot reach redis://:***@redis:6379"}
        healthz = await client.get("/healthz")
        assert healthz.status_code == 503
        assert healthz.json() == {"status": "fail", "reason": "liveness check raised LookupError: no elector"}
    async with serving(create_health_app(not_json, Probe(), Probe(), telemetry.registry)) as client:
        assert (await client.get(STATUS_PATH)).status_code == 503


async def test_a_hanging_status_provider_answers_503_after_its_timeout() -> None:
    async def hangs() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = create_health_app(hangs, Probe(), Probe(), Telemetry("r").registry, status_timeout_s=0.2)
    async with serving(app) as client:
        response = await client.get(STATUS_PATH)
        assert response.status_code == 503
        assert response.json() == {"error": "status not available within 0.2 s"}


async def test_router_mounted_in_a_fastapi_app_serves_beside_its_routes() -> None:
    telemetry = Telemetry("replica-a")
    api = FastAPI()

    @api.get("/api/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    api.mount("/", health_router(make_status(LEADER_STATUS), Probe(), Probe(), telemetry.registry))

    async with serving(api) as client:
        assert (await client.get("/api/hello")).json() == {"hello": "world"}
        assert (await client.get(STATUS_PATH)).json()["fencing_token"] == 12
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert "lightsched_is_leader" in families((await client.get("/metrics")).text)
        assert (await client.get("/nope")).status_code == 404


async def test_cancellation_stops_the_server_and_frees_the_port() -> None:
    telemetry = Telemetry("r")
    app = create_health_app(make_status(LEADER_STATUS), Probe(), Probe(), telemetry.registry)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_http, app, "127.0.0.1", 0)
            # the scheduler owns signals: uvicorn must not have replaced them
            assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            tg.cancel_scope.cancel()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_an_address_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_health_app(make_status({}), Probe(), Probe(), Telemetry("r").registry)
        with pytest.raises(HttpServerError, match=f"cannot bind the HTTP server to 127.0.0.1:{port}"):
            await serve_http(app, "127.0.0.1", port)


async def test_an_app_whose_startup_fails_is_a_clear_error() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise OSError("database is down")
        yield  # pragma: no cover

    with anyio.fail_after(30), pytest.raises(HttpServerError, match="failed to start"):
        await serve_http(FastAPI(lifespan=lifespan), "127.0.0.1", 0)
