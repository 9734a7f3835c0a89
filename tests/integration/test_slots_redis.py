"""Slot claims and run records on a real Redis."""

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from leader import Identity, RedisLeaseStore, fence_arg
from scheduler.keys import Keyspace
from scheduler.slots import SlotStore

pytestmark = pytest.mark.anyio
T = datetime(2026, 5, 1, 10, tzinfo=UTC)


async def _lead(client: aioredis.Redis, keys: Keyspace, name: str = "a") -> tuple[str, int]:
    """Acquire the lease; (its fence, its token)."""
    res = await RedisLeaseStore(client, keys).try_acquire(Identity(name, "h", 1), 10_000, T.isoformat())
    assert res.acquired and res.token is not None and res.lease_id is not None
    return fence_arg(res.token, res.lease_id), res.token


def _rec(n: object) -> dict[str, object]:
    return {"run_id": f"run-{n}", "n": n}


async def test_a_slot_is_claimed_once_and_never_before_a_later_one(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys)
    fence, token = await _lead(client, keys)
    first = await slots.claim("j", T, fence, token, "a", T + timedelta(seconds=10))
    assert first.ok
    again = await slots.claim("j", T, fence, token, "a", None)
    assert (again.ok, again.reason) == (False, "claimed"), "a second claim of one slot by one term is refused"
    later = await slots.claim("j", T + timedelta(seconds=10), fence, token, "a", None)
    assert later.ok
    older = await slots.claim("j", T + timedelta(seconds=5), fence, token, "a", None)
    assert (older.ok, older.reason) == (False, "claimed"), "an older slot cannot run after a newer one"
    assert (await slots.last_slots(["j", "other"])) == {"j": int((T + timedelta(seconds=10)).timestamp() * 1000), "other": None}
    await client.aclose()


async def test_a_stale_token_claims_and_records_nothing(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys)
    stale, stale_token = await _lead(client, keys, "old")
    await client.delete(keys.leader)  # lease expired
    fresh, fresh_token = await _lead(client, keys, "new")
    assert fresh_token > stale_token
    refused = await slots.claim("j", T, stale, stale_token, "old", None)
    assert (refused.ok, refused.reason) == (False, "fenced")
    assert not await slots.record("j", stale, {"status": "success", "run_id": "r1"})
    assert await client.hgetall(keys.job("j")) == {}
    assert (await slots.claim("j", T, fresh, fresh_token, "new", None)).ok
    assert await slots.record("j", fresh, {"status": "success", "run_id": "r2"})
    await client.delete(keys.leader)  # no lease at all: even the last token is refused
    assert (await slots.claim("j", T + timedelta(seconds=1), fresh, fresh_token, "new", None)).reason == "fenced"
    await client.aclose()


async def test_run_history_is_capped(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    slots = SlotStore(client, keys, history=3)
    fence, _ = await _lead(client, keys)
    for i in range(5):
        assert await slots.record("j", fence, _rec(i))
    assert await client.llen(keys.runs("j")) == 3
    assert b'"n":4' in await client.hget(keys.job("j"), "last_run")
    await client.aclose()


async def test_a_leader_key_of_another_type_fences_instead_of_erroring(redis_url: str, key_prefix: str) -> None:
    from scheduler.fencing import Fence

    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    await client.hset(keys.leader, "not", "a lease")
    fence = Fence(client, keys)
    assert not await fence.set("1:x", keys.data("x"), "v")
    assert await fence.unlink("1:x", [keys.data("x")]) is None
    assert not (await SlotStore(client, keys).claim("j", T, "1:x", 1, "a", None)).ok
    await client.aclose()
