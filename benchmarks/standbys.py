"""K electors contending for one lease, in this one process (for the Redis cost benchmark).

`python -m benchmarks.standbys --url URL --prefix P --count K [--ttl 15 --deadline 10 --retry 2]`
runs until killed; prints `ready` once every elector has started.
"""

from __future__ import annotations

import argparse
import os
import socket

import anyio
from redis.asyncio import Redis

from leader import Elector, Identity, LeaseTimings, RedisLeaseStore
from leader.keys import LeaseKeys


async def main(url: str, prefix: str, count: int, timings: LeaseTimings, name: str) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(count):
            client = Redis.from_url(url)
            store = RedisLeaseStore(client, LeaseKeys(prefix))
            elector = Elector(store, Identity(f"{name}-{i}", socket.gethostname(), os.getpid()), timings)
            await tg.start(elector.run)
        print("ready", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--name", default="s")
    ap.add_argument("--ttl", type=float, default=15)
    ap.add_argument("--deadline", type=float, default=10)
    ap.add_argument("--retry", type=float, default=2)
    a = ap.parse_args()
    anyio.run(main, a.url, a.prefix, a.count, LeaseTimings(a.ttl, a.deadline, a.retry), a.name)
