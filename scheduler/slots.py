"""Slots: one (job id, scheduled fire time) pair runs at most once per deployment.

Pure part: `plan_resume()` computes, from a job's last claimed slot and "now",
where its schedule continues and which slots were missed or will be coalesced.
It takes `now` as an argument, so DST and failover cases are tested with an
injected time.

Redis part: `SlotStore.claim()` is one Lua script that checks the fencing token
and a per-job high-water mark: a slot is claimed only if its fire time is later
than every slot claimed before for that job, by any leader. Two successful
claims of one slot are therefore impossible, and so is running an older slot
after a newer one.

Does not guarantee: that a claimed slot finished; a leader may die mid-run
(its run record then stays "running"; the next leader does not re-run it).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .fencing import FENCE_CHECK_LUA
from .keys import Keyspace

__all__ = ["FoldSafeTrigger", "CLAIM_SLOT_LUA", "RECORD_RUN_LUA", "ClaimResult", "ResumePlan", "SlotStore", "from_ms", "plan_resume", "to_ms"]

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
# ARGV[1] fencing token, ARGV[2] slot (ms since epoch), ARGV[3] replica id,
# ARGV[4] job id, ARGV[5] next slot after this one (ms) or ''
# Returns {1, 'ok'} when claimed; {0, 'fenced'} when the token is stale;
# {0, 'claimed', last_slot_ms} when this or a later slot was claimed already.
CLAIM_SLOT_LUA = FENCE_CHECK_LUA + """
if fenced then return {0, 'fenced'} end
local last = redis.call('HGET', KEYS[2], 'last_slot_ms')
if last and tonumber(last) >= tonumber(ARGV[2]) then return {0, 'claimed', last} end
redis.call('HSET', KEYS[2], 'last_slot_ms', ARGV[2], 'claimed_by', ARGV[3],
           'claimed_token', ARGV[1], 'next_run_ms', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[4])
return {1, 'ok'}
"""

# KEYS[1] leader key, KEYS[2] job hash, KEYS[3] runs list
# ARGV[1] fencing token, ARGV[2] run record JSON, ARGV[3] records kept
# Returns 1 when recorded, 0 when fenced out.
RECORD_RUN_LUA = FENCE_CHECK_LUA + """
if fenced then return 0 end
redis.call('HSET', KEYS[2], 'last_run', ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return 1
"""

# KEYS[1] leader key, KEYS[2] job hash, KEYS[3] jobs index set
# ARGV[1] fencing token, ARGV[2] next slot (ms) or '', ARGV[3] job id
# Returns 1 when written, 0 when fenced out.
SET_NEXT_LUA = FENCE_CHECK_LUA + """
if fenced then return 0 end
redis.call('HSET', KEYS[2], 'next_run_ms', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    ok: bool
    reason: str  # ok | fenced | claimed
    last_slot_ms: int | None = None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ScriptBatcher:
    """Sends the script calls made in one event-loop turn down one pipeline.

    When many jobs fall due at one instant, their slot claims (and later their
    run records) leave as one round trip on one connection instead of one
    each: throughput rises and the connection pool is not exhausted. Each
    caller still gets its own result or exception. A Cluster client is called
    directly (all our keys share one slot, but redis-py's cluster pipeline
    does not load scripts).
    """

    MAX_BATCH = 500

    def __init__(self, client: Redis, timeout_s: float = 10.0) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._direct = isinstance(client, RedisCluster)
        self._queue: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._direct:
            return await script(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, fut))
        if len(self._queue) == 1:
            loop.call_soon(self._flush_soon)
        return await fut

    def _flush_soon(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            # Bounded: a caller must never wait on a batch forever, whatever the connection does.
            async with asyncio.timeout(self._timeout_s):
                if len(batch) == 1:  # alone: a plain EVALSHA, no pipeline (which checks SCRIPT EXISTS first)
                    script, keys, args, _ = batch[0]
                    try:
                        results = [await script(keys=keys, args=args)]
                    except RedisError as exc:
                        results = [exc]
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for script, keys, args, _ in batch:
                            await script(keys=keys, args=args, client=pipe)
                        results = await pipe.execute(raise_on_error=False)
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
            if fut.done():
                continue  # its caller was cancelled
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)


class SlotStore:
    """Slot claims, run records and resume points in Redis."""

    def __init__(self, client: Redis, keys: Keyspace, history: int = 50, timeout_s: float = 10.0) -> None:
        self._client = client
        self.keys = keys
        self.history = history
        self._batch = ScriptBatcher(client, timeout_s)
        self._claim = client.register_script(CLAIM_SLOT_LUA)
        self._record = client.register_script(RECORD_RUN_LUA)
        self._set_next = client.register_script(SET_NEXT_LUA)

    async def claim(
        self, job_id: str, slot: datetime, token: int, replica_id: str, next_slot: datetime | None
    ) -> ClaimResult:
        res = await self._batch.call(
            self._claim,
            [self.keys.leader, self.keys.job(job_id), self.keys.jobs_index()],
            [token, to_ms(slot), replica_id, job_id, "" if next_slot is None else to_ms(next_slot)],
        )
        if int(res[0]) == 1:
            return ClaimResult(True, "ok")
        reason = _text(res[1])
        return ClaimResult(False, reason, int(_text(res[2])) if len(res) > 2 else None)

    async def record(self, job_id: str, token: int, record: dict[str, Any]) -> bool:
        res = await self._batch.call(
            self._record,
            [self.keys.leader, self.keys.job(job_id), self.keys.runs(job_id)],
            [token, json.dumps(record, separators=(",", ":")), self.history],
        )
        return int(res) == 1

    async def set_next(self, job_id: str, token: int, next_slot: datetime | None) -> bool:
        res = await self._set_next(
            keys=[self.keys.leader, self.keys.job(job_id), self.keys.jobs_index()],
            args=[token, "" if next_slot is None else to_ms(next_slot), job_id],
        )
        return int(res) == 1

    async def last_slots(self, job_ids: list[str]) -> dict[str, int | None]:
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "last_slot_ms")
            values = await pipe.execute()
        return {j: (int(_text(v)) if v is not None else None) for j, v in zip(job_ids, values, strict=True)}
