"""Regression tests for runtime issues the chaos suite found."""

from __future__ import annotations

import time

import anyio
import pytest

from scheduler import JobContext, JobRegistry
from scheduler.keys import Keyspace
from scheduler.runtime import Replica
from scheduler.settings import load_settings


@pytest.mark.anyio
async def test_catchup_does_not_drop_the_next_slot(redis_url: str, key_prefix: str) -> None:
    """A new leader catches up two missed slots (coalesce off) whose runs take 0.3 s
    each; the next slot falls due 0.25 s in, while the catch-up still runs. It is
    within the misfire grace, so it must run late (APScheduler's max-instances
    check used to drop it)."""
    ran: list[int] = []
    registry = JobRegistry()

    @registry.job("j", trigger="0.5s", coalesce=False, timeout=10)
    async def j(ctx: JobContext) -> None:
        ran.append(round(ctx.scheduled_time.timestamp() * 1000))
        await anyio.sleep(0.3)

    settings = load_settings(redis_url=redis_url, key_prefix=key_prefix, lease_ttl=2, renew_deadline=1.5,
                             retry_period=0.3, misfire_grace_time=10, http_port=0, replica_id="repro")
    keys = Keyspace(key_prefix)
    now_ms = round(time.time() * 1000)
    seeded = now_ms - 1250  # catch-up: seeded+500 and seeded+1000; next: seeded+1500 = now+250
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.hset(keys.job("j"), "last_slot_ms", seeded)
    replica = Replica(settings, registry)
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        with anyio.fail_after(15):
            while len(ran) < 4:
                await anyio.sleep(0.05)
        replica.request_stop(now=True)
    client.close()
    assert ran[:3] == [seeded + 500, seeded + 1000, seeded + 1500], ran
