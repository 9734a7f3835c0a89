"""A real `JobContext` for job tests: a real lease on a real Redis, a current fencing token.

`job_context()` acquires the deployment's lease with `leader.RedisLeaseStore`
(as a leader would), builds the context the runtime would hand a job, and
closes its client afterwards. `make_stale()` supersedes the token the way
redis-py's lock tests simulate theft: by SETting the leader key to another
holder's lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from leader import Identity, RedisLeaseStore
from scheduler import JobContext
from scheduler.keys import Keyspace

__all__ = ["job_context", "make_stale"]


@asynccontextmanager
async def job_context(
    redis_url: str,
    key_prefix: str,
    job_id: str,
    *,
    config: Any = None,
    params: Mapping[str, str] | None = None,
    loop_lag_s: float = 0.0,
    lease_ttl_ms: int = 120_000,
    replica_id: str = "test-replica",
) -> AsyncIterator[JobContext]:
    """A context whose token is current for as long as the lease lives (`lease_ttl_ms`)."""
    client = Redis.from_url(redis_url)
    keys = Keyspace(key_prefix)
    store = RedisLeaseStore(client, keys)
    try:
        result = await store.try_acquire(
            Identity(replica_id, socket.gethostname(), os.getpid()), lease_ttl_ms, datetime.now(UTC).isoformat()
        )
        if not result.acquired or result.token is None or result.lease_id is None:
            raise AssertionError(f"test lease under {keys.leader} is held by {result.holder}")
        yield JobContext(
            job_id=job_id,
            replica_id=replica_id,
            fencing_token=result.token,
            scheduled_time=datetime.now(UTC).replace(microsecond=0),
            redis=client,
            keys=keys,
            log=logging.LoggerAdapter(logging.getLogger(f"lightsched.job.{job_id}"), {"job_id": job_id}),
            config=config,
            params=dict(params or {}),
            manual=bool(params),
            loop_lag_s=loop_lag_s,
            lease_id=result.lease_id,
        )
    finally:
        await client.aclose()


async def make_stale(ctx: JobContext) -> None:
    """Hand the lease to another holder with a newer token: `ctx`'s token is then superseded."""
    other = {
        "replica_id": "usurper",
        "host": "elsewhere",
        "pid": 1,
        "fencing_token": ctx.fencing_token + 1,
        "lease_id": "usurper-lease",
        "acquired_at": datetime.now(UTC).isoformat(),
    }
    await ctx.redis.set(ctx.keys.leader, json.dumps(other), px=120_000)
    await ctx.redis.set(ctx.keys.token, str(ctx.fencing_token + 1))
