"""Clean-up of what the service leaves behind in Redis, and of this project's old history.

Default schedule: hourly at minute 7 (`7 * * * *`: off the top of the hour,
when many other cron jobs fire), timeout 300 s; change it with
LIGHTSCHED_JOB_SCHEDULES='{"cleanup": "*/15 * * * *"}'.

Per configured rule, the keys matching its glob `pattern` are deleted when
  - `delete_if_no_ttl` is set and the key has no TTL, or
  - `max_age_s` is set and the key is at least that old.
Age is the key's own timestamp where it has one (a stream: time since its
newest entry id, by the Redis clock), else OBJECT IDLETIME: seconds since the
key was last read or written. Idle time only approximates age: a key read
often never ages, and a copy restored by a replica or a restart starts at 0.
Under an LFU `maxmemory-policy` Redis keeps no idle time; such keys are then
judged by TTL only (logged once per run).
Separately, entries older than `history_retention_s` are trimmed (XTRIM
MINID) from this deployment's streams under `{prefix}:data:` (the jobs'
histories). Run records under `{prefix}:runs:` are capped by the runtime.

Guarantees:
- SCAN in batches of about `scan_count` (never KEYS); each batch is judged by
  one read-only script (pipelined commands under Redis Cluster, where a
  service's keys span slots) and unlinked by one fenced call; memory is
  bounded by one batch plus a fixed sample; at most `max_keys_per_run` keys
  go per run.
- Keys matching `ctx.keys.protected_patterns()` (lease, token, job slots, the
  job index) are never deleted, whatever a rule matches.
- Every deletion and trim is fenced per batch: a stale leader deletes nothing
  and gets `FencedOut`. Dry run (`dry_run`) deletes and trims nothing, logs each
  batch it would delete, and stores the summary.
Does not guarantee: atomicity between judging a key and unlinking it (a key
given a TTL or written in that moment may still go); under Redis Cluster,
fencing of keys outside the prefix is check-then-delete (see `scheduler.fencing`).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from scheduler import JobContext

from ._store import FencedOut, fenced_xtrim_minid, json_list, log_event, script_for, store_result

__all__ = ["JOB_ID", "CleanupConfig", "CleanupRule", "CleanupSummary", "RuleSummary", "cleanup", "run_cleanup"]

JOB_ID = "cleanup"


class CleanupRule(BaseModel):
    """Which keys of one pattern may go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(description="SCAN MATCH glob, e.g. app:tmp:*")
    max_age_s: float | None = Field(
        None, ge=0, description="seconds of age (own timestamp, else idle time) after which a key goes"
    )
    delete_if_no_ttl: bool = Field(False, description="delete matching keys that have no TTL, whatever their age")

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("pattern must not be empty")
        return value

    @model_validator(mode="after")
    def _has_criterion(self) -> CleanupRule:
        if self.max_age_s is None and not self.delete_if_no_ttl:
            raise ValueError(f"rule for {self.pattern!r} deletes nothing: set max_age_s or delete_if_no_ttl")
        return self


class CleanupConfig(BaseSettings):
    """Settings of the cleanup job (env prefix LIGHTSCHED_CLEANUP_)."""

    model_config = SettingsConfigDict(env_prefix="LIGHTSCHED_CLEANUP_", extra="ignore", frozen=True)

    rules: Annotated[list[CleanupRule], NoDecode] = Field(
        default_factory=list,
        description=(
            'JSON list of rules [{"pattern": glob, "max_age_s": seconds or null, "delete_if_no_ttl": bool}]; '
            "a key goes when either criterion holds; default [] (only history trimming)"
        ),
    )
    scan_count: int = Field(500, ge=1, le=100_000, description="keys per SCAN batch (COUNT hint) and per UNLINK")
    max_keys_per_run: int = Field(100_000, ge=1, description="keys deleted per run at most; the rest wait for the next run")
    dry_run: bool = Field(False, description="report what would be deleted or trimmed, change nothing")
    history_retention_s: float = Field(
        7 * 86400.0, gt=0, description="seconds of history kept in the jobs' streams under {prefix}:data: (604800: 7 days)"
    )
    trim_histories: bool = Field(True, description="trim the jobs' history streams past history_retention_s")
    sample_size: int = Field(20, ge=0, le=1000, description="key names per rule kept in the stored summary")
    _rules_json = field_validator("rules", mode="before")(json_list)

    result_ttl_s: float = Field(7200.0, gt=0, description="seconds the latest summary lives in Redis")
    history_len: int = Field(500, ge=1, le=1_000_000, description="summaries kept in the history stream (approximate)")


@dataclass(slots=True)
class RuleSummary:
    pattern: str
    scanned: int = 0  # keys SCAN returned
    matched: int = 0  # keys that meet the rule (would go in a dry run)
    deleted: int = 0  # keys UNLINK removed
    protected: int = 0  # matched the pattern but are protected
    sample: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CleanupSummary:
    dry_run: bool
    rules: list[RuleSummary]
    streams_trimmed: int = 0  # streams with entries past retention
    entries_trimmed: int = 0  # entries removed (0 in a dry run)
    capped: bool = False  # stopped at max_keys_per_run
    idle_time_unavailable: bool = False
    started_at: str = ""
    duration_s: float = 0.0

    @property
    def matched(self) -> int:
        return sum(r.matched for r in self.rules)

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.rules)

    def to_doc(self, ctx: JobContext) -> dict[str, Any]:
        return {
            **asdict(self),
            "matched": self.matched,
            "deleted": self.deleted,
            "replica_id": ctx.replica_id,
            "fencing_token": ctx.fencing_token,
        }


def _name(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


class _Protected:
    """Matches protected key names (bytes) against the keyspace's globs."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._re = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)

    def __call__(self, key: bytes) -> bool:
        return self._re.match(key.decode("latin-1")) is not None


async def _batches(redis: Redis, match: str, count: int, type_: str | None = None) -> AsyncIterator[list[bytes]]:
    """SCAN `match` in lists of at most `count` keys."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=match, count=count, _type=type_):
        batch.append(key)
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch


async def _redis_now_ms(redis: Redis) -> int:
    secs, micros = await redis.time()
    return int(secs) * 1000 + int(micros) // 1000


def _stream_id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


# KEYS[1..n] keys to judge
# ARGV[1] '1' to measure age, '0' for the TTL only
# Returns {pttl_1, age_ms_1, pttl_2, age_ms_2, ...}: pttl as PTTL gives it
# (-2 gone, -1 no TTL); age_ms -1 when not measured, -3 when Redis keeps no
# idle time (LFU maxmemory-policy). A stream's age runs from its newest entry
# id, by the Redis clock; any other key's is OBJECT IDLETIME. Read-only, and
# TYPE, PTTL and OBJECT do not touch a key: judging it does not reset its idle time.
JUDGE_KEYS_LUA = """
local out = {}
local with_age = ARGV[1] == '1'
local now_ms = 0
if with_age then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
for _, key in ipairs(KEYS) do
  local pttl = redis.call('PTTL', key)
  local age = -1
  if with_age and pttl ~= -2 then
    if redis.call('TYPE', key).ok == 'stream' then
      local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
      if newest[1] then
        age = math.max(0, now_ms - tonumber(string.match(newest[1][1], '^(%d+)')))
      end
    end
    if age == -1 then
      local idle = redis.pcall('OBJECT', 'IDLETIME', key)
      if type(idle) == 'number' then age = idle * 1000 else age = -3 end
    end
  end
  out[#out + 1] = pttl
  out[#out + 1] = age
end
return out
"""

_NOT_MEASURED, _NO_IDLE_TIME = -1, -3


async def _judge_script(redis: Redis, keys: list[bytes], with_age: bool) -> list[tuple[int, int]]:
    """(pttl, age_ms) per key in one round trip; all keys must share a slot under Cluster."""
    script = script_for(redis, JUDGE_KEYS_LUA)
    flat = await script(keys=keys, args=["1" if with_age else "0"])
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


async def _judge_pipeline(redis: Redis, keys: list[bytes], with_age: bool) -> list[tuple[int, int]]:
    """The same answers as `JUDGE_KEYS_LUA`, by pipelined commands (keys may span slots)."""
    per_key = 3 if with_age else 1
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
            if with_age:
                pipe.object("idletime", key)
                pipe.type(key)
        res = await pipe.execute(raise_on_error=False)
    out = []
    streams: list[int] = []
    for i in range(len(keys)):
        pttl = res[i * per_key]
        pttl = pttl if isinstance(pttl, int) else -2  # an error: leave the key alone
        age = _NOT_MEASURED
        if with_age and pttl != -2:
            idle, type_ = res[i * per_key + 1], res[i * per_key + 2]
            age = idle * 1000 if isinstance(idle, int) else _NO_IDLE_TIME if isinstance(idle, ResponseError) else -1
            if type_ in (b"stream", "stream"):
                streams.append(i)
        out.append((pttl, age))
    if streams:
        now_ms = await _redis_now_ms(redis)
        async with redis.pipeline(transaction=False) as pipe:
            for i in streams:
                pipe.xrevrange(keys[i], "+", "-", count=1)
            newest = await pipe.execute(raise_on_error=False)
        for i, entries in zip(streams, newest, strict=True):
            if isinstance(entries, list) and entries:
                out[i] = (out[i][0], max(0, now_ms - _stream_id_ms(entries[0][0])))
    return out


async def _doomed(redis: Redis, keys: list[bytes], rule: CleanupRule, summary: CleanupSummary) -> list[bytes]:
    """The keys of `keys` that `rule` deletes."""
    with_age = rule.max_age_s is not None
    # One script cannot reach keys of several Cluster slots; a service's keys rarely share one.
    judge = _judge_pipeline if isinstance(redis, RedisCluster) else _judge_script
    verdicts = await judge(redis, keys, with_age)
    max_age_ms = -1.0 if rule.max_age_s is None else rule.max_age_s * 1000
    doomed: list[bytes] = []
    for key, (pttl, age_ms) in zip(keys, verdicts, strict=True):
        if pttl == -2:  # gone since SCAN
            continue
        if age_ms == _NO_IDLE_TIME:
            summary.idle_time_unavailable = True
        if (rule.delete_if_no_ttl and pttl == -1) or (with_age and age_ms >= 0 and age_ms >= max_age_ms):
            doomed.append(key)
    return doomed


async def _apply_rule(
    ctx: JobContext,
    cfg: CleanupConfig,
    rule: CleanupRule,
    protected: _Protected,
    summary: CleanupSummary,
    budget: int,
) -> int:
    """Delete (or report) what `rule` matches within `budget` keys; the budget left."""
    rs = RuleSummary(rule.pattern)
    summary.rules.append(rs)
    async for batch in _batches(ctx.redis, rule.pattern, cfg.scan_count):
        rs.scanned += len(batch)
        allowed = [k for k in batch if not protected(k)]
        rs.protected += len(batch) - len(allowed)
        if not allowed:
            continue
        doomed = await _doomed(ctx.redis, allowed, rule, summary)
        doomed = doomed[:budget]
        if not doomed:
            continue
        rs.matched += len(doomed)
        budget -= len(doomed)
        if len(rs.sample) < cfg.sample_size:
            rs.sample.extend(_name(k) for k in doomed[: cfg.sample_size - len(rs.sample)])
        if cfg.dry_run:
            log_event(
                ctx, logging.INFO, "cleanup would delete", "cleanup_would_delete",
                pattern=rule.pattern, count=len(doomed), keys=[_name(k) for k in doomed],
            )
        else:
            removed = await ctx.fenced_unlink(doomed)  # type: ignore[arg-type]  # bytes names are fine
            if removed is None:
                log_event(
                    ctx, logging.WARNING, "cleanup fenced out: another leader took over", "cleanup_fenced_out",
                    pattern=rule.pattern, deleted_before=summary.deleted,
                )
                raise FencedOut(ctx.job_id, ctx.fencing_token, "deletion")
            rs.deleted += removed
        if budget <= 0:
            summary.capped = True  # there may be more: they wait for the next run
            break
    log_event(
        ctx, logging.INFO, "cleanup rule done", "cleanup_rule",
        pattern=rule.pattern, dry_run=cfg.dry_run, scanned=rs.scanned,
        matched=rs.matched, deleted=rs.deleted, protected=rs.protected,
    )
    return budget


async def _trim_histories(ctx: JobContext, cfg: CleanupConfig, summary: CleanupSummary) -> None:
    cutoff_ms = await _redis_now_ms(ctx.redis) - int(cfg.history_retention_s * 1000)
    if cutoff_ms <= 0:
        return
    min_id = f"{cutoff_ms}-0"
    async for batch in _batches(ctx.redis, ctx.keys.data("*"), cfg.scan_count, "stream"):
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.xrange(key, "-", "+", count=1)
            oldest = await pipe.execute(raise_on_error=False)
        stale = [k for k, e in zip(batch, oldest, strict=True) if isinstance(e, list) and e and _stream_id_ms(e[0][0]) < cutoff_ms]
        if not stale:
            continue
        summary.streams_trimmed += len(stale)
        if cfg.dry_run:
            log_event(
                ctx, logging.INFO, "cleanup would trim", "cleanup_would_trim",
                min_id=min_id, streams=[_name(k) for k in stale],
            )
            continue
        try:
            summary.entries_trimmed += await fenced_xtrim_minid(ctx, stale, min_id)  # type: ignore[arg-type]
        except FencedOut:
            log_event(ctx, logging.WARNING, "cleanup fenced out: another leader took over", "cleanup_fenced_out")
            raise


async def run_cleanup(ctx: JobContext) -> CleanupSummary:
    """One clean-up pass; returns (and stores, fenced) its summary. Raises `FencedOut`."""
    cfg = ctx.config
    if not isinstance(cfg, CleanupConfig):
        raise TypeError(f"job {ctx.job_id!r} needs a CleanupConfig as ctx.config, got {type(cfg).__name__}")
    started = time.monotonic()
    summary = CleanupSummary(dry_run=cfg.dry_run, rules=[], started_at=datetime.now(UTC).isoformat())
    protected = _Protected(ctx.keys.protected_patterns())
    budget = cfg.max_keys_per_run
    with ctx.span("cleanup_rules", rules=len(cfg.rules), dry_run=cfg.dry_run):
        for rule in cfg.rules:
            if budget <= 0:
                break
            budget = await _apply_rule(ctx, cfg, rule, protected, summary, budget)
    if cfg.trim_histories:
        with ctx.span("cleanup_histories"):
            await _trim_histories(ctx, cfg, summary)
    if summary.idle_time_unavailable:
        log_event(
            ctx, logging.WARNING, "Redis keeps no idle time (LFU maxmemory-policy): max_age_s applied to streams only",
            "cleanup_no_idle_time",
        )
    summary.duration_s = round(time.monotonic() - started, 3)
    log_event(
        ctx, logging.INFO, "cleanup done", "cleanup",
        dry_run=cfg.dry_run, matched=summary.matched, deleted=summary.deleted,
        streams_trimmed=summary.streams_trimmed, entries_trimmed=summary.entries_trimmed, capped=summary.capped,
    )
    await store_result(ctx, "run", summary.to_doc(ctx), cfg.result_ttl_s, cfg.history_len)
    return summary


async def cleanup(ctx: JobContext) -> None:
    """Delete leftovers by the configured rules and trim old history (default hourly); see the module docstring."""
    await run_cleanup(ctx)
