"""Sentinel: a master, one replica and three sentinels from the suite's
redis-server binary. Electors reach Redis only through `make_client` with
Sentinel settings; the master is SIGKILLed in mid-leadership.

Shows: the clients follow the failover to the promoted replica, fencing
tokens strictly increase, no two terms overlap, no slot is claimed twice, and
leadership (with its slot claims) continues on the new master. Also: WAIT with
`wait_replicas=1` refuses an acquisition no replica acknowledged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import anyio
import pytest

from leader import Identity, RedisLeaseStore
from scheduler.connection import make_client
from scheduler.errors import describe_redis_error
from scheduler.keys import Keyspace
from scheduler.settings import Settings
from tests.support.redis_servers import redis_binary
from tests.support.topologies import FAST_TIMINGS, ElectorFleet, SentinelSet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SENTINEL_PASSWORD = "sentinel-s3cret"


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("no redis-server binary for the Sentinel topology")
    topo = SentinelSet(binary, sentinel_password=SENTINEL_PASSWORD).start()
    try:
        yield topo
    finally:
        topo.stop()


def sentinel_settings(topo: SentinelSet, **extra: object) -> Settings:
    return Settings(
        redis_sentinels=topo.sentinel_addrs,
        redis_sentinel_master=topo.name,
        redis_sentinel_password=SENTINEL_PASSWORD,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        **{**FAST_TIMINGS, **extra},
    )


async def test_leadership_survives_a_sentinel_failover(sentinel_set: SentinelSet) -> None:
    settings = sentinel_settings(sentinel_set)
    fleet = ElectorFleet(settings, n=3)
    async with anyio.create_task_group() as tg:
        await tg.start(fleet.run)
        await wait_until(lambda: fleet.leader() is not None and len(fleet.all_claims()) >= 3, 15, "a leader claiming")
        first = fleet.leader()
        assert first is not None
        old_port = sentinel_set.master.port
        claims_before = len(fleet.all_claims())

        sentinel_set.master.kill()  # SIGKILL, mid-leadership
        killed_at = time.monotonic()
        new_port = await anyio.to_thread.run_sync(sentinel_set.wait_failover, old_port, 30)
        assert new_port == sentinel_set.replica.port

        # Leadership continues on the promoted replica: new claims land there.
        await wait_until(
            lambda: any(c.at_mono > killed_at for c in fleet.all_claims()) and fleet.leader() is not None,
            20,
            "slot claims after the failover",
        )
        await wait_until(lambda: len([c for c in fleet.all_claims() if c.at_mono > killed_at]) >= 5, 10, "5 claims")
        tg.cancel_scope.cancel()

    fleet.check_safety()
    assert len(fleet.all_claims()) > claims_before
    # The job's high-water mark is on the new master, written under the newest token.
    probe = make_client(settings, "cli")
    try:
        job = await probe.hgetall(Keyspace(settings.key_prefix).job(ElectorFleet.JOB))
        assert int(job[b"claimed_token"]) == max(c.token for c in fleet.all_claims())
        info = await probe.info("server")
        assert int(info["tcp_port"]) == new_port
    finally:
        await probe.aclose()


async def test_wait_one_replica_refuses_an_unacknowledged_acquisition(sentinel_set: SentinelSet) -> None:
    settings = sentinel_settings(sentinel_set, wait_replicas=1, wait_timeout_ms=900)
    keys = Keyspace(settings.key_prefix)
    store = RedisLeaseStore(make_client(settings, "lease"), keys, wait_replicas=1, wait_timeout_ms=900)  # wide: a loaded machine
    me = Identity("r1", "test", 1)
    try:
        held = await store.try_acquire(me, 3000, "2026-01-01T00:00:00Z")
        assert held.acquired, "with the replica up, WAIT 1 is acknowledged"
        assert await store.release(held.value or "")

        sentinel_set.replica.kill()
        res = await store.try_acquire(me, 3000, "2026-01-01T00:00:00Z")
        assert not res.acquired, "an acquisition no replica acknowledged must not count"
        holder, _ = await store.read()
        assert holder is None, "the unacknowledged lease is given back at once"
    finally:
        await store.aclose()


async def test_unknown_master_name_is_one_line(sentinel_set: SentinelSet) -> None:
    settings = Settings(
        redis_sentinels=sentinel_set.sentinel_addrs,
        redis_sentinel_master="nosuchmaster",
        redis_sentinel_password=SENTINEL_PASSWORD,
    )
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and SENTINEL_PASSWORD not in line
    assert "'nosuchmaster' not found" in line, line


async def test_wrong_sentinel_password_is_one_line(sentinel_set: SentinelSet) -> None:
    settings = Settings(
        redis_sentinels=sentinel_set.sentinel_addrs,
        redis_sentinel_master=sentinel_set.name,
        redis_sentinel_password="not-the-password",
    )
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and "not-the-password" not in line
    assert "rejected LIGHTSCHED_REDIS_SENTINEL_PASSWORD" in line, line
