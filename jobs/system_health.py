"""System health checks of the leading replica and its Redis.

Default schedule: every 30 s (`30s`), timeout 15 s; change it with
LIGHTSCHED_JOB_SCHEDULES='{"system_health": "1m"}'.

Checks, each graded ok / warn / fail against its two thresholds (the overall
status is the worst of them):
  redis_ping      PING round trip, ms
  redis_memory    used_memory as a percent of maxmemory (maxmemory 0 = unlimited: ok)
  redis_clients   connected_clients
  redis_role      `master` is ok; any other role fails (lease writes need the master);
                  fewer connected replicas than `redis_min_replicas` warns
  process_rss     this process's resident memory, MB
  process_cpu     this process's CPU since the previous run, percent of one core
                  (the first run in a process samples `cpu_sample_s`)
  process_fds     open file descriptors, percent of the soft RLIMIT_NOFILE
  loop_lag        worst event-loop lag since the previous run (`ctx.loop_lag_s`), s
  disk:<path>     use of each configured path, percent (as `df` computes it)

Stored under `{prefix}:data:system_health:` as `latest:system` (TTL) and
`history:system` (capped stream); see `jobs._store`. Writes are fenced.
Does not guarantee: that a hung file system cannot keep a worker thread busy
(the check itself gives up after `disk_timeout_s` and reports fail).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psutil
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.exceptions import RedisError

from scheduler import JobContext

from ._store import json_list, log_event, store_result

__all__ = ["JOB_ID", "Check", "SystemHealthConfig", "SystemReport", "check_system", "grade", "system_health"]

JOB_ID = "system_health"

Status = Literal["ok", "warn", "fail"]
_RANK: dict[str, int] = {"ok": 0, "warn": 1, "fail": 2}


class SystemHealthConfig(BaseSettings):
    """Settings of the system_health job (env prefix LIGHTSCHED_SYSTEM_HEALTH_). Each pair is warn <= fail."""

    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_SYSTEM_HEALTH_", extra="ignore", frozen=True)

    paths: Annotated[list[str], NoDecode] = Field(["/"], description='JSON list of paths whose file system use is checked')
    redis_ping_warn_ms: float = Field(50.0, gt=0, description="ms of PING round trip that warns")
    redis_ping_fail_ms: float = Field(500.0, gt=0, description="ms of PING round trip that fails")
    redis_memory_warn_percent: float = Field(80.0, gt=0, description="percent of maxmemory used that warns")
    redis_memory_fail_percent: float = Field(95.0, gt=0, description="percent of maxmemory used that fails")
    redis_clients_warn: int = Field(1000, ge=1, description="connected Redis clients that warn")
    redis_clients_fail: int = Field(5000, ge=1, description="connected Redis clients that fail")
    redis_min_replicas: int = Field(0, ge=0, description="connected Redis replicas below which it warns")
    rss_warn_mb: float = Field(512.0, gt=0, description="MB of resident memory that warns")
    rss_fail_mb: float = Field(1024.0, gt=0, description="MB of resident memory that fails")
    cpu_warn_percent: float = Field(80.0, gt=0, description="CPU percent of one core that warns")
    cpu_fail_percent: float = Field(95.0, gt=0, description="CPU percent of one core that fails")
    fds_warn_percent: float = Field(80.0, gt=0, description="open fds, percent of the soft limit, that warns")
    fds_fail_percent: float = Field(95.0, gt=0, description="open fds, percent of the soft limit, that fails")
    loop_lag_warn_s: float = Field(0.1, gt=0, description="seconds of event-loop lag that warn")
    loop_lag_fail_s: float = Field(1.0, gt=0, description="seconds of event-loop lag that fail")
    disk_warn_percent: float = Field(85.0, gt=0, description="percent of a file system used that warns")
    disk_fail_percent: float = Field(95.0, gt=0, description="percent of a file system used that fails")
    disk_timeout_s: float = Field(5.0, gt=0, description="seconds a disk check may take before it fails")
    cpu_sample_s: float = Field(0.2, gt=0, le=5, description="seconds sampled for CPU on a process's first run")
    result_ttl_s: float = Field(120.0, gt=0, description="seconds the latest report lives in Redis")
    history_len: int = Field(2000, ge=1, le=1_000_000, description="entries kept in the history stream (approximate)")

    _paths_json = field_validator("paths", mode="before")(json_list)

    @model_validator(mode="after")
    def _warn_below_fail(self) -> SystemHealthConfig:
        for warn_name, fail_name in _PAIRS:
            if getattr(self, warn_name) > getattr(self, fail_name):
                prefix = "LIGHTSCHED_SYSTEM_HEALTH_"
                raise ValueError(
                    f"{prefix}{warn_name.upper()} ({getattr(self, warn_name)}) must not exceed "
                    f"{prefix}{fail_name.upper()} ({getattr(self, fail_name)})"
                )
        return self


_PAIRS = [
    (f"{n}_warn{u}", f"{n}_fail{u}")
    for n, u in (
        ("redis_ping", "_ms"),
        ("redis_memory", "_percent"),
        ("redis_clients", ""),
        ("rss", "_mb"),
        ("cpu", "_percent"),
        ("fds", "_percent"),
        ("loop_lag", "_s"),
        ("disk", "_percent"),
    )
]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    value: float | str | None
    unit: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SystemReport:
    overall: Status
    checks: list[Check]
    checked_at: str

    def by_name(self) -> dict[str, Check]:
        return {c.name: c for c in self.checks}

    def to_doc(self, ctx: JobContext) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "checks": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.checks},
            "checked_at": self.checked_at,
            "replica_id": ctx.replica_id,
            "fencing_token": ctx.fencing_token,
            "scheduled_time": ctx.scheduled_time.isoformat(),
        }


def grade(value: float, warn: float, fail: float) -> Status:
    """Higher is worse: fail at or above `fail`, warn at or above `warn`."""
    if value >= fail:
        return "fail"
    if value >= warn:
        return "warn"
    return "ok"


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default="ok")


async def _redis_checks(ctx: JobContext, cfg: SystemHealthConfig) -> list[Check]:
    try:
        started = time.monotonic()
        await ctx.redis.ping()
        ping_ms = (time.monotonic() - started) * 1000
        # The default sections hold memory, clients and replication; INFO with several
        # sections needs Redis 7.
        info = await ctx.redis.info()
    except (RedisError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        return [Check(n, "fail", None, "", detail) for n in ("redis_ping", "redis_memory", "redis_clients", "redis_role")]

    checks = [Check("redis_ping", grade(ping_ms, cfg.redis_ping_warn_ms, cfg.redis_ping_fail_ms), round(ping_ms, 3), "ms")]

    used, maxmem = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if maxmem <= 0:
        checks.append(Check("redis_memory", "ok", None, "percent", f"used {used} bytes, maxmemory unlimited"))
    else:
        pct = 100.0 * used / maxmem
        status = grade(pct, cfg.redis_memory_warn_percent, cfg.redis_memory_fail_percent)
        checks.append(Check("redis_memory", status, round(pct, 2), "percent", f"used {used} of {maxmem} bytes"))

    clients = int(info.get("connected_clients", 0))
    checks.append(Check("redis_clients", grade(clients, cfg.redis_clients_warn, cfg.redis_clients_fail), clients, "clients"))

    role = str(info.get("role", "unknown"))
    replicas = int(info.get("connected_slaves", 0))
    if role != "master":
        checks.append(Check("redis_role", "fail", role, "", "connected to a non-master: lease and result writes fail"))
    elif replicas < cfg.redis_min_replicas:
        detail = f"{replicas} connected replicas, fewer than {cfg.redis_min_replicas}"
        checks.append(Check("redis_role", "warn", role, "", detail))
    else:
        checks.append(Check("redis_role", "ok", role, "", f"{replicas} connected replicas"))
    return checks


_processes: dict[int, psutil.Process] = {}


def _process_sample(cpu_sample_s: float) -> tuple[float, float, int | None, int | None]:
    """(rss bytes, cpu percent, open fds, soft fd limit); blocking, run in a thread."""
    pid = os.getpid()
    proc = _processes.get(pid)
    if proc is None:
        # cpu_percent(None) measures since the previous call; the first call has none, so sample once.
        proc = _processes[pid] = psutil.Process(pid)
        cpu = proc.cpu_percent(interval=cpu_sample_s)
    else:
        cpu = proc.cpu_percent(interval=None)
    rss = proc.memory_info().rss
    fds: int | None = proc.num_fds() if hasattr(proc, "num_fds") else None
    limit: int | None = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):
        pass
    return float(rss), float(cpu), fds, limit


async def _process_checks(ctx: JobContext, cfg: SystemHealthConfig) -> list[Check]:
    rss, cpu, fds, fd_limit = await asyncio.to_thread(_process_sample, cfg.cpu_sample_s)
    rss_mb = rss / (1024 * 1024)
    checks = [
        Check("process_rss", grade(rss_mb, cfg.rss_warn_mb, cfg.rss_fail_mb), round(rss_mb, 1), "MB"),
        Check("process_cpu", grade(cpu, cfg.cpu_warn_percent, cfg.cpu_fail_percent), round(cpu, 1), "percent"),
    ]
    if fds is None or not fd_limit:
        checks.append(Check("process_fds", "ok", fds, "fds", "no fd limit to compare with"))
    else:
        pct = 100.0 * fds / fd_limit
        status = grade(pct, cfg.fds_warn_percent, cfg.fds_fail_percent)
        checks.append(Check("process_fds", status, fds, "fds", f"{pct:.1f}% of the soft limit {fd_limit}"))
    lag = float(ctx.loop_lag_s)
    checks.append(Check("loop_lag", grade(lag, cfg.loop_lag_warn_s, cfg.loop_lag_fail_s), round(lag, 4), "s"))
    return checks


async def _disk_check(path: str, cfg: SystemHealthConfig) -> Check:
    name = f"disk:{path}"
    try:
        async with asyncio.timeout(cfg.disk_timeout_s):
            usage = await asyncio.to_thread(psutil.disk_usage, path)
    except TimeoutError:
        return Check(name, "fail", None, "percent", f"no answer within {cfg.disk_timeout_s:g}s")
    except OSError as exc:
        return Check(name, "fail", None, "percent", f"{type(exc).__name__}: {exc.strerror or exc}")
    status = grade(usage.percent, cfg.disk_warn_percent, cfg.disk_fail_percent)
    return Check(name, status, usage.percent, "percent", f"{usage.free} bytes free")


async def check_system(ctx: JobContext) -> SystemReport:
    """Run every check, store the report (fenced; raises `FencedOut`) and return it."""
    cfg = ctx.config
    if not isinstance(cfg, SystemHealthConfig):
        raise TypeError(f"job {ctx.job_id!r} needs a SystemHealthConfig as ctx.config, got {type(cfg).__name__}")
    checked_at = datetime.now(UTC).isoformat()
    with ctx.span("system_checks"):
        redis_checks, process_checks, *disk_checks = await asyncio.gather(
            _redis_checks(ctx, cfg), _process_checks(ctx, cfg), *(_disk_check(p, cfg) for p in cfg.paths)
        )
    checks: list[Check] = [*redis_checks, *process_checks, *disk_checks]
    report = SystemReport(worst([c.status for c in checks]), checks, checked_at)
    bad = {c.name: f"{c.status}: {c.value} {c.unit} {c.detail}".strip() for c in checks if c.status != "ok"}
    if bad:
        log_event(ctx, logging.WARNING, "system health degraded", "system_health", overall=report.overall, checks=bad)
    else:
        log_event(ctx, logging.INFO, "system healthy", "system_health", overall=report.overall)
    await store_result(ctx, "system", report.to_doc(ctx), cfg.result_ttl_s, cfg.history_len)
    return report


async def system_health(ctx: JobContext) -> None:
    """Check Redis, this process and the configured disks (default every 30 s); see the module docstring."""
    await check_system(ctx)
