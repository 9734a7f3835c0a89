"""Slot claims and run records on a real Redis."""

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from leader import Identity, RedisLeaseStore
from scheduler.keys import Keyspace
from scheduler.slots import SlotStore

pytestmark = pytest.mark.anyio
T = datetime(2026, 5, 1, 10, tzinfo=UTC)


async def _lead(client: aioredis.Redis, keys: Keyspace, name: str = "a") -> int:
    res = await RedisLeaseStore(client, keys).try_acquire(Identity(name, "h", 1), 10_000, T.isoformat())
    assert res.acquired and res.token is not None
    return res.token


async def test_a_slot_is_claimed_once_and_never_before_a_later_one(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys)
    token = await _lead(client, keys)
    first = await slots.claim("j", T, token, "a", T + timedelta(seconds=10))
    assert first.ok
    again = await slots.claim("j", T, token, "a", None)
    assert (again.ok, again.reason) == (False, "claimed")
    later = await slots.claim("j", T + timedelta(seconds=10), token, "a", None)
    assert later.ok
    older = await slots.claim("j", T + timedelta(seconds=5), token, "a", None)
    assert (older.ok, older.reason) == (False, "claimed"), "an older slot cannot run after a newer one"
    assert (await slots.last_slots(["j", "other"])) == {"j": int((T + timedelta(seconds=10)).timestamp() * 1000), "other": None}
    await client.aclose()


async def test_a_stale_token_claims_and_records_nothing(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys)
    stale = await _lead(client, keys, "old")
    await client.delete(keys.leader)  # lease expired
    fresh = await _lead(client, keys, "new")
    assert fresh > stale
    refused = await slots.claim("j", T, stale, "old", None)
    assert (refused.ok, refused.reason) == (False, "fenced")
    assert not await slots.record("j", stale, {"status": "success"})
    assert await client.hgetall(keys.job("j")) == {}
    assert (await slots.claim("j", T, fresh, "new", None)).ok
    assert await slots.record("j", fresh, {"status": "success"})
    await client.delete(keys.leader)  # no lease at all: even the last token is refused
    assert (await slots.claim("j", T + timedelta(seconds=1), fresh, "new", None)).reason == "fenced"
    await client.aclose()


async def test_run_history_is_capped(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys, history=3)
    token = await _lead(client, keys)
    for i in range(5):
        assert await slots.record("j", token, {"n": i})
    assert await client.llen(keys.runs("j")) == 3
    assert b'"n":4' in await client.hget(keys.job("j"), "last_run")
    await client.aclose()


async def test_a_leader_key_of_another_type_fences_instead_of_erroring(redis_url: str, key_prefix: str) -> None:
    from scheduler.fencing import Fence

    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    await client.hset(keys.leader, "not", "a lease")
    fence = Fence(client, keys)
    assert not await fence.set(1, keys.data("x"), "v")
    assert await fence.unlink(1, [keys.data("x")]) is None
    assert not (await SlotStore(client, keys).claim("j", T, 1, "a", None)).ok
    await client.aclose()
