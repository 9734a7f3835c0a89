"""cleanup on a real Redis: exact deletions, protected keys, fencing, dry run, bounded memory."""

from __future__ import annotations

import logging
import time
import tracemalloc
from dataclasses import replace
from collections.abc import Awaitable, Callable

import anyio
import pytest
from redis.asyncio import Redis

from jobs import registry
from jobs._store import FencedOut
from jobs.cleanup import CleanupConfig, CleanupSummary, _judge_pipeline, _judge_script, run_cleanup
from scheduler import JobContext
from scheduler.registry import JobDefinitionError
from tests.support.jobctx import job_context, make_stale
from tests.support.redis_servers import ServerLike

CHUNK = 10_000


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


# ARGV[1] key name head, ARGV[2] first index, ARGV[3] last index, ARGV[4] ttl in s or '' for none.
# Test-only: the names are built in the script (fine on the standalone test server), so
# 100,000 keys take a few EVALs instead of 100,000 packed commands.
FILL_LUA = """
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  if ARGV[4] == '' then
    redis.call('SET', ARGV[1] .. i, 'x')
  else
    redis.call('SET', ARGV[1] .. i, 'x', 'EX', ARGV[4])
  end
end
return 1
"""


async def fill(redis: Redis, head: str, count: int, ttl_s: int | None = None) -> None:
    """`count` string keys named `{head}{i}`, 10,000 per EVAL (each blocks Redis for milliseconds only)."""
    script = redis.register_script(FILL_LUA)
    for start in range(0, count, CHUNK):
        await script(keys=[], args=[head, start, min(start + CHUNK, count) - 1, "" if ttl_s is None else ttl_s])


async def count_keys(redis: Redis, pattern: str) -> int:
    n = 0
    async for _ in redis.scan_iter(match=pattern, count=1000):
        n += 1
    return n


async def protected_keys(ctx: JobContext) -> dict[str, bytes | None]:
    """Create job slot hashes and the job index (as the runtime would); return a snapshot of every protected key."""
    for j in range(5):
        await ctx.redis.hset(ctx.keys.job(f"job{j}"), mapping={"last_slot_ms": "1", "next_run": "x"})
    await ctx.redis.sadd(ctx.keys.jobs_index(), "job0", "job1")
    return await snapshot(ctx)


async def snapshot(ctx: JobContext) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {
        ctx.keys.leader: await ctx.redis.get(ctx.keys.leader),
        ctx.keys.token: await ctx.redis.get(ctx.keys.token),
        ctx.keys.jobs_index(): b",".join(sorted(await ctx.redis.smembers(ctx.keys.jobs_index()))),
    }
    for j in range(5):
        out[ctx.keys.job(f"job{j}")] = await ctx.redis.hget(ctx.keys.job(f"job{j}"), "last_slot_ms")
    return out


async def scenario(url: str, kp: str, scale: int, scan_count: int) -> tuple[CleanupSummary, int]:
    """Fill a keyspace of `scale` keys, run cleanup under tracemalloc, check exactness; (summary, peak bytes)."""
    doomed, with_ttl, keep, junk = int(scale * 0.6), int(scale * 0.2), int(scale * 0.2) - 100, 100
    cfg = CleanupConfig(
        rules=[
            {"pattern": f"svc:{kp}:tmp:*", "delete_if_no_ttl": True},
            # Matches the lease, the token, the slots and the index too: they must survive anyway.
            {"pattern": "{" + kp + "}:*", "max_age_s": 0},
        ],  # type: ignore[list-item]
        scan_count=scan_count,
        trim_histories=False,
    )
    async with job_context(url, kp, "cleanup", config=cfg) as ctx:
        before = await protected_keys(ctx)
        assert all(v for v in before.values())
        await fill(ctx.redis, f"svc:{kp}:tmp:", doomed)
        await fill(ctx.redis, f"svc:{kp}:tmp:ttl:", with_ttl, ttl_s=3600)
        await fill(ctx.redis, f"svc:{kp}:keep:", keep)
        await fill(ctx.redis, "{" + kp + "}:junk:", junk)

        tracemalloc.start()
        try:
            summary = await run_cleanup(ctx)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert summary.deleted == doomed + junk
        assert [r.deleted for r in summary.rules] == [doomed, junk]
        assert summary.rules[1].protected == len(before)  # every protected key was seen and spared
        assert await count_keys(ctx.redis, f"svc:{kp}:tmp:[0-9]*") == 0
        assert await count_keys(ctx.redis, f"svc:{kp}:tmp:ttl:*") == with_ttl
        assert await count_keys(ctx.redis, f"svc:{kp}:keep:*") == keep
        assert await count_keys(ctx.redis, "{" + kp + "}:junk:*") == 0
        assert await snapshot(ctx) == before
        # The lease still holds our token: the summary was stored, fenced.
        assert await ctx.redis.exists(ctx.keys.data("cleanup", "latest", "run")) == 1
    return summary, peak


@pytest.mark.anyio
async def test_100k_keys_exact_and_memory_bounded_by_batch(redis_server: ServerLike, key_prefix: str) -> None:
    scan_count = 500
    _, peak_small = await scenario(redis_server.url, key_prefix + "s", 10_000, scan_count)
    _, peak_large = await scenario(redis_server.url, key_prefix + "l", 100_000, scan_count)
    # Ten times the keys, about the same peak: memory follows the batch, not the keyspace.
    # (A peak that followed the keyspace would be ~10x; the margin absorbs a reconnect's
    # buffers on a loaded machine.)
    assert peak_large < 3 * peak_small + 512 * 1024, (peak_small, peak_large)
    # And small in itself: about 2 KiB per key of a batch plus a fixed 1 MiB (measured: ~0.5 MiB).
    assert peak_large < scan_count * 2048 + 1024 * 1024, peak_large


@pytest.mark.anyio
async def test_dry_run_deletes_nothing_and_reports(
    redis_server: ServerLike, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightsched.job.cleanup")
    cfg = CleanupConfig(
        rules=[{"pattern": f"svc:{key_prefix}:*", "delete_if_no_ttl": True}],  # type: ignore[list-item]
        dry_run=True,
        scan_count=100,
        sample_size=5,
        history_retention_s=3600,
    )
    async with job_context(redis_server.url, key_prefix, "cleanup", config=cfg) as ctx:
        await fill(ctx.redis, f"svc:{key_prefix}:", 750)
        await fill(ctx.redis, f"svc:{key_prefix}:ttl:", 50, ttl_s=3600)
        history = ctx.keys.data("provider_health", "history", "x")
        await ctx.redis.xadd(history, {"result": "{}"}, id="1000-0")
        summary = await run_cleanup(ctx)
        assert (summary.matched, summary.deleted, summary.dry_run) == (750, 0, True)
        assert len(summary.rules[0].sample) == 5
        assert (summary.streams_trimmed, summary.entries_trimmed) == (1, 0)
        assert await count_keys(ctx.redis, f"svc:{key_prefix}:*") == 800
        assert await ctx.redis.xlen(history) == 1
        assert await ctx.redis.exists(ctx.keys.data("cleanup", "latest", "run")) == 1
    reported = [k for r in caplog.records if getattr(r, "event", None) == "cleanup_would_delete" for k in r.keys]  # type: ignore[attr-defined]
    assert len(reported) == 750 and len(set(reported)) == 750
    assert all(":ttl:" not in k for k in reported)


@pytest.mark.anyio
async def test_stale_leader_deletes_nothing(redis_server: ServerLike, key_prefix: str) -> None:
    cfg = CleanupConfig(
        rules=[{"pattern": f"svc:{key_prefix}:*", "max_age_s": 0}], scan_count=100, history_retention_s=3600  # type: ignore[list-item]
    )
    async with job_context(redis_server.url, key_prefix, "cleanup", config=cfg) as ctx:
        await fill(ctx.redis, f"svc:{key_prefix}:", 500)
        history = ctx.keys.data("provider_health", "history", "x")
        await ctx.redis.xadd(history, {"result": "{}"}, id="1000-0")
        await make_stale(ctx)
        with pytest.raises(FencedOut, match="deletion refused"):
            await run_cleanup(ctx)
        assert await count_keys(ctx.redis, f"svc:{key_prefix}:*") == 500
        # History trimming is fenced as well.
        cfg_trim = CleanupConfig(history_retention_s=3600)
        with pytest.raises(FencedOut, match="stream trim refused"):
            await run_cleanup(replace(ctx, config=cfg_trim))
        assert await ctx.redis.xlen(history) == 1


@pytest.mark.anyio
async def test_age_by_idle_time_and_by_stream_timestamps(redis_server: ServerLike, key_prefix: str) -> None:
    svc = f"svc:{key_prefix}:age"
    cfg = CleanupConfig(
        rules=[{"pattern": f"{svc}:*", "max_age_s": 2}],  # type: ignore[list-item]
        history_retention_s=3600,
    )
    async with job_context(redis_server.url, key_prefix, "cleanup", config=cfg) as ctx:
        r = ctx.redis
        await fill(r, f"{svc}:old:", 20)

        async def old_enough() -> bool:
            return int(await r.object("idletime", f"{svc}:old:0")) >= 3

        await wait_for(old_enough, 15, "the old keys to idle for 3 s")
        await fill(r, f"{svc}:new:", 20)
        # Just written (idle 0) but its newest entry is ancient: its own timestamp rules.
        await r.xadd(f"{svc}:stream_old", {"f": "v"}, id="5000-0")
        await r.xadd(f"{svc}:stream_new", {"f": "v"})
        # A job history with two entries past retention and one fresh.
        history = ctx.keys.data("provider_health", "history", "x")
        await r.xadd(history, {"result": "{}"}, id="1000-0")
        await r.xadd(history, {"result": "{}"}, id="2000-0")
        await r.xadd(history, {"result": "{}"})

        summary = await run_cleanup(ctx)
        assert await count_keys(r, f"{svc}:old:*") == 0
        assert await count_keys(r, f"{svc}:new:*") == 20
        assert await r.exists(f"{svc}:stream_old") == 0
        assert await r.exists(f"{svc}:stream_new") == 1
        assert summary.deleted == 21
        assert (summary.streams_trimmed, summary.entries_trimmed) == (1, 2)
        assert await r.xlen(history) == 1


@pytest.mark.anyio
async def test_max_keys_per_run_caps_deletions(redis_server: ServerLike, key_prefix: str) -> None:
    cfg = CleanupConfig(
        rules=[{"pattern": f"svc:{key_prefix}:*", "delete_if_no_ttl": True}],  # type: ignore[list-item]
        scan_count=100,
        max_keys_per_run=300,
    )
    async with job_context(redis_server.url, key_prefix, "cleanup", config=cfg) as ctx:
        await fill(ctx.redis, f"svc:{key_prefix}:", 1000)
        summary = await run_cleanup(ctx)
        assert (summary.deleted, summary.capped) == (300, True)
        assert await count_keys(ctx.redis, f"svc:{key_prefix}:*") == 700


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ('[{"pattern": "a:*"}]', r"LIGHTSCHED_CLEANUP_RULES.*'a:\*' deletes nothing: set max_age_s or delete_if_no_ttl"),
        ('[{"pattern": " ", "max_age_s": 1}]', r"LIGHTSCHED_CLEANUP_RULES.*pattern must not be empty"),
        ('[{"pattern": "a:*", "max_age_s": -1}]', r"LIGHTSCHED_CLEANUP_RULES.*MAX_AGE_S"),
        ("a:*", r"LIGHTSCHED_CLEANUP_RULES: .*not JSON"),
    ],
)
def test_bad_rules_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, match: str) -> None:
    monkeypatch.setenv("LIGHTSCHED_CLEANUP_RULES", value)
    with pytest.raises(JobDefinitionError, match=match):
        registry.get("cleanup").load_config()


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lfu"])
async def test_script_and_pipeline_judges_agree(redis_server: ServerLike, key_prefix: str, policy: str) -> None:
    """The one-round-trip script and the Cluster pipeline fallback give the same (pttl, age) per key."""
    r = Redis.from_url(redis_server.url)
    try:
        await r.config_set("maxmemory-policy", policy)
        h = f"svc:{key_prefix}:"
        await r.set(h + "plain", "x")
        await r.set(h + "ttl", "x", ex=3600)
        await r.xadd(h + "old_stream", {"f": "v"}, id="5000-0")
        await r.xadd(h + "empty_stream", {"f": "v"}, id="6000-0")
        await r.xdel(h + "empty_stream", "6000-0")
        keys = [(h + n).encode() for n in ("plain", "ttl", "old_stream", "empty_stream", "missing")]
        for with_age in (False, True):
            by_script = await _judge_script(r, keys, with_age)
            by_pipeline = await _judge_pipeline(r, keys, with_age)
            for (p1, _), (p2, _) in zip(by_script, by_pipeline, strict=True):
                assert p1 == p2 or (p1 > 0 and abs(p1 - p2) < 5000)
            assert by_script[0][0] == -1 and 3_000_000 < by_script[1][0] <= 3_600_000 and by_script[4][0] == -2
            for (_, a), (_, b) in zip(by_script, by_pipeline, strict=True):
                assert abs(a - b) <= 1000, (by_script, by_pipeline)  # idle time has 1 s resolution
            ages = [a for _, a in by_script]
            if not with_age:
                assert ages == [-1] * 5
            else:
                assert ages[2] > 1_000_000_000  # from the stream's own entry id (5 s after the epoch)
                assert ages[4] == -1  # gone: not measured
                for a in (ages[0], ages[1], ages[3]):  # by idle time; an LFU policy keeps none
                    assert a == -3 if policy == "allkeys-lfu" else 0 <= a < 60_000
    finally:
        await r.aclose()
