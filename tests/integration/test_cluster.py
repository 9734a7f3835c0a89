"""Redis Cluster: three masters made with `redis-cli --cluster create` from the
suite's redis-server binary. Electors and fenced slot claims go through
`make_client` with Cluster settings; every key of a deployment shares the
`{prefix}` hash tag, hence one slot.

Shows: the hash slot of `{prefix}` moved to another master in mid-leadership
(CLUSTER SETSLOT + MIGRATE) is followed by the clients (MOVED/ASK), tokens keep
increasing and the claims continue. With one replica per master, a SIGKILLed
master's replica takes over and leadership continues there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import anyio
import pytest
from redis.crc import key_slot

from scheduler.connection import NamingRedisCluster, make_client
from scheduler.errors import describe_redis_error
from scheduler.keys import Keyspace
from scheduler.settings import Settings
from tests.support.redis_servers import redis_binary, redis_cli
from tests.support.topologies import FAST_TIMINGS, ClusterSet, ElectorFleet
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.anyio,
    # redis-py's cluster client replaces ClusterNode objects when it refreshes its map after
    # a failover and sometimes forgets the old ones' sockets open (NamingRedisCluster.aclose
    # closes those it saw). That leak is redis-py's, reported when the garbage is collected;
    # it must not fail these tests, whose assertions are about the lease.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _cluster(replicas_per_master: int) -> Iterator[ClusterSet]:
    binary, cli = redis_binary(), redis_cli()
    if binary is None or cli is None:
        pytest.skip("no redis-server/redis-cli binary for the Cluster topology")
    topo = ClusterSet(binary, cli, masters=3, replicas_per_master=replicas_per_master).start()
    try:
        yield topo
    finally:
        topo.stop()


@pytest.fixture
def cluster() -> Iterator[ClusterSet]:
    yield from _cluster(0)


@pytest.fixture
def cluster_with_replicas() -> Iterator[ClusterSet]:
    yield from _cluster(1)


def cluster_settings(topo: ClusterSet) -> Settings:
    return Settings(
        redis_cluster_nodes=topo.seeds,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        **FAST_TIMINGS,
    )


async def test_electors_follow_a_slot_move(cluster: ClusterSet) -> None:
    settings = cluster_settings(cluster)
    keys = Keyspace(settings.key_prefix)
    slot = key_slot(keys.leader.encode())
    assert slot == key_slot(keys.job(ElectorFleet.JOB).encode()) == key_slot(keys.token.encode())
    fleet = ElectorFleet(settings, n=3)
    assert isinstance(fleet.members[0].clients[0], NamingRedisCluster)
    async with anyio.create_task_group() as tg:
        await tg.start(fleet.run)
        await wait_until(lambda: fleet.leader() is not None and len(fleet.all_claims()) >= 3, 15, "a leader claiming")
        src = cluster.owner_port(slot)
        dst = next(n.port for n in cluster.nodes if n.port != src)
        tokens_before = fleet.max_token()

        moved = await anyio.to_thread.run_sync(cluster.move_slot, slot, dst)
        moved_at = time.monotonic()
        assert moved >= 3  # leader, token, the job hash at least
        assert all(cluster.owner_port(slot, via=n.port) == dst for n in cluster.nodes)

        await wait_until(
            lambda: len([c for c in fleet.all_claims() if c.at_mono > moved_at]) >= 5 and fleet.leader() is not None,
            20,
            "slot claims after the move",
        )
        tg.cancel_scope.cancel()

    fleet.check_safety()
    assert fleet.max_token() >= tokens_before
    with cluster.client(dst) as c:
        assert c.exists(keys.leader, keys.token) == 2, "the lease now lives on the destination master"
    with cluster.client(src) as c:
        assert int(c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0


async def test_leadership_survives_a_cluster_master_failover(cluster_with_replicas: ClusterSet) -> None:
    cluster = cluster_with_replicas
    settings = cluster_settings(cluster)
    slot = key_slot(Keyspace(settings.key_prefix).leader.encode())
    fleet = ElectorFleet(settings, n=2)
    async with anyio.create_task_group() as tg:
        await tg.start(fleet.run)
        await wait_until(lambda: fleet.leader() is not None and len(fleet.all_claims()) >= 3, 15, "a leader claiming")
        master = cluster.owner_port(slot)
        replica = cluster.replica_of(master)
        cluster.node(master).kill()
        killed_at = time.monotonic()

        def promoted() -> bool:
            try:
                return cluster.owner_port(slot, via=replica) == replica
            except LookupError:
                return False

        await wait_until(promoted, 30, "the replica's promotion")
        await wait_until(
            lambda: len([c for c in fleet.all_claims() if c.at_mono > killed_at]) >= 5 and fleet.leader() is not None,
            25,
            "slot claims after the failover",
        )
        tg.cancel_scope.cancel()
    fleet.check_safety()


async def test_unreachable_cluster_is_one_line() -> None:
    from scheduler.devredis import free_port

    settings = Settings(redis_cluster_nodes=f"127.0.0.1:{free_port()}", redis_socket_timeout=1.0)
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line
    assert "no Redis Cluster node answered" in line or "refused" in line, line


async def test_wait_counts_the_acknowledgements_of_the_scripts_own_connection(cluster_with_replicas: ClusterSet) -> None:
    """WAIT counts replica acknowledgements of the writes made on its own connection. redis-py's
    cluster client hands a node's connections out first in, first out: with two in the pool, a WAIT
    sent after the script (not with it) went down the other one, which wrote nothing, and counted a
    replica that had acknowledged nothing."""
    import asyncio

    from leader import Identity, RedisLeaseStore

    settings = cluster_settings(cluster_with_replicas)
    keys = Keyspace(settings.key_prefix)
    master_port = cluster_with_replicas.owner_port(key_slot(keys.leader.encode()))
    replica = cluster_with_replicas.node(cluster_with_replicas.replica_of(master_port))
    import redis as sync_redis

    direct = sync_redis.Redis(port=master_port, socket_timeout=2)
    try:  # the replica has synced (a fresh cluster's replicas take a moment)
        await wait_until(
            lambda: direct.set(keys.data("probe"), "1") and int(direct.execute_command("WAIT", 1, 200)) >= 1,
            20, "the replica in sync",
        )
    finally:
        direct.close()
    client = make_client(settings, "lease")
    store = RedisLeaseStore(client, keys, wait_replicas=1, wait_timeout_ms=300)
    me = Identity("m0", "test", 1)
    try:
        res = await store.try_acquire(me, 3000, "2026-01-01T00:00:00Z")
        assert res.acquired and res.value is not None, "the replica acknowledges while it runs"
        assert await store.release(res.value)
        # Several connections to the node in the client's pool, each with a write the replica has
        # acknowledged (as the renews of a long term leave them).
        await asyncio.gather(*(client.set(keys.data(str(i)), "1") for i in range(4)))
        direct = sync_redis.Redis(port=master_port, socket_timeout=2)
        try:
            direct.set(keys.data("probe"), "2")
            assert int(direct.execute_command("WAIT", 1, 2000)) >= 1
        finally:
            direct.close()
        replica.pause()  # it acknowledges nothing from now on (its link stays up)
        try:
            res = await store.try_acquire(me, 3000, "2026-01-01T00:00:01Z")
        finally:
            replica.resume()
        assert not res.acquired, "a lease write no replica acknowledged counted as replicated"
    finally:
        await store.aclose()
