"""The Celery baseline users migrate from: beat + one solo worker running three
tasks equivalent to lightsched's built-in jobs, on the same Redis.

Run (the benchmark does this): `celery -A benchmarks.celery_baseline beat` and
`celery -A benchmarks.celery_baseline worker --pool=solo --concurrency=1`, with
`LIGHTSCHED_BENCH_CELERY_BROKER` the Redis URL. `LIGHTSCHED_BENCH_CELERY_EVERY_S`
sets every task's interval (the benchmark uses 1 s to time the first run).
Each task, when it runs, RPUSHes `{time, task}` to `bench:celery:runs`.

The tasks do the same kind of work as jobs/: system_health reads CPU, memory
and disk use with psutil and PINGs Redis; provider_health probes configured
HTTP URLs with httpx (none by default, like the lightsched job); cleanup SCANs a
key pattern and deletes expired keys. Benchmark-only: not part of lightsched.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import psutil
import redis
from celery import Celery

BROKER_ENV = "LIGHTSCHED_BENCH_CELERY_BROKER"
EVERY_ENV = "LIGHTSCHED_BENCH_CELERY_EVERY_S"
RUNS_KEY = "bench:celery:runs"

broker = os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0")
every_s = float(os.environ.get(EVERY_ENV, "30"))

app = Celery("celery_baseline", broker=broker, set_as_current=True)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "provider_health": {"task": "baseline.provider_health", "schedule": every_s},
        "system_health": {"task": "baseline.system_health", "schedule": every_s},
        "cleanup": {"task": "baseline.cleanup", "schedule": every_s},
    },
)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(broker)
    return _client


def _mark(task: str) -> None:
    _redis().rpush(RUNS_KEY, json.dumps({"time": time.time(), "task": task}))


@app.task(name="baseline.provider_health")
def provider_health() -> None:
    urls = [u for u in os.environ.get("LIGHTSCHED_BENCH_PROVIDER_URLS", "").split(",") if u]
    with httpx.Client(timeout=5) as client:
        for url in urls:
            client.get(url)
    _mark("provider_health")


@app.task(name="baseline.system_health")
def system_health() -> None:
    psutil.cpu_percent(interval=None)
    psutil.virtual_memory()
    psutil.disk_usage("/")
    _redis().ping()
    _mark("system_health")


@app.task(name="baseline.cleanup")
def cleanup() -> None:
    r = _redis()
    for key in r.scan_iter(match="bench:cleanup:*", count=500):
        if r.ttl(key) == -1:
            r.unlink(key)
    _mark("cleanup")
