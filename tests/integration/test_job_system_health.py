"""system_health against a real Redis and this real process."""

from __future__ import annotations

import json
import logging

import pytest

from jobs import registry
from jobs._store import FencedOut
from jobs.system_health import SystemHealthConfig, _redis_checks, check_system, grade, worst
from scheduler.devredis import free_port
from scheduler.registry import JobDefinitionError
from tests.support.jobctx import job_context, make_stale
from tests.support.redis_servers import ServerLike

EXPECTED_CHECKS = {
    "redis_ping",
    "redis_memory",
    "redis_clients",
    "redis_role",
    "process_rss",
    "process_cpu",
    "process_fds",
    "loop_lag",
}


@pytest.mark.parametrize(
    ("value", "warn", "fail", "status"),
    [(0, 1, 2, "ok"), (1, 1, 2, "warn"), (1.9, 1, 2, "warn"), (2, 1, 2, "fail"), (99, 1, 2, "fail"), (5, 5, 5, "fail")],
)
def test_grade(value: float, warn: float, fail: float, status: str) -> None:
    assert grade(value, warn, fail) == status


def test_overall_is_the_worst() -> None:
    assert worst([]) == "ok"
    assert worst(["ok", "warn", "ok"]) == "warn"
    assert worst(["warn", "fail", "ok"]) == "fail"


@pytest.mark.anyio
async def test_healthy_report_is_stored(redis_url: str, key_prefix: str, tmp_path: object) -> None:
    cfg = SystemHealthConfig(paths=[str(tmp_path)], result_ttl_s=60, history_len=5)
    async with job_context(redis_url, key_prefix, "system_health", config=cfg, loop_lag_s=0.001) as ctx:
        report = await check_system(ctx)
        checks = report.by_name()
        assert set(checks) == EXPECTED_CHECKS | {f"disk:{tmp_path}"}
        assert checks["redis_memory"].status == "ok"  # a test server has maxmemory 0: unlimited
        assert "unlimited" in checks["redis_memory"].detail
        assert (checks["redis_role"].status, checks["redis_role"].value) == ("ok", "master")
        assert isinstance(checks["redis_clients"].value, int) and checks["redis_clients"].value >= 1
        assert 0 < checks["process_rss"].value < 100_000  # MB
        assert checks["process_fds"].value > 0
        assert checks["loop_lag"].status == "ok"
        assert 0 < checks[f"disk:{tmp_path}"].value <= 100
        assert report.overall == worst([c.status for c in report.checks])

        raw = await ctx.redis.get(ctx.keys.data("system_health", "latest", "system"))
        doc = json.loads(raw)
        assert doc["overall"] == report.overall
        assert set(doc["checks"]) == set(checks)
        assert doc["fencing_token"] == ctx.fencing_token
        assert 50_000 < await ctx.redis.pttl(ctx.keys.data("system_health", "latest", "system")) <= 60_000
        await check_system(ctx)
        assert await ctx.redis.xlen(ctx.keys.data("system_health", "history", "system")) == 2


@pytest.mark.anyio
async def test_thresholds_turn_checks_to_warn_and_fail(
    redis_server: ServerLike, key_prefix: str, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightsched.job.system_health")
    cfg = SystemHealthConfig(
        paths=[str(tmp_path), "/no/such/path/for/lightsched"],
        rss_warn_mb=1,  # any Python process is above 1 MB and below 100 GB
        rss_fail_mb=100_000,
        redis_min_replicas=1,
    )
    async with job_context(redis_server.url, key_prefix, "system_health", config=cfg, loop_lag_s=2.5) as ctx:
        # Cap Redis memory so that what it uses is ~90% of it: warn, still room to store the report.
        used = int((await ctx.redis.info("memory"))["used_memory"])
        await ctx.redis.config_set("maxmemory", str(int(used / 0.9)))
        report = await check_system(ctx)
        checks = report.by_name()
        assert checks["redis_memory"].status in ("warn", "fail")
        assert checks["redis_memory"].value > 80
        assert checks["loop_lag"].status == "fail" and checks["loop_lag"].value == 2.5
        assert checks["process_rss"].status == "warn"
        assert checks["redis_role"].status == "warn"  # no replica connected, one wanted
        assert checks["disk:/no/such/path/for/lightsched"].status == "fail"
        assert "FileNotFoundError" in checks["disk:/no/such/path/for/lightsched"].detail
        assert checks[f"disk:{tmp_path}"].status == "ok"
        assert report.overall == "fail"
        await ctx.redis.config_set("maxmemory", "0")
    degraded = [r for r in caplog.records if getattr(r, "event", None) == "system_health"]
    assert degraded and degraded[-1].levelno == logging.WARNING
    assert "loop_lag" in degraded[-1].checks  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_redis_replica_role_fails(redis_server: ServerLike, key_prefix: str) -> None:
    """Lease and result writes need the master: being pointed at a replica is a fail."""
    async with job_context(redis_server.url, key_prefix, "system_health", config=SystemHealthConfig(paths=[])) as ctx:
        # A master that does not answer: the role changes at once, and nothing syncs.
        await ctx.redis.replicaof("127.0.0.1", str(free_port()))
        try:
            checks = {c.name: c for c in await _redis_checks(ctx, ctx.config)}
        finally:
            await ctx.redis.replicaof("NO", "ONE")
        assert (checks["redis_role"].status, checks["redis_role"].value) == ("fail", "slave")


@pytest.mark.parametrize(
    ("env", "value", "match"),
    [
        ("LIGHTSCHED_SYSTEM_HEALTH_RSS_WARN_MB", "5000", r"RSS_WARN_MB \(5000.0\) must not exceed LIGHTSCHED_SYSTEM_HEALTH_RSS_FAIL_MB"),
        ("LIGHTSCHED_SYSTEM_HEALTH_PATHS", "/var", r"LIGHTSCHED_SYSTEM_HEALTH_PATHS: .*not JSON"),
        ("LIGHTSCHED_SYSTEM_HEALTH_LOOP_LAG_FAIL_S", "-1", r"LIGHTSCHED_SYSTEM_HEALTH_LOOP_LAG_FAIL_S"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, match: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(JobDefinitionError, match=match):
        registry.get("system_health").load_config()


@pytest.mark.anyio
async def test_stale_leader_stores_nothing(redis_url: str, key_prefix: str) -> None:
    async with job_context(redis_url, key_prefix, "system_health", config=SystemHealthConfig(paths=[])) as ctx:
        await make_stale(ctx)
        with pytest.raises(FencedOut):
            await check_system(ctx)
        assert [k async for k in ctx.redis.scan_iter(match=ctx.keys.data("*"))] == []
