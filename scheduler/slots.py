"""Slots: one (job id, scheduled fire time) pair runs at most once per deployment.

Pure part: `plan_resume()` computes, from a job's last claimed slot and "now",
where its schedule continues and which slots were missed or will be coalesced.
It takes `now` as an argument, so DST and failover cases are tested with an
injected time.

Redis part: `SlotStore.claim()` is one Lua script that checks the lease's
fence (token and lease id) and a per-job high-water mark: a slot is claimed
only if its fire time is later than every slot claimed before for that job,
by any leader, and not more than a small bound ahead of Redis' clock. Two
successful claims of one slot by different terms are therefore impossible,
and so is running an older slot after a newer one. A claim re-sent by the
same term (a lost reply) succeeds again, so the slot is neither run twice nor
silently skipped. With `wait_replicas` > 0 a claim counts only once enough
replicas acknowledged it, so a failover cannot forget it.

Does not guarantee: that a claimed slot finished; a leader may die mid-run
(the next leader does not re-run it). With `wait_replicas` = 0 a failover
that loses the last writes can forget a claim (see docs/DESIGN.md).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

from leader import fenced_script, run_scripts

from .keys import Keyspace

__all__ = [
    "CLAIM_SLOT_LUA",
    "RECORD_RUN_LUA",
    "SET_NEXT_LUA",
    "ClaimResult",
    "FoldSafeTrigger",
    "ResumePlan",
    "SlotStore",
    "from_ms",
    "plan_resume",
    "to_ms",
]

#: Upper bound on slots walked when counting missed ones after a long outage.
MAX_SLOTS_WALKED = 100_000


def to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def from_ms(ms: int, tz: Any = UTC) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz)


def _wall(dt: datetime, tz: Any = None) -> datetime:
    """The real local wall time of an instant (via UTC: a non-existent label is normalised)."""
    return dt.astimezone(UTC).astimezone(tz or dt.tzinfo).replace(tzinfo=None)


class FoldSafeTrigger(BaseTrigger):
    """A cron trigger whose slots are local wall-clock times, each run once.

    When daylight saving ends, an hour of local time repeats; APScheduler 3
    fires again for each repeated wall time (a daily 02:30 job runs twice).
    Here a fire time whose local wall time is not later than the previous
    slot's is skipped: no slot runs twice in the repeated hour. When DST
    starts, a slot whose wall time does not exist runs once, at the instant
    APScheduler maps it to (an hour late); no slot is invented in the gap.
    """

    def __init__(self, inner: BaseTrigger) -> None:
        self.inner = inner
        self.jitter = None

    def __str__(self) -> str:
        return str(self.inner)

    def __repr__(self) -> str:
        return f"FoldSafeTrigger({self.inner!r})"

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        nxt = self.inner.get_next_fire_time(previous_fire_time, now)
        if previous_fire_time is None:
            return nxt
        while nxt is not None:
            if _wall(nxt) > _wall(previous_fire_time, nxt.tzinfo):
                return nxt
            nxt = self.inner.get_next_fire_time(nxt, nxt)
        return None


@dataclass(frozen=True, slots=True)
class ResumePlan:
    next_run_time: datetime | None  # first slot still within the grace, or the next future one
    missed: int  # slots past the grace that will never run
    walked_all: bool  # False when MAX_SLOTS_WALKED stopped the count


def plan_resume(
    trigger: BaseTrigger, last_slot: datetime | None, now: datetime, grace_s: float
) -> ResumePlan:
    """Where a job's schedule continues on a new leader.

    With no claimed slot yet the schedule starts from `now`. Otherwise it goes
    on from the slot after the last claimed one; slots older than `grace_s`
    are counted as missed and skipped, so APScheduler only ever sees the ones
    that may still run (which it then coalesces or not).
    """
    if last_slot is None:
        return ResumePlan(trigger.get_next_fire_time(None, now), 0, True)
    horizon = now - timedelta(seconds=grace_s)
    nxt = trigger.get_next_fire_time(last_slot, last_slot)
    missed = 0
    while nxt is not None and nxt < horizon:
        if missed >= MAX_SLOTS_WALKED:
            # Jump: anything this old is missed; restart the walk from the horizon.
            return ResumePlan(trigger.get_next_fire_time(None, horizon), missed, False)
        missed += 1
        nxt = trigger.get_next_fire_time(nxt, nxt)
    return ResumePlan(nxt, missed, True)


# KEYS[1] leader key, KEYS[2] job hash, KEYS[3] jobs index set
# ARGV[1] fence, ARGV[2] slot (ms since epoch), ARGV[3] replica id, ARGV[4] job id,
# ARGV[5] next slot after this one (ms) or '', ARGV[6] fencing token (the number, for humans),
# ARGV[7] most ms a slot may lie ahead of Redis' clock, ARGV[8] claim id (random, one per claim call)
# Returns {1, 'ok', now_ms} when claimed, also when this very claim call ran before
# (same claim id: a re-send after a lost reply; it re-writes a field, so a WAIT that
# follows still covers the first write; any other second claim of the slot, even by
# the same term, is refused as 'claimed'); {0, 'fenced'} when the fence is not
# current; {0, 'claimed', last_slot_ms} when this or a later slot was claimed
# already; {0, 'future', now_ms} when the slot lies more than ARGV[7] ms ahead of
# Redis TIME (this replica's wall clock is ahead: claiming it would refuse the real
# slots later). now_ms is Redis TIME in ms, for measuring clock skew.
CLAIM_SLOT_LUA = fenced_script("""
if fenced then return {0, 'fenced'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'last_slot_ms'))
if last and last >= slot then
  if last == slot and redis.call('HGET', KEYS[2], 'claim_id') == ARGV[8]
     and redis.call('HGET', KEYS[2], 'claimed_fence') == ARGV[1] then
    redis.call('HSET', KEYS[2], 'claim_id', ARGV[8])
    return {1, 'ok', now_ms}
  end
  return {0, 'claimed', string.format('%.0f', last)}
end
if slot > now_ms + tonumber(ARGV[7]) then return {0, 'future', now_ms} end
redis.call('HSET', KEYS[2], 'last_slot_ms', ARGV[2], 'claimed_by', ARGV[3],
           'claimed_token', ARGV[6], 'claimed_fence', ARGV[1], 'claim_id', ARGV[8], 'next_run_ms', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[4])
return {1, 'ok', now_ms}
""")

# KEYS[1] leader key, KEYS[2] job hash, KEYS[3] runs list
# ARGV[1] fence, ARGV[2] run record JSON, ARGV[3] records kept, ARGV[4] run id
# Returns 1 when recorded (or already recorded under this run id: a re-send), 0 when fenced out.
RECORD_RUN_LUA = fenced_script("""
if fenced then return 0 end
if redis.call('HGET', KEYS[2], 'last_run_id') == ARGV[4] then return 1 end
redis.call('HSET', KEYS[2], 'last_run', ARGV[2], 'last_run_id', ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return 1
""")

# KEYS[1] leader key, KEYS[2] job hash, KEYS[3] jobs index set
# ARGV[1] fence, ARGV[2] next slot (ms) or '', ARGV[3] job id
# Returns 1 when written, 0 when fenced out.
SET_NEXT_LUA = fenced_script("""
if fenced then return 0 end
redis.call('HSET', KEYS[2], 'next_run_ms', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
""")


@dataclass(frozen=True, slots=True)
class ClaimResult:
    ok: bool
    reason: str  # ok | fenced | claimed | future | unreplicated
    last_slot_ms: int | None = None
    redis_now_ms: int | None = None  # Redis TIME when the script ran (ok, future)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ScriptBatcher:
    """Sends the script calls made in one event-loop turn down one connection.

    When many jobs fall due at one instant, their slot claims (and later their
    run records) leave as one round trip on one connection instead of one
    each: throughput rises and the connection pool is not exhausted. With
    `wait_replicas` > 0 the batch ends with one WAIT on that connection, whose
    count every caller gets (`leader.redis_scripts`). Each caller still gets
    its own result or exception.
    """

    MAX_BATCH = 500

    def __init__(
        self, client: Redis | RedisCluster, timeout_s: float = 10.0, *, wait_replicas: int = 0, wait_timeout_ms: int = 0
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._queue: list[tuple[Any, list[str], list[Any], asyncio.Future[tuple[Any, int | None]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> tuple[Any, int | None]:
        """The script's result (an error reply raised) and the batch's WAIT count (None without WAIT)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, int | None]] = loop.create_future()
        self._queue.append((script, keys, args, fut))
        if len(self._queue) == 1:
            loop.call_soon(self._flush_soon)
        res, acked = await fut
        if isinstance(res, Exception):
            raise res
        return res, acked

    def _flush_soon(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[tuple[Any, int | None]]]]) -> None:
        try:
            # Bounded: a caller must never wait on a batch forever, whatever the connection does.
            async with asyncio.timeout(self._timeout_s):
                results, acked = await run_scripts(
                    self._client,
                    [(script, keys, args) for script, keys, args, _ in batch],
                    wait_replicas=self._wait_replicas,
                    wait_timeout_ms=self._wait_timeout_ms,
                )
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            if isinstance(exc, TimeoutError):
                exc = RedisTimeoutError(f"no answer from Redis within {self._timeout_s:g}s")
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, fut), res in zip(batch, results, strict=True):
            if not fut.done():  # else its caller was cancelled
                fut.set_result((res, acked))


class SlotStore:
    """Slot claims, run records and resume points in Redis.

    `fence` arguments are a term's `<token>:<lease_id>`. With `wait_replicas`
    > 0 a claim counts only once that many replicas acknowledged it (WAIT on
    the claim's own connection); one acknowledged by fewer is `unreplicated`:
    it stays in the primary (so no one else runs that slot) and its run must
    not start.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: Keyspace,
        history: int = 50,
        timeout_s: float = 10.0,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        ahead_max_ms: int = 1000,
    ) -> None:
        self._client = client
        self.keys = keys
        self.history = history
        self.wait_replicas = wait_replicas
        self.ahead_max_ms = ahead_max_ms
        self._claims = ScriptBatcher(
            client, timeout_s, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms
        )
        self._records = ScriptBatcher(client, timeout_s)
        self._claim = client.register_script(CLAIM_SLOT_LUA)
        self._record = client.register_script(RECORD_RUN_LUA)
        self._set_next = client.register_script(SET_NEXT_LUA)

    async def claim(
        self, job_id: str, slot: datetime, fence: str, token: int, replica_id: str, next_slot: datetime | None
    ) -> ClaimResult:
        res, acked = await self._claims.call(
            self._claim,
            [self.keys.leader, self.keys.job(job_id), self.keys.jobs_index()],
            [fence, to_ms(slot), replica_id, job_id, "" if next_slot is None else to_ms(next_slot), token,
             self.ahead_max_ms, uuid.uuid4().hex],
        )
        reason = _text(res[1])
        if int(res[0]) == 1:
            now_ms = int(_text(res[2]))
            if acked is not None and acked < self.wait_replicas:
                return ClaimResult(False, "unreplicated", redis_now_ms=now_ms)
            return ClaimResult(True, "ok", redis_now_ms=now_ms)
        if reason == "future":
            return ClaimResult(False, reason, redis_now_ms=int(_text(res[2])))
        return ClaimResult(False, reason, int(_text(res[2])) if len(res) > 2 else None)

    async def record(self, job_id: str, fence: str, record: dict[str, Any]) -> bool:
        res, _ = await self._records.call(
            self._record,
            [self.keys.leader, self.keys.job(job_id), self.keys.runs(job_id)],
            [fence, json.dumps(record, separators=(",", ":")), self.history, record["run_id"]],
        )
        return int(res) == 1

    async def set_next(self, job_id: str, fence: str, next_slot: datetime | None) -> bool:
        res, _ = await self._records.call(
            self._set_next,
            [self.keys.leader, self.keys.job(job_id), self.keys.jobs_index()],
            [fence, "" if next_slot is None else to_ms(next_slot), job_id],
        )
        return int(res) == 1

    async def last_slots(self, job_ids: list[str]) -> dict[str, int | None]:
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "last_slot_ms")
            values = await pipe.execute()
        return {j: (int(_text(v)) if v is not None else None) for j, v in zip(job_ids, values, strict=True)}
