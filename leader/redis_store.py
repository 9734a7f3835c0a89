"""The Redis adapter of the lease store.

Guarantees:
- acquire, renew and release are each one EVALSHA of a script below; ownership
  is checked inside Redis, never by a read followed by a write in Python.
  Scripts are registered once (redis-py `Script`) and reloaded on NOSCRIPT,
  so they survive a Redis restart.
- Each acquisition is identified by its fencing token and a random `lease_id`
  the client draws per attempt (`leader.fence`); fenced scripts compare both.
  Within one Redis data history tokens strictly increase; after a restart that
  lost every key a new token is still at least Redis' TIME in milliseconds.
  A failover that loses an acquisition, or a host clock that stepped back,
  may mint a number again; the lease id still differs.
- Every script is idempotent for its caller, so a command re-sent after a
  lost reply is harmless: a re-sent acquire finds its own lease id and counts
  as acquired; renew and release compare the whole value.
- With `wait_replicas > 0`, script and WAIT go down one connection
  (`leader.redis_scripts`). An acquire that fewer replicas acknowledge within
  `wait_timeout_ms` is given back and counts as not acquired; such a renew
  raises `StoreNotReplicated` (the elector steps down at once).
- Transient Redis trouble (connection loss, timeouts, LOADING, READONLY,
  TRYAGAIN, cluster redirections, failovers) raises `StoreUnavailable`. In
  the contest itself (acquire, renew, release) any other Redis error (NOPERM,
  OOM, ...) raises `StoreRejected`, so the elector can retry without crashing.
  The inspection calls (`read`, `current_token`, `request_handoff`) let those
  through as redis-py raised them, for the CLI to describe.
- A leader key that is not a string (something else wrote a hash there) counts
  as held by a foreign holder; renew and release leave it alone.

Does not guarantee: the lease's survival of a Redis failover when
`wait_replicas` is 0 (an unreplicated write can be lost with the master), nor
when the promoted replica is not one that acknowledged the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from .fence import new_lease_id
from .keys import LeaseKeys
from .redis_scripts import run_scripts
from .store import AcquireResult, Identity, LeaseHolder, StoreNotReplicated, StoreRejected, StoreUnavailable

__all__ = ["ACQUIRE_LUA", "RELEASE_LUA", "RENEW_LUA", "RedisLeaseStore", "TRANSIENT_ERRORS"]

log = logging.getLogger("lightsched.leader")

#: Errors after which a retry may succeed. NoPermissionError and OOM are not in
#: it: they need an operator. (redis-py files AuthenticationError under
#: ConnectionError, so a wrong password counts as transient: the password may
#: be fixed in the ACL while we keep trying.)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ReadOnlyError,
    rexc.TryAgainError,
    rexc.ClusterDownError,
    rexc.MasterDownError,
    rexc.ClusterError,
    rexc.AskError,
    rexc.MovedError,
    rexc.RedisClusterException,  # cluster unreachable, SlotNotCoveredError: not RedisErrors
    OSError,
    TimeoutError,
)

# KEYS[1] leader key, KEYS[2] token key
# ARGV[1] ttl_ms, ARGV[2] replica_id, ARGV[3] host, ARGV[4] pid, ARGV[5] acquired_at (ISO 8601 UTC),
# ARGV[6] lease_id (random, one per attempt)
# Returns {1, value, token} when acquired (value: the stored JSON, token as a
# string), or {0, holder_value, holder_pttl_ms} when the key is held; a key of
# another type is reported as held with the value '<type>'.
# A key that already holds ARGV[6] is this very attempt, re-sent after its
# reply was lost: it counts as acquired. Its PEXPIRE is a write on purpose, so a
# WAIT that follows a re-send on a new connection still covers the first SET.
# pcall: a WRONGTYPE error must not fail the script (a foreign key is just held).
ACQUIRE_LUA = """
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'table' then
  return {0, '<' .. redis.call('TYPE', KEYS[1])['ok'] .. '>', redis.call('PTTL', KEYS[1])}
end
if held then
  local ok, lease = pcall(cjson.decode, held)
  if ok and type(lease) == 'table' and lease.lease_id == ARGV[6] and type(lease.fencing_token) == 'number' then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return {1, held, string.format('%.0f', lease.fencing_token)}
  end
  return {0, held, redis.call('PTTL', KEYS[1])}
end
local last = tonumber(redis.pcall('GET', KEYS[2])) or 0
local now = redis.call('TIME')
local floor_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local token = string.format('%.0f', math.max(last + 1, floor_ms))
redis.call('SET', KEYS[2], token)
local value = '{"replica_id":' .. cjson.encode(ARGV[2]) ..
  ',"host":' .. cjson.encode(ARGV[3]) ..
  ',"pid":' .. string.format('%d', tonumber(ARGV[4])) ..
  ',"fencing_token":' .. token ..
  ',"lease_id":' .. cjson.encode(ARGV[6]) ..
  ',"acquired_at":' .. cjson.encode(ARGV[5]) .. '}'
redis.call('SET', KEYS[1], value, 'PX', ARGV[1])
return {1, value, token}
"""

# KEYS[1] leader key
# ARGV[1] the exact value the caller stored, ARGV[2] ttl_ms
# Returns 1 when renewed, 0 when the key no longer holds ARGV[1].
RENEW_LUA = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] leader key
# ARGV[1] the exact value the caller stored, ARGV[2] the released channel
# Returns 1 when deleted (and announced), 0 when the key no longer holds ARGV[1].
RELEASE_LUA = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

#: How often a quiet listener pings its pub/sub connection to notice a dead
#: one. A dead listener costs only takeover speed (standbys still retry), so
#: this is rare: it is part of every standby's steady command rate.
LISTEN_PING_INTERVAL_S = 60.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _store_error(exc: BaseException, what: str = "redis") -> StoreUnavailable | StoreRejected:
    kind = StoreUnavailable if isinstance(exc, TRANSIENT_ERRORS) else StoreRejected
    return kind(f"{what}: {type(exc).__name__}: {exc}")


class RedisLeaseStore:
    """`LeaseStore` on one Redis deployment (standalone, Sentinel or Cluster client).

    Give it a client of its own (its own connection pool): renewals must not
    queue behind the jobs' traffic.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: LeaseKeys,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        pubsub_client: Redis | RedisCluster | None = None,
    ) -> None:
        self._client = client
        self._pubsub_client = pubsub_client or client
        self.keys = keys
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def __repr__(self) -> str:
        return f"RedisLeaseStore(prefix={self.keys.prefix!r}, wait_replicas={self._wait_replicas})"

    async def _write(
        self, script: AsyncScript, keys: list[str], args: list[Any], *, replicated: bool = True
    ) -> tuple[Any, bool]:
        """Run a lease-writing script and, with `wait_replicas` > 0 and `replicated`, WAIT
        on the same connection (`leader.redis_scripts`). Returns (script result, enough acks)."""
        try:
            (res,), acked = await run_scripts(
                self._client,
                [(script, keys, args)],
                wait_replicas=self._wait_replicas if replicated else 0,
                wait_timeout_ms=self._wait_timeout_ms,
            )
        except (*TRANSIENT_ERRORS, rexc.RedisError) as exc:
            raise _store_error(exc) from exc
        if isinstance(res, Exception):
            raise _store_error(res) from res
        if acked is not None and acked < self._wait_replicas:
            log.warning(
                "lease write acknowledged by too few replicas",
                extra={"event": "lease_wait_short", "acked": acked, "wanted": self._wait_replicas},
            )
            return res, False
        return res, True

    async def try_acquire(
        self, identity: Identity, ttl_ms: int, acquired_at: str, lease_id: str | None = None
    ) -> AcquireResult:
        lease_id = lease_id or new_lease_id()
        res, replicated = await self._write(
            self._acquire,
            [self.keys.leader, self.keys.token],
            [ttl_ms, identity.replica_id, identity.host, identity.pid, acquired_at, lease_id],
        )
        if int(res[0]) != 1:
            return AcquireResult(False, holder=LeaseHolder.parse(res[1]), holder_pttl_ms=int(res[2]))
        value, token = _text(res[1]), int(_text(res[2]))
        if not replicated:
            # Not safely held: give it back so nobody waits out a TTL for it.
            await self.release(value)
            return AcquireResult(False)
        return AcquireResult(True, value=value, token=token, lease_id=lease_id)

    async def renew(self, value: str, ttl_ms: int) -> bool:
        res, replicated = await self._write(self._renew, [self.keys.leader], [value, ttl_ms])
        if int(res) != 1:
            return False
        if not replicated:
            raise StoreNotReplicated(f"renew acknowledged by fewer than {self._wait_replicas} replicas")
        return True

    async def release(self, value: str) -> bool:
        # No WAIT: giving the lease back needs no durability (a lost release only costs a TTL).
        res, _ = await self._write(
            self._release, [self.keys.leader], [value, self.keys.released_channel], replicated=False
        )
        return int(res) == 1

    async def read(self) -> tuple[LeaseHolder | None, int | None]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.leader)
                pipe.pttl(self.keys.leader)
                pipe.type(self.keys.leader)
                raw, pttl, kind = await pipe.execute(raise_on_error=False)
        except TRANSIENT_ERRORS as exc:
            raise _store_error(exc) from exc
        if isinstance(raw, rexc.ResponseError) and not isinstance(kind, Exception) and _text(kind) != "string":
            raw = f"<{_text(kind)}>"  # WRONGTYPE: not a lease, but held all the same
        for result in (raw, pttl, kind):
            if isinstance(result, TRANSIENT_ERRORS):
                raise _store_error(result) from result
            if isinstance(result, Exception):
                raise result
        if raw is None:
            return None, None
        return LeaseHolder.parse(raw), int(pttl)

    async def current_token(self) -> int | None:
        try:
            raw = await self._client.get(self.keys.token)
        except TRANSIENT_ERRORS as exc:
            raise _store_error(exc) from exc
        return None if raw is None else int(raw)

    async def request_handoff(self, fence: str) -> int:
        try:
            return int(await self._client.publish(self.keys.handoff_channel, fence))
        except TRANSIENT_ERRORS as exc:
            raise _store_error(exc) from exc

    async def listen(
        self,
        on_released: Callable[[], None],
        on_handoff: Callable[[str], None],
        on_error: Callable[[BaseException], None] | None = None,
        retry_delay_s: Callable[[int], float] = lambda failures: min(5.0, 0.1 * 2**failures),
    ) -> None:
        """Subscribe to the release and handoff channels until cancelled.

        Reconnects after errors; a message lost while disconnected costs only
        speed (standbys still retry on their timer), never safety.
        """
        failures = 0
        while True:
            pubsub = self._pubsub_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.released_channel, self.keys.handoff_channel)
                failures = 0
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_PING_INTERVAL_S)
                    if msg is None:
                        with anyio.fail_after(5):
                            await pubsub.ping()
                        continue
                    channel = _text(msg["channel"])
                    if channel == self.keys.released_channel:
                        on_released()
                    elif channel == self.keys.handoff_channel:
                        on_handoff(_text(msg["data"]))
            except (*TRANSIENT_ERRORS, rexc.RedisError) as exc:
                failures += 1
                if on_error is not None:
                    on_error(exc)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await pubsub.aclose()
            await anyio.sleep(retry_delay_s(failures))

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._pubsub_client is not self._client:
            await self._pubsub_client.aclose()
