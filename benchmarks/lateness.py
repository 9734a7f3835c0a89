"""Dispatch lateness of one leader: N no-op interval jobs, in this process.

`python -m benchmarks.lateness --url URL --jobs N --seconds S [--interval-s 1]`
prints one JSON object: lateness p50/p90/p99/max in ms (actual start minus
scheduled fire time, read inside the job), runs, and the process CPU seconds
spent per 1,000 runs over the measured window. Tracing follows the standard
`OTEL_*` variables (set OTEL_EXPORTER_OTLP_ENDPOINT to turn it on), so a run
with tracing must be its own process. The first `--warmup-s` are dropped
(takeover, imports, first claims).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.interval import IntervalTrigger

import anyio
import psutil

from scheduler import JobContext, JobRegistry
from scheduler.runtime import Replica
from scheduler.settings import load_settings


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 3)

    return {"n": len(v), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(v[-1], 3),
            "mean": round(sum(v) / len(v), 3)}


async def measure(url: str, jobs: int, seconds: float, interval_s: float, warmup_s: float, phase: str = "spread") -> dict[str, object]:
    from observability.tracing import setup_tracing

    tracing = setup_tracing("bench")
    samples: list[tuple[float, float]] = []  # (monotonic, lateness ms)
    registry = JobRegistry()

    async def noop(ctx: JobContext) -> None:
        samples.append((time.monotonic(), (datetime.now(UTC) - ctx.scheduled_time).total_seconds() * 1000))

    for i in range(jobs):
        # "spread": job i fires at phase i/N of the interval, as jobs registered at different
        # times do; "aligned": every job fires at the same instant (the worst case).
        offset = timedelta(seconds=interval_s * i / jobs) if phase == "spread" else timedelta(0)
        registry.add(f"j{i:05d}", noop, trigger=IntervalTrigger(seconds=interval_s, start_date=EPOCH + offset, timezone=UTC))
    settings = load_settings(redis_url=url, key_prefix=f"bench{uuid.uuid4().hex[:8]}", replica_id="bench",
                             lease_ttl=15, renew_deadline=10, retry_period=2, http_port=0,
                             misfire_grace_time=60, run_history=1)
    replica = Replica(settings, registry)
    proc = psutil.Process()
    async with anyio.create_task_group() as tg:
        await tg.start(replica.run)
        with anyio.fail_after(60):
            while not replica.is_leader:
                await anyio.sleep(0.05)
        start = time.monotonic()
        await anyio.sleep(warmup_s)
        cpu0 = sum(proc.cpu_times()[:2])
        n0 = len(samples)
        await anyio.sleep(seconds)
        cpu1 = sum(proc.cpu_times()[:2])
        n1 = len(samples)
        replica.request_stop(now=True)
    tracing.shutdown()
    window = [ms for t, ms in samples if t >= start + warmup_s and t <= start + warmup_s + seconds]
    runs = n1 - n0
    return {"jobs": jobs, "phase": phase, "interval_s": interval_s, "seconds": seconds, "runs": runs,
            "expected_runs": round(jobs * seconds / interval_s), "lateness_ms": percentiles(window),
            "cpu_s_per_1000_runs": round((cpu1 - cpu0) / runs * 1000, 4) if runs else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--warmup-s", type=float, default=2.5)
    ap.add_argument("--interval-s", type=float, default=1.0)
    ap.add_argument("--phase", choices=("spread", "aligned"), default="spread")
    a = ap.parse_args()
    print(json.dumps(anyio.run(measure, a.url, a.jobs, a.seconds, a.interval_s, a.warmup_s, a.phase)))


if __name__ == "__main__":
    main()
