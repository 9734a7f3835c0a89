"""The leader-gated runtime in one process, on a real Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from observability.telemetry import Telemetry
from scheduler import JobContext, JobRegistry
from scheduler.embed import run_scheduler
from scheduler.runtime import Replica
from scheduler.settings import load_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def make(redis_url: str, prefix: str, registry: JobRegistry, name: str, **overrides: Any) -> Replica:
    settings = load_settings(
        redis_url=redis_url, key_prefix=prefix, replica_id=name, lease_ttl=2.0, renew_deadline=1.2,
        retry_period=0.3, misfire_grace_time=10, http_port=0, drain_timeout=5, **overrides,
    )
    return Replica(settings, registry, telemetry=Telemetry(name, registry=CollectorRegistry()))


async def test_only_the_leader_runs_and_slots_are_the_trigger_grid(redis_url: str, key_prefix: str) -> None:
    runs: list[tuple[str, int, datetime]] = []
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    reg = JobRegistry()

    @reg.job("grid", trigger=IntervalTrigger(seconds=0.5, start_date=start, timezone=UTC))
    async def grid(ctx: JobContext) -> None:
        runs.append((ctx.replica_id, ctx.fencing_token, ctx.scheduled_time))

    a, b = make(redis_url, key_prefix, reg, "a"), make(redis_url, key_prefix, reg, "b")
    async with run_scheduler(a), run_scheduler(b):
        await wait_until(lambda: len(runs) >= 5, what="5 runs")
        leader = a if a.is_leader else b
    assert {r[0] for r in runs} == {leader.settings.replica_id}
    for _, _, slot in runs:
        offset = (slot - start).total_seconds()
        assert abs(offset * 2 - round(offset * 2)) < 1e-3, f"{slot} is not on the 0.5 s grid from {start}"
    assert len({r[2] for r in runs}) == len(runs), "no slot twice"


async def test_retries_run_under_the_same_slot_and_token(redis_url: str, key_prefix: str) -> None:
    attempts: list[tuple[int, int, datetime]] = []
    reg = JobRegistry()

    @reg.job("flaky", trigger="30s", retries=3, retry_backoff=0.05, retry_backoff_max=0.1)
    async def flaky(ctx: JobContext) -> None:
        attempts.append((ctx.attempt, ctx.fencing_token, ctx.scheduled_time))
        if ctx.attempt < 3:
            raise ValueError("not yet")

    rep = make(redis_url, key_prefix, reg, "a")
    async with run_scheduler(rep):
        await wait_until(lambda: rep.is_leader, what="leadership")
        record = await rep.execute(reg.get("flaky"), datetime.now(UTC), rep.elector.current_term())
    assert record["status"] == "success" and record["attempts"] == 3
    assert [a[0] for a in attempts] == [1, 2, 3]
    assert len({(a[1], a[2]) for a in attempts}) == 1, "same token and slot for every attempt"


async def test_failure_timeout_and_no_retry_into_the_next_slot(redis_url: str, key_prefix: str) -> None:
    reg = JobRegistry()
    calls = {"boom": 0}

    @reg.job("boom", trigger="1s", retries=5, retry_backoff=0.4)
    async def boom(ctx: JobContext) -> None:
        calls["boom"] += 1
        raise RuntimeError("broken " * 200)

    @reg.job("slow", trigger="30s", timeout=0.2)
    async def slow(ctx: JobContext) -> None:
        await anyio.sleep(5)

    rep = make(redis_url, key_prefix, reg, "a", disabled_jobs="boom,slow")
    async with run_scheduler(rep):
        await wait_until(lambda: rep.is_leader, what="leadership")
        term = rep.elector.current_term()
        slot = datetime.now(UTC)
        rec = await rep.execute(reg.get("boom"), slot, term, next_slot=slot + timedelta(seconds=1))
        assert rec["status"] == "failed"
        assert 1 <= rec["attempts"] <= 2, "backoff 0.4, 0.8... must stop before the next slot 1 s later"
        assert rec["error"].startswith("RuntimeError: broken") and len(rec["error"]) <= 500
        rec = await rep.execute(reg.get("slow"), slot, term)
        assert rec["status"] == "timeout"


async def test_plain_functions_run_in_a_worker_thread(redis_url: str, key_prefix: str) -> None:
    seen: list[str] = []
    reg = JobRegistry()

    @reg.job("sync", trigger="30s")
    def sync_job(ctx: JobContext) -> None:
        seen.append(threading.current_thread().name)

    rep = make(redis_url, key_prefix, reg, "a")
    async with run_scheduler(rep):
        await wait_until(lambda: rep.is_leader, what="leadership")
        rec = await rep.execute(reg.get("sync"), datetime.now(UTC), rep.elector.current_term())
    assert rec["status"] == "success"
    assert seen and seen[0] != threading.main_thread().name


async def test_kill_switch_replica_never_contends(redis_url: str, key_prefix: str) -> None:
    reg = JobRegistry()
    reg.add("x", lambda ctx: None, trigger="1s")
    rep = make(redis_url, key_prefix, reg, "off", enabled=False)
    async with run_scheduler(rep):
        await anyio.sleep(1.0)  # several retry periods in which it could have contended
        assert not rep.is_leader
        status = await rep.status()
        assert status.enabled is False and status.leader is None and status.job_count == 1
    client = aioredis.Redis.from_url(redis_url)
    assert await client.get("{" + key_prefix + "}:leader") is None
    await client.aclose()


async def test_handoff_drains_the_inflight_run_then_another_leads(redis_url: str, key_prefix: str) -> None:
    finished: list[str] = []
    started = anyio.Event()
    reg = JobRegistry()

    @reg.job("long", trigger=IntervalTrigger(seconds=0.3))
    async def long(ctx: JobContext) -> None:
        started.set()
        await anyio.sleep(0.5)
        assert await ctx.fenced_set(ctx.key("done"), ctx.replica_id), "writes still land while draining"
        finished.append(ctx.replica_id)

    a, b = make(redis_url, key_prefix, reg, "a"), make(redis_url, key_prefix, reg, "b")
    async with run_scheduler(a), run_scheduler(b):
        first = await wait_until(lambda: a if a.is_leader else (b if b.is_leader else None), what="a leader")
        other = b if first is a else a
        await started.wait()
        assert await first.request_handoff()
        assert finished and finished[0] == first.settings.replica_id, "the in-flight run finished before release"
        await wait_until(lambda: other.is_leader, timeout_s=5, what="takeover")
        assert not first.is_leader


async def test_losing_the_lease_cancels_the_inflight_run(redis_url: str, key_prefix: str) -> None:
    cancelled = anyio.Event()
    reg = JobRegistry()

    @reg.job("stuck", trigger=IntervalTrigger(seconds=0.2))
    async def stuck(ctx: JobContext) -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    rep = make(redis_url, key_prefix, reg, "a")
    client = aioredis.Redis.from_url(redis_url)
    async with run_scheduler(rep):
        await wait_until(lambda: rep.is_leader and rep._executor.tasks, what="a run in flight")
        await client.set("{" + key_prefix + "}:leader", '{"replica_id":"thief","fencing_token":1}', px=60_000)
        with anyio.fail_after(10):
            await cancelled.wait()
        assert not rep.is_leader
        assert rep._last_records["stuck"]["status"] == "cancelled"
    await client.aclose()


async def test_a_run_cancelled_before_it_starts_does_not_block_the_job() -> None:
    """Losing leadership in the same loop turn as a submission (a frozen process waking up)
    cancels a task before its first step; the job must still run when submitted again."""
    from types import SimpleNamespace

    from scheduler.executor import JobExecutor

    ran: list[str] = []

    async def submit(job_id: str, run_times: list[datetime]) -> None:
        ran.append(job_id)

    executor = JobExecutor(submit, lambda job_id, slots: None)
    executor.bind(__import__("asyncio").get_running_loop())
    job = SimpleNamespace(id="j")
    executor.submit_job(job, [datetime.now(UTC)])  # type: ignore[arg-type]
    assert executor.cancel_all() == 1  # before the task's first step
    await wait_until(lambda: not executor.tasks, timeout_s=5, what="the cancelled task to go")
    assert ran == []
    executor.submit_job(job, [datetime.now(UTC)])  # type: ignore[arg-type]
    await wait_until(lambda: ran == ["j"], timeout_s=5, what="the next submission to run")
