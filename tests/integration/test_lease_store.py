"""RedisLeaseStore on a real Redis: atomic, ownership-checked, fenced, restart-proof."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import anyio
import pytest
from redis.asyncio import Redis

from leader import Identity, LeaseHolder, RedisLeaseStore, StoreRejected
from tests.support.elector_proc import make_store, wait_for
from tests.support.redis_servers import ServerLike, redis_cli

pytestmark = pytest.mark.anyio

ME = Identity(replica_id="replica-a", host="host-a", pid=101)
OTHER = Identity(replica_id="replica-b", host="host-b", pid=202)
TTL_MS = 10_000
NOW = "2026-01-01T00:00:00.000+00:00"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[RedisLeaseStore]:
    s = make_store(redis_url, key_prefix)
    yield s
    await s.aclose()


async def acquire_value(store: RedisLeaseStore, who: Identity = ME) -> tuple[str, int]:
    res = await store.try_acquire(who, TTL_MS, NOW)
    assert res.acquired and res.value is not None and res.token is not None
    return res.value, res.token


async def test_acquire_writes_human_readable_json_with_a_ttl(
    store: RedisLeaseStore, redis_url: str, key_prefix: str, raw: Redis
) -> None:
    value, token = await acquire_value(store)
    cli = redis_cli()
    assert cli is not None
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(
        [cli, "-p", port, "GET", f"{{{key_prefix}}}:leader"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == value
    data = json.loads(out)
    assert data["replica_id"] == "replica-a" and data["host"] == "host-a" and data["pid"] == 101
    assert data["fencing_token"] == token
    assert datetime.fromisoformat(data["acquired_at"]).utcoffset() == timedelta(0)
    assert 8_000 < await raw.pttl(store.keys.leader) <= TTL_MS
    holder, pttl = await store.read()
    assert holder == LeaseHolder.parse(value) and pttl is not None and 8_000 < pttl <= TTL_MS


async def test_a_held_lease_is_not_taken_and_mints_no_token(store: RedisLeaseStore, raw: Redis) -> None:
    await raw.set(store.keys.token, 10**15)  # far above Redis TIME, so +1 steps are visible
    value, token = await acquire_value(store)
    assert token == 10**15 + 1
    for _ in range(5):
        res = await store.try_acquire(OTHER, TTL_MS, NOW)
        assert not res.acquired
        assert res.holder is not None and res.holder.replica_id == "replica-a"
        assert res.holder_pttl_ms is not None and 8_000 < res.holder_pttl_ms <= TTL_MS
    assert await store.current_token() == 10**15 + 1
    assert await store.release(value)
    _, token2 = await acquire_value(store, OTHER)
    assert token2 == 10**15 + 2


async def test_renew_extends_only_our_own_lease(store: RedisLeaseStore, raw: Redis) -> None:
    value, _ = await acquire_value(store)
    await raw.pexpire(store.keys.leader, 3_000)
    assert await store.renew(value, TTL_MS)
    assert 8_000 < await raw.pttl(store.keys.leader) <= TTL_MS
    assert not await store.renew(value.replace("replica-a", "replica-x"), TTL_MS)
    # Theft, as redis-py's lock tests simulate it: someone else's value, no TTL.
    await raw.set(store.keys.leader, "thief")
    assert not await store.renew(value, TTL_MS)
    assert await raw.get(store.keys.leader) == b"thief"
    assert await raw.pttl(store.keys.leader) == -1


async def test_release_deletes_only_our_own_lease_and_announces_it(store: RedisLeaseStore, raw: Redis) -> None:
    value, _ = await acquire_value(store)
    released: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.listen, lambda: released.append(1), lambda token: None)
        await wait_until_subscribed(raw, store.keys.released_channel)
        assert not await store.release("not ours")
        assert await raw.get(store.keys.leader) == value.encode()
        assert await store.release(value)
        assert await raw.exists(store.keys.leader) == 0
        await wait_for(lambda: released, 5)
        assert not await store.release(value)  # already gone
        tg.cancel_scope.cancel()
    assert released == [1]


async def wait_until_subscribed(raw: Redis, channel: str) -> None:
    with anyio.fail_after(5):
        while not (await raw.pubsub_numsub(channel))[0][1]:
            await anyio.sleep(0.01)


async def test_release_after_theft_leaves_the_thief_alone(store: RedisLeaseStore, raw: Redis) -> None:
    value, _ = await acquire_value(store)
    await raw.set(store.keys.leader, "thief", px=5_000)
    assert not await store.release(value)
    assert await raw.get(store.keys.leader) == b"thief"


@pytest.mark.parametrize("kind", ["string", "hash"])
async def test_a_foreign_leader_key_counts_as_held_and_crashes_nothing(
    store: RedisLeaseStore, raw: Redis, kind: str
) -> None:
    if kind == "string":
        await raw.set(store.keys.leader, "locked by a cron script")
    else:
        await raw.hset(store.keys.leader, "owner", "someone")
    res = await store.try_acquire(ME, TTL_MS, NOW)
    assert not res.acquired
    assert res.holder is not None and res.holder.foreign
    assert res.holder_pttl_ms == -1
    ours = json.dumps({"replica_id": "replica-a", "fencing_token": 1})
    assert not await store.renew(ours, TTL_MS)
    assert not await store.release(ours)
    assert await raw.type(store.keys.leader) == kind.encode()
    assert await raw.pttl(store.keys.leader) == -1
    holder, pttl = await store.read()
    assert holder is not None and holder.foreign and pttl == -1


async def test_scripts_survive_script_flush(store: RedisLeaseStore, raw: Redis) -> None:
    value, _ = await acquire_value(store)
    await raw.script_flush()
    assert await store.renew(value, TTL_MS)
    await raw.script_flush()
    assert await store.release(value)
    await raw.script_flush()
    await acquire_value(store)


async def test_tokens_increase_and_scripts_survive_a_restart_that_loses_everything(redis_server: ServerLike) -> None:
    store = make_store(redis_server.url, "restart")
    try:
        tokens = [(await acquire_value(store))[1]]
        for _ in range(2):
            redis_server.restart()
            # The first command after the restart meets a dead connection and a
            # server that knows no scripts; the store must absorb both.
            value, token = await acquire_value(store)
            tokens.append(token)
            assert await store.renew(value, TTL_MS)
        assert tokens == sorted(set(tokens)), tokens
    finally:
        await store.aclose()


async def test_too_few_replicas_means_not_acquired_and_nothing_left_behind(
    redis_url: str, key_prefix: str, raw: Redis
) -> None:
    base = make_store(redis_url, key_prefix)
    store = RedisLeaseStore(base._client, base.keys, wait_replicas=1, wait_timeout_ms=50)
    try:
        res = await store.try_acquire(ME, TTL_MS, NOW)
        assert not res.acquired
        assert await raw.exists(store.keys.leader) == 0
    finally:
        await store.aclose()


async def test_an_acl_refusal_is_store_rejected_without_the_password(redis_url: str, key_prefix: str, raw: Redis) -> None:
    user, password = f"u{key_prefix}", f"pw-{os.urandom(6).hex()}"
    await raw.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-evalsha", "-eval")
    try:
        url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
        store = make_store(url, key_prefix)
        try:
            with pytest.raises(StoreRejected) as err:
                await store.try_acquire(ME, TTL_MS, NOW)
            assert "NoPermissionError" in str(err.value)
            assert password not in str(err.value)
        finally:
            await store.aclose()
    finally:
        await raw.execute_command("ACL", "DELUSER", user)
