"""Fenced storage of job results, shared by the built-in jobs.

Layout under the deployment prefix (`ctx.key(...)` = `{prefix}:data:<job>:...`):
  `latest:<name>`   JSON of the newest result, with a TTL, so a stopped job's
                    result disappears rather than lying about the present;
  `history:<name>`  capped stream (field `result`, JSON), newest last;
  `state`           hash name -> last state (`up`/`down`), no TTL, so a
                    transition is seen even after `latest` expired;
  `transitions`     hash `<name>:<state>` -> transitions into that state.

Guarantees: every write is fenced: a run whose lease is no longer current
changes nothing and gets `FencedOut`. A state change and its counter are
updated in one script, so a transition is counted exactly once, also when
the command is re-sent after a lost reply.
Does not guarantee: that `latest` and `history` land together (two scripts;
a run fenced out between them leaves only `latest`).
"""

from __future__ import annotations

import json
import uuid
import weakref
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from scheduler import FencedOut, JobContext

__all__ = [
    "FENCED_SWAP_STATE_LUA",
    "FENCED_XTRIM_MINID_LUA",
    "FencedOut",
    "fenced_swap_state",
    "fenced_xtrim_minid",
    "json_list",
    "script_for",
    "log_event",
    "store_result",
]


# Bodies for `JobContext.run_fenced` (KEYS[1] the leader key and ARGV[1] the fence come first).

# KEYS[2] state hash, KEYS[3] transition counter hash, KEYS[4] operation key (remembers this swap)
# ARGV[2] field (e.g. a provider name), ARGV[3] new state, ARGV[4] ms the operation key lives
# Returns the previous state ('' when there was none), or false when fenced out.
# When a previous state exists and differs, HINCRBY KEYS[3] '<field>:<new state>' 1
# in the same step: the transition is counted once however often it is observed. A re-send
# of this very swap (a lost reply) returns the first answer again instead of '' (no change).
FENCED_SWAP_STATE_LUA = """
if fenced then return false end
local done = redis.call('GET', KEYS[4])
if done then
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  return string.sub(done, 2)
end
local prev = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if prev and prev ~= ARGV[3] then
  redis.call('HINCRBY', KEYS[3], ARGV[2] .. ':' .. ARGV[3], 1)
end
redis.call('SET', KEYS[4], '=' .. (prev or ''), 'PX', ARGV[4])
return prev or ''
"""

# KEYS[2..n] streams
# ARGV[2] minimum entry id to keep (e.g. '1700000000000-0')
# Returns the number of entries removed across the streams, or -1 when fenced out.
# Keys that are gone or not streams are skipped, not errors: SCAN saw them a moment ago.
FENCED_XTRIM_MINID_LUA = """
if fenced then return -1 end
local removed = 0
for i = 2, #KEYS do
  if redis.call('TYPE', KEYS[i]).ok == 'stream' then
    removed = removed + redis.call('XTRIM', KEYS[i], 'MINID', ARGV[2])
  end
end
return removed
"""

#: How long a swap remembers its answer, so a re-sent command is recognised (ms).
_OP_MEMORY_MS = 120_000

_scripts: weakref.WeakKeyDictionary[Redis, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def script_for(client: Redis, lua: str) -> AsyncScript:
    """`lua` registered once per client (redis-py reloads it on NOSCRIPT)."""
    per_client = _scripts.setdefault(client, {})
    script = per_client.get(lua)
    if script is None:
        script = per_client[lua] = client.register_script(lua)
    return script


def log_event(ctx: JobContext, level: int, msg: str, event: str, **fields: Any) -> None:
    """Log `msg` with `event` and `fields` as record attributes, plus the context's own extras.

    Goes to the adapter's logger directly: before Python 3.13 a plain
    `LoggerAdapter` replaces a call's `extra` with its own, losing `event`.
    """
    ctx.log.logger.log(level, msg, extra={**(ctx.log.extra or {}), "event": event, **fields}, stacklevel=2)


def json_list(value: Any) -> Any:
    """Settings validator: a JSON array from an env var, with a one-line error when it is not one."""
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(value, list):
            raise ValueError(f"must be a JSON array, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def fenced_swap_state(ctx: JobContext, name: str, state: str) -> str | None:
    """Set `name`'s state; the previous one (None on first sight). Raises `FencedOut`."""
    res = await ctx.run_fenced(
        FENCED_SWAP_STATE_LUA,
        [ctx.key("state"), ctx.key("transitions"), ctx.keys.op(uuid.uuid4().hex)],
        [name, state, _OP_MEMORY_MS],
        what=f"state update of {name!r}",
    )
    if res is None:
        raise FencedOut(ctx.job_id, ctx.fencing_token, f"state update of {name!r}")
    prev = _text(res)
    return prev or None


async def fenced_xtrim_minid(ctx: JobContext, streams: list[bytes | str], min_id: str) -> int:
    """Trim entries older than `min_id` from `streams` (keys under the prefix). Raises `FencedOut`."""
    if not streams:
        return 0
    res = int(await ctx.run_fenced(FENCED_XTRIM_MINID_LUA, streams, [min_id], what="stream trim"))
    if res == -1:
        raise FencedOut(ctx.job_id, ctx.fencing_token, "stream trim")
    return res


async def store_result(ctx: JobContext, name: str, doc: dict[str, Any], ttl_s: float, history_len: int) -> None:
    """Write `doc` as `name`'s latest result (expiring after `ttl_s`) and append it to its history.

    Raises `FencedOut` when the token is stale; nothing is written then.
    """
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if not await ctx.fenced_set(ctx.key("latest", name), payload, px=int(ttl_s * 1000)):
        raise FencedOut(ctx.job_id, ctx.fencing_token, f"result of {name!r}")
    if await ctx.fenced_xadd(ctx.key("history", name), {"result": payload}, history_len) is None:
        raise FencedOut(ctx.job_id, ctx.fencing_token, f"history of {name!r}")
