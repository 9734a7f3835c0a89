"""provider_health against real HTTP servers on loopback (Starlette + uvicorn) and a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from jobs import registry
from jobs._store import FencedOut
from jobs.provider_health import ProviderHealthConfig, UnknownProvider, check_providers
from scheduler.devredis import free_port
from scheduler.registry import JobDefinitionError
from tests.support.jobctx import job_context, make_stale

SECRET = "s3cr3t-token-value"


class StubProviders:
    """A loopback server whose answer per provider name the test sets: a status code or 'slow'."""

    def __init__(self) -> None:
        self.behaviour: dict[str, int | str] = {}
        self.closing = False
        self.port = 0
        app = Starlette(routes=[Route("/health/{name}", self._health, methods=["GET", "HEAD", "POST"])])
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    async def _health(self, request: Request) -> PlainTextResponse:
        name = request.path_params["name"]
        mode = self.behaviour.get(name, 404)
        if mode == "slow":
            deadline = time.monotonic() + 30
            while not self.closing and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return PlainTextResponse("late")
        if mode == "auth":
            ok = request.headers.get("x-api-key") == f"Key {SECRET}"
            return PlainTextResponse("ok" if ok else "no", status_code=200 if ok else 401)
        return PlainTextResponse(str(mode), status_code=int(mode))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/health/{name}"

    def start(self) -> StubProviders:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError("stub HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.closing = True
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture
def stub() -> Iterator[StubProviders]:
    server = StubProviders().start()
    try:
        yield server
    finally:
        server.stop()


def config(stub: StubProviders, *names: str, also: list[dict] | None = None, **extra: object) -> ProviderHealthConfig:
    providers = [{"name": n, "url": stub.url(n), "timeout_s": 0.5 if n == "slow" else 5} for n in names]
    return ProviderHealthConfig(providers=[*providers, *(also or [])], **extra)  # type: ignore[arg-type]


async def latest(ctx, name: str) -> dict:
    raw = await ctx.redis.get(ctx.keys.data("provider_health", "latest", name))
    assert raw is not None, f"no latest result for {name}"
    return json.loads(raw)


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


@pytest.mark.anyio
async def test_probe_outcomes_are_recorded(stub: StubProviders, redis_url: str, key_prefix: str) -> None:
    stub.behaviour.update(ok=200, slow="slow", broken=500)
    refused = {"name": "refused", "url": f"http://127.0.0.1:{free_port()}/"}  # nothing listens there
    cfg = config(stub, "ok", "slow", "broken", also=[refused], result_ttl_s=60, history_len=10)
    async with job_context(redis_url, key_prefix, "provider_health", config=cfg) as ctx:
        started = time.monotonic()
        results = await check_providers(ctx)
        elapsed = time.monotonic() - started
        assert [r.provider for r in results] == ["ok", "slow", "broken", "refused"]
        # Concurrent probes: the run is bounded by the slow probe's 0.5 s, not a sum of timeouts.
        assert elapsed < 5

        ok = await latest(ctx, "ok")
        assert (ok["status"], ok["http_status"], ok["reason"], ok["error"]) == ("up", 200, "ok", None)
        assert 0 < ok["latency_ms"] < 5000
        assert ok["fencing_token"] == ctx.fencing_token

        slow = await latest(ctx, "slow")
        assert (slow["status"], slow["reason"], slow["http_status"]) == ("down", "timeout", None)
        assert 450 <= slow["latency_ms"] < 5000
        assert "0.5s" in slow["error"]

        broken = await latest(ctx, "broken")
        assert (broken["status"], broken["http_status"], broken["reason"]) == ("down", 500, "status")
        assert "expected 200" in broken["error"]

        refused = await latest(ctx, "refused")
        assert (refused["status"], refused["reason"], refused["http_status"]) == ("down", "connect", None)

        for name in ("ok", "slow", "broken", "refused"):
            pttl = await ctx.redis.pttl(ctx.keys.data("provider_health", "latest", name))
            assert 50_000 < pttl <= 60_000
            history = await ctx.redis.xrange(ctx.keys.data("provider_health", "history", name))
            assert len(history) == 1
            assert json.loads(history[0][1][b"result"])["provider"] == name
        # A first observation is not a transition.
        assert await ctx.redis.hgetall(ctx.keys.data("provider_health", "transitions")) == {}


@pytest.mark.anyio
async def test_recovery_is_one_up_transition_counted_once(
    stub: StubProviders, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightsched.job.provider_health")
    cfg = config(stub, "flaky", history_len=100)
    counters_key = None
    async with job_context(redis_url, key_prefix, "provider_health", config=cfg) as ctx:
        counters_key = ctx.keys.data("provider_health", "transitions")
        sequence = [200, 500, 500, 200, 200]
        seen = []
        for code in sequence:
            stub.behaviour["flaky"] = code
            (result,) = await check_providers(ctx)
            seen.append((result.status, (await latest(ctx, "flaky"))["transition"]))
        assert seen == [("up", None), ("down", "down"), ("down", None), ("up", "up"), ("up", None)]
        assert await ctx.redis.hgetall(counters_key) == {b"flaky:down": b"1", b"flaky:up": b"1"}
        assert await ctx.redis.xlen(ctx.keys.data("provider_health", "history", "flaky")) == len(sequence)
    assert len(events(caplog, "provider_down")) == 1
    assert len(events(caplog, "provider_up")) == 1
    assert events(caplog, "provider_up")[0].provider == "flaky"  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_one_provider_alone_and_unknown_name(stub: StubProviders, redis_url: str, key_prefix: str) -> None:
    stub.behaviour.update(a=200, b=200)
    cfg = config(stub, "a", "b")
    async with job_context(redis_url, key_prefix, "provider_health", config=cfg, params={"provider": "b"}) as ctx:
        results = await check_providers(ctx)
        assert [r.provider for r in results] == ["b"]
        assert await ctx.redis.exists(ctx.keys.data("provider_health", "latest", "a")) == 0
        assert await ctx.redis.exists(ctx.keys.data("provider_health", "latest", "b")) == 1
    async with job_context(redis_url, key_prefix + "x", "provider_health", config=cfg, params={"provider": "c"}) as ctx:
        with pytest.raises(UnknownProvider, match=r"unknown provider 'c' \(known: a, b\)"):
            await check_providers(ctx)


@pytest.mark.anyio
async def test_auth_secret_from_env_is_sent_never_shown(
    stub: StubProviders,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stub.behaviour.update(guarded="auth")
    monkeypatch.setenv("TEST_PROVIDER_KEY", SECRET)
    providers = [
        {"name": "guarded", "url": stub.url("guarded"), "auth": {"header": "X-Api-Key", "secret_env": "TEST_PROVIDER_KEY", "prefix": "Key "}},
        {"name": "bare", "url": stub.url("guarded")},
    ]
    monkeypatch.setenv("LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS", json.dumps(providers))
    cfg = registry.get("provider_health").load_config()
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and SECRET not in cfg.model_dump_json()
    async with job_context(redis_url, key_prefix, "provider_health", config=cfg) as ctx:
        results = {r.provider: r for r in await check_providers(ctx)}
        assert results["guarded"].status == "up"
        assert (results["bare"].status, results["bare"].http_status) == ("down", 401)
        stored = [await ctx.redis.get(k) async for k in ctx.redis.scan_iter(match=ctx.keys.data("*"))
                  if await ctx.redis.type(k) == b"string"]
        assert stored and all(SECRET.encode() not in v for v in stored)
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.__dict__) for r in caplog.records)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ('[{"name": "x", "url": "http://h/", "auth": {"header": "A", "secret_env": "LIGHTSCHED_TEST_MISSING_VAR"}}]',
         r"PROVIDERS.*LIGHTSCHED_TEST_MISSING_VAR \(named by secret_env\) is not set"),
        ('[{"name": "x", "url": "ftp://h/"}]', r"PROVIDER_HEALTH_PROVIDERS.*http:// or https://"),
        ('[{"name": "x", "url": "http://user:pw@h/"}]', r"must not carry credentials"),
        ('[{"name": "x", "url": "http://h/"}, {"name": "x", "url": "http://g/"}]', r"'x' appears twice"),
        ('[{"name": "a:b", "url": "http://h/"}]', r"provider name 'a:b'"),
        ("not json", r"LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, match: str) -> None:
    monkeypatch.delenv("LIGHTSCHED_TEST_MISSING_VAR", raising=False)
    monkeypatch.setenv("LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS", env)
    with pytest.raises((JobDefinitionError, ValueError), match=match):
        registry.get("provider_health").load_config()


@pytest.mark.anyio
async def test_stale_leader_stores_nothing(stub: StubProviders, redis_url: str, key_prefix: str) -> None:
    stub.behaviour.update(ok=200)
    async with job_context(redis_url, key_prefix, "provider_health", config=config(stub, "ok")) as ctx:
        await make_stale(ctx)
        with pytest.raises(FencedOut, match="no longer current"):
            await check_providers(ctx)
        assert [k async for k in ctx.redis.scan_iter(match=ctx.keys.data("*"))] == []


@pytest.mark.anyio
async def test_a_provider_not_scheduled_is_probed_only_on_request(
    stub: StubProviders, redis_url: str, key_prefix: str
) -> None:
    """`"scheduled": false`: left to a CronJob's `run-job -p provider=NAME`, which the leader runs."""
    stub.behaviour.update(a=200, b=200)
    base = config(stub, "a", "b")
    cfg = base.model_copy(update={"providers": [base.providers[0], base.providers[1].model_copy(update={"scheduled": False})]})
    async with job_context(redis_url, key_prefix, "provider_health", config=cfg) as ctx:
        assert [r.provider for r in await check_providers(ctx)] == ["a"]
    async with job_context(redis_url, key_prefix + "m", "provider_health", config=cfg, params={"provider": "b"}) as ctx:
        assert [r.provider for r in await check_providers(ctx)] == ["b"]
