"""Manual run requests: `lightsched run-job` asks the leader, the leader runs it like a slot.

Layout under the deployment prefix:
  `requests`            stream of request ids (field `id`), capped; a new leader reads it
                        from the start (pending requests of an earlier term are taken up),
                        then follows it;
  `request:<id>`        hash: job_id, params (JSON), requested_by, requested_at, state
                        (pending | running | done | cancelled | rejected), and once run:
                        replica_id, fencing_token, started_at, finished_at, outcome,
                        error, duration_ms, run_id. It expires REQUEST_TTL_S after its
                        last change.

Guarantees:
- A request runs at most once: the leader claims it with a fenced script that
  turns `pending` into `running`; the requester's cancel turns `pending` into
  `cancelled`; only one of them can win. A claim re-sent after a lost reply
  (same claim id) succeeds again; any other second claim fails.
- The leader runs a claimed request through the job's own queue, so it never
  runs beside a scheduled run of the same job; its record lands in the job's
  run history with `trigger: manual` and `requested_by`.
- With `wait_replicas` > 0 the claim is acknowledged by replicas before the
  run starts, like a slot claim.

Does not guarantee: that a request is picked up (no leader, kill switch on):
the requester waits a bounded time, then cancels it. A leader that loses its
lease mid-run leaves the request `running`; the requester reports that.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leader import fenced_script, run_scripts

from .keys import Keyspace

__all__ = [
    "CANCEL_REQUEST_LUA",
    "CLAIM_REQUEST_LUA",
    "ENQUEUE_REQUEST_LUA",
    "FINISH_REQUEST_LUA",
    "ManualRequest",
    "RequestStore",
]

#: How long a request's hash lives after its last change (seconds).
REQUEST_TTL_S = 86_400
#: Approximate number of request ids the stream keeps.
REQUESTS_KEPT = 1_000

# KEYS[1] request hash, KEYS[2] requests stream
# ARGV[1] request id, ARGV[2] job id, ARGV[3] params JSON, ARGV[4] requested_by,
# ARGV[5] requested_at (ISO 8601), ARGV[6] hash ttl ms, ARGV[7] stream max length (approximate)
# Returns the stream entry id; an id already enqueued returns false (nothing written).
ENQUEUE_REQUEST_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], 'job_id', ARGV[2], 'params', ARGV[3], 'requested_by', ARGV[4],
           'requested_at', ARGV[5], 'state', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'id', ARGV[1])
"""

# KEYS[1] leader key, KEYS[2] request hash
# ARGV[1] fence, ARGV[2] replica id, ARGV[3] fencing token, ARGV[4] started_at, ARGV[5] claim id, ARGV[6] ttl ms
# Returns 1 when claimed (or re-claimed by the same claim id: a re-send, which re-writes
# a field so a following WAIT covers it), 0 when the request is not pending, -1 when fenced out.
CLAIM_REQUEST_LUA = fenced_script("""
if fenced then return -1 end
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'running' and redis.call('HGET', KEYS[2], 'claim_id') == ARGV[5] then
  redis.call('HSET', KEYS[2], 'claim_id', ARGV[5])
  return 1
end
if state ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], 'state', 'running', 'replica_id', ARGV[2], 'fencing_token', ARGV[3],
           'started_at', ARGV[4], 'claim_id', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
""")

# KEYS[1] leader key, KEYS[2] request hash
# ARGV[1] fence, ARGV[2] state (done | rejected), ARGV[3] outcome, ARGV[4] error or '',
# ARGV[5] finished_at, ARGV[6] duration_ms or '', ARGV[7] run id or '', ARGV[8] ttl ms
# Returns 1 when written, 0 when the request is already finished or cancelled, -1 when fenced out.
FINISH_REQUEST_LUA = fenced_script("""
if fenced then return -1 end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'running' and state ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'outcome', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'duration_ms', ARGV[6], 'run_id', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return 1
""")

# KEYS[1] request hash
# ARGV[1] reason
# Returns 1 when the pending request was cancelled, 0 when a leader took it (or it ended) first.
CANCEL_REQUEST_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', ARGV[1])
return 1
"""

@dataclass(frozen=True, slots=True)
class ManualRequest:
    """A request as the leader reads it."""

    id: str
    job_id: str
    params: Mapping[str, str] = field(default_factory=dict)
    requested_by: str = ""
    requested_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class RequestStore:
    """The request stream and hashes of one deployment."""

    def __init__(
        self, client: Redis | RedisCluster, keys: Keyspace, *, wait_replicas: int = 0, wait_timeout_ms: int = 500
    ) -> None:
        self._client = client
        self.keys = keys
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._enqueue = client.register_script(ENQUEUE_REQUEST_LUA)
        self._claim = client.register_script(CLAIM_REQUEST_LUA)
        self._finish = client.register_script(FINISH_REQUEST_LUA)
        self._cancel = client.register_script(CANCEL_REQUEST_LUA)

    # -- the requester's side ----------------------------------------------------------

    async def enqueue(self, job_id: str, params: Mapping[str, str], requested_by: str) -> str:
        """Queue a request; returns its id."""
        request_id = uuid.uuid4().hex
        await self._enqueue(
            keys=[self.keys.request(request_id), self.keys.requests()],
            args=[request_id, job_id, json.dumps(dict(params), sort_keys=True), requested_by,
                  datetime.now(UTC).isoformat(timespec="milliseconds"), REQUEST_TTL_S * 1000, REQUESTS_KEPT],
        )
        return request_id

    async def get(self, request_id: str) -> dict[str, str]:
        raw = await self._client.hgetall(self.keys.request(request_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def cancel(self, request_id: str, reason: str) -> bool:
        return int(await self._cancel(keys=[self.keys.request(request_id)], args=[reason])) == 1

    # -- the leader's side ----------------------------------------------------------------

    async def read(self, after: str, block_ms: int | None) -> tuple[str, list[ManualRequest]]:
        """Pending requests in the stream after entry `after` ('0-0': from the start), and the
        id of the last entry read (`after` when none). Blocks up to `block_ms` when given."""
        res = await self._client.xread({self.keys.requests(): after}, count=200, block=block_ms)
        entries = [(entry_id, fields) for _stream, batch in (res or []) for entry_id, fields in batch]
        if not entries:
            return after, []
        ids = [_text(fields.get(b"id", fields.get("id", ""))) for _, fields in entries]
        async with self._client.pipeline(transaction=False) as pipe:
            for request_id in ids:
                pipe.hgetall(self.keys.request(request_id))
            hashes = await pipe.execute()
        out: list[ManualRequest] = []
        for request_id, raw in zip(ids, hashes, strict=True):
            h = {_text(k): _text(v) for k, v in raw.items()}
            if not request_id or h.get("state") != "pending":
                continue
            try:
                params = json.loads(h.get("params") or "{}")
                requested_at = datetime.fromisoformat(h["requested_at"])
            except (ValueError, KeyError):
                params, requested_at = {}, datetime.now(UTC)
            out.append(ManualRequest(request_id, h.get("job_id", ""), {str(k): str(v) for k, v in params.items()},
                                     h.get("requested_by", ""), requested_at))
        return _text(entries[-1][0]), out

    async def claim(self, fence: str, request: ManualRequest, replica_id: str, token: int) -> str:
        """'ok', 'taken' (not pending any more), 'fenced' or 'unreplicated'."""
        (res,), acked = await run_scripts(
            self._client,
            [(self._claim, [self.keys.leader, self.keys.request(request.id)],
              [fence, replica_id, token, datetime.now(UTC).isoformat(timespec="milliseconds"), uuid.uuid4().hex,
               REQUEST_TTL_S * 1000])],
            wait_replicas=self.wait_replicas, wait_timeout_ms=self.wait_timeout_ms,
        )
        if isinstance(res, Exception):
            raise res
        code = int(res)
        if code == -1:
            return "fenced"
        if code == 0:
            return "taken"
        if acked is not None and acked < self.wait_replicas:
            return "unreplicated"
        return "ok"

    async def finish(
        self, fence: str, request_id: str, *, state: str, outcome: str, error: str | None = None,
        duration_ms: float | None = None, run_id: str | None = None,
    ) -> bool:
        res = await self._finish(
            keys=[self.keys.leader, self.keys.request(request_id)],
            args=[fence, state, outcome, error or "", datetime.now(UTC).isoformat(timespec="milliseconds"),
                  "" if duration_ms is None else duration_ms, run_id or "", REQUEST_TTL_S * 1000],
        )
        return int(res) == 1
