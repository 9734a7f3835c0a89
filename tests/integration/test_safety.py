"""Regression tests for the holes an outside review found in the exactly-once promise.

Each test reproduces one hole on real redis-server processes (a master/replica
pair with a cuttable replication link and a failover, a paused Redis that
loses replies, a stolen lease) and checks the behaviour that closes it:

1. WAIT_REPLICAS=1 protects slot claims across a failover (no slot twice);
2. a thread run holds its job until its thread returns (never two at once in
   one replica), and a draining leader does not give its lease back under it;
3. a fenced write checks the lease's identity, not its number, so a successor
   that was minted the same number after a lossy failover is not written over;
4. a command re-sent after a lost reply is harmless: a claim does not skip its
   own slot, an acquire does not lock its own replica out for a TTL;
5. (Cluster) WAIT travels on the script's own connection: see test_cluster.py;
6. (run-job) see test_cli.py; 7. (clock ahead) see test_clock_skew.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import anyio
import anyio.from_thread
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from observability.telemetry import Telemetry
from scheduler import JobContext, JobRegistry
from scheduler.embed import run_scheduler
from scheduler.runtime import Replica
from scheduler.settings import load_settings
from tests.support.redis_servers import ServerLike, redis_binary
from tests.support.topologies import FailoverPair
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def make(url: str, prefix: str, registry: JobRegistry, name: str, **overrides: Any) -> Replica:
    options: dict[str, Any] = {
        "lease_ttl": 4.0, "renew_deadline": 3.0, "retry_period": 0.5, "misfire_grace_time": 20,
        "http_port": 0, "drain_timeout": 5,
    }
    options.update(overrides)
    settings = load_settings(redis_url=url, key_prefix=prefix, replica_id=name, **options)
    return Replica(settings, registry, telemetry=Telemetry(name, registry=CollectorRegistry()))


def missed(replica: Replica, cause: str, job_id: str) -> float:
    value = replica.telemetry.registry.get_sample_value(
        "lightsched_slots_missed_total", {"job_id": job_id, "cause": cause}
    )
    return value or 0.0


@pytest.fixture
def pair() -> Any:
    binary = redis_binary()
    if binary is None:
        pytest.skip("needs a redis-server binary")
    p = FailoverPair(binary)
    try:
        yield p
    finally:
        p.stop()


# -- 1. WAIT and slot claims -----------------------------------------------------------------


async def test_wait_replicas_protects_slot_claims_across_a_lossy_failover(
    pair: FailoverPair, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The replication link is cut while slots fall due, then the master dies and the replica is
    promoted without the writes it never got. Claims acknowledged by no replica must not have
    started their runs, or the next leader (resuming from the older high-water mark) runs them again."""
    runs: list[tuple[str, int]] = []
    reg = JobRegistry()

    @reg.job("tick", trigger="0.25s", coalesce=False)
    async def tick(ctx: JobContext) -> None:
        runs.append((ctx.replica_id, round(ctx.scheduled_time.timestamp() * 1000)))

    # A renew every second: several slots fall due between the cut and the next renew.
    timings = {"lease_ttl": 6.0, "renew_deadline": 4.0, "retry_period": 1.0}
    a = make(pair.url, key_prefix, reg, "a", wait_replicas=1, wait_timeout_ms=200, **timings)
    b = make(pair.url, key_prefix, reg, "b", wait_replicas=1, wait_timeout_ms=200, **timings)
    async with run_scheduler(a), run_scheduler(b):
        await wait_until(lambda: len(runs) >= 4, timeout_s=30, what="runs with WAIT acknowledged")
        leader = a if a.is_leader else b
        # Cut right after a renew: the next one is a second away, and several slots fall due before it.
        renewed = leader.telemetry.registry.get_sample_value("lightsched_lease_renew_latency_seconds_count") or 0
        await wait_until(
            lambda: (leader.telemetry.registry.get_sample_value("lightsched_lease_renew_latency_seconds_count") or 0)
            > renewed,
            timeout_s=5, what="a renew", interval_s=0.005,
        )
        pair.cut()
        cut_at = len(runs)
        await anyio.sleep(2.0)  # slots fall due while no replica acknowledges anything
        await anyio.to_thread.run_sync(pair.failover)
        await wait_until(lambda: len(runs) >= cut_at + 6, timeout_s=40, what="runs after the failover")
    refused = [getattr(r, "error", "") for r in caplog.records if getattr(r, "event", "") == "store_unavailable"]
    duplicated = sorted(slot for slot, n in Counter(slot for _, slot in runs).items() if n > 1)
    assert duplicated == [], f"slots ran twice across the failover: {duplicated}"
    assert missed(leader, "unreplicated", "tick") >= 1, ("a claim no replica acknowledged must be counted", refused)


# -- 2. thread runs ------------------------------------------------------------------------


async def test_a_thread_run_holds_its_job_until_the_thread_returns(redis_url: str, key_prefix: str) -> None:
    """Lose the lease mid-run and win it back: the same replica must not start a second run of
    the job while the first one's thread still runs (cancelling a task does not stop a thread)."""
    lock = threading.Lock()
    active, most, started = [0], [0], [0]
    reg = JobRegistry()

    @reg.job("slow", trigger="0.3s", coalesce=True)
    def slow(ctx: JobContext) -> None:
        with lock:
            active[0] += 1
            started[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(2.0)
        finally:
            with lock:
                active[0] -= 1

    rep = make(redis_url, key_prefix, reg, "a", lease_ttl=2.0, renew_deadline=1.2, retry_period=0.3)
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with run_scheduler(rep):
            await wait_until(lambda: active[0] == 1, timeout_s=10, what="a thread run in flight")
            # Steal the lease for a moment: the renew finds it gone, the run is cancelled.
            await client.set("{" + key_prefix + "}:leader", '{"replica_id":"thief","fencing_token":1}', px=400)
            await wait_until(lambda: not rep.is_leader, timeout_s=5, what="the lease lost")
            await wait_until(lambda: rep.is_leader, timeout_s=10, what="the lease won back")
            await wait_until(lambda: started[0] >= 2, timeout_s=15, what="the job to run again")
    finally:
        await client.aclose()
    assert most[0] == 1, f"{most[0]} runs of one job at once in one replica"


async def test_a_draining_leader_keeps_its_lease_while_its_thread_run_executes(
    redis_url: str, key_prefix: str
) -> None:
    """A graceful stop whose drain timeout passes while a plain-function run is still executing
    must not give the lease away under it (its writes would then be refused mid-run), as long as
    the job's own timeout allows; then the lease goes."""
    ended: list[float] = []
    started = threading.Event()
    reg = JobRegistry()

    @reg.job("long", trigger="0.5s", timeout=10)
    def long(ctx: JobContext) -> None:
        started.set()
        time.sleep(2.5)
        ended.append(time.monotonic())

    rep = make(redis_url, key_prefix, reg, "a", drain_timeout=0.5, lease_ttl=2.0, renew_deadline=1.2, retry_period=0.3)
    client = sync_redis.Redis.from_url(redis_url)
    released: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get("{" + key_prefix + "}:leader") is None:
                released.append(time.monotonic())
                return
            time.sleep(0.01)

    try:
        async with run_scheduler(rep):
            await anyio.to_thread.run_sync(started.wait, 10)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        await anyio.to_thread.run_sync(watcher.join, 30)
    finally:
        client.close()
    assert ended and released, (ended, released)
    assert released[0] >= ended[0] - 0.05, "the lease was given back while the run's thread still executed"


# -- 3. fencing on the lease's identity ---------------------------------------------------------


async def test_a_repeated_token_number_does_not_let_a_stale_holder_write(pair: FailoverPair, key_prefix: str) -> None:
    """Tokens ran ahead of the clock (an earlier clock-behind event); an acquisition is lost in a
    failover; the promoted replica mints the same number again for the next leader. The old
    holder's thread run, still going, must not write during the new term."""
    keys_token = "{" + key_prefix + "}:token"
    master = sync_redis.Redis(pair.master.host, pair.master.port)
    try:
        master.set(keys_token, str(int(time.time() * 1000) + 600_000))
        assert int(master.execute_command("WAIT", 1, 2000)) == 1
    finally:
        master.close()
    pair.cut()  # what A does from now on never reaches the replica

    started = threading.Event()
    writes: list[tuple[int, bool]] = []
    reg = JobRegistry()

    @reg.job("writer", trigger="2s")
    def writer(ctx: JobContext) -> None:
        started.set()
        time.sleep(4.0)  # the failover and the new leader happen meanwhile
        ok = anyio.from_thread.run(ctx.fenced_set, ctx.key("w"), f"written under {ctx.fencing_token}")
        writes.append((ctx.fencing_token, bool(ok)))

    reg_b = JobRegistry()
    reg_b.add("writer", lambda ctx: None, trigger="2s")
    a = make(pair.url, key_prefix, reg, "a")
    async with run_scheduler(a):
        await wait_until(lambda: a.is_leader, timeout_s=10, what="A leads on the old master")
        token_a = a.fencing_token
        await anyio.to_thread.run_sync(started.wait, 10)
        a.request_stop()  # A drains (its thread run goes on) and does not contend again
        await anyio.to_thread.run_sync(pair.failover)
        b = make(pair.url, key_prefix, reg_b, "b")
        async with run_scheduler(b):
            await wait_until(lambda: b.is_leader, timeout_s=15, what="B leads on the promoted replica")
            assert b.fencing_token == token_a, "precondition: the same number minted twice"
            await wait_until(lambda: writes, timeout_s=15, what="A's thread to try its write")
    assert writes == [(token_a, False)], "a stale holder's write was accepted during its successor's term"


# -- 4. replies lost after the command ran, re-sent by redis-py ------------------------------------

#: A pause of Redis just over the socket timeout: the command runs when Redis resumes, its
#: reply is lost (the client gave up on that connection), and redis-py sends it again.
SOCKET_TIMEOUT_S, PAUSE_S = 0.5, 0.8


async def _pause_redis_at(server: ServerLike, at_wall_s: float) -> float:
    """SIGSTOP Redis at wall time `at_wall_s` for PAUSE_S; returns the monotonic time it resumed."""
    await anyio.sleep(max(0.0, at_wall_s - time.time()))
    server.pause()
    try:
        await anyio.sleep(PAUSE_S)
    finally:
        server.resume()
    return time.monotonic()


async def test_a_claim_whose_reply_was_lost_neither_skips_nor_repeats_its_slot(
    redis_server: ServerLike, key_prefix: str
) -> None:
    runs: list[int] = []
    reg = JobRegistry()

    @reg.job("tick", trigger="1s", coalesce=False)
    async def tick(ctx: JobContext) -> None:
        runs.append(round(ctx.scheduled_time.timestamp() * 1000))

    rep = make(redis_server.url, key_prefix, reg, "a", lease_ttl=6.0, renew_deadline=4.0, retry_period=1.0,
               redis_socket_timeout=SOCKET_TIMEOUT_S)
    async with run_scheduler(rep):
        await wait_until(lambda: len(runs) >= 2, timeout_s=15, what="two runs")
        slot_s = float(int(time.time()) + 2)
        await _pause_redis_at(redis_server, slot_s - 0.05)  # the claim of `slot_s` is in flight
        await wait_until(lambda: max(runs) >= slot_s * 1000 + 2000, timeout_s=15, what="runs after the pause")
    target = round(slot_s * 1000)
    assert runs.count(target) == 1, f"the slot whose claim reply was lost ran {runs.count(target)} times: {runs}"
    assert missed(rep, "redis", "tick") == 0


async def test_an_acquire_whose_reply_was_lost_and_re_sent_takes_the_lease_at_once(
    redis_server: ServerLike, key_prefix: str
) -> None:
    reg = JobRegistry()
    reg.add("noop", lambda ctx: None, trigger="1h")
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        # Someone else's lease, 1.5 s left: the replica wakes just after it expires and sends
        # its acquire into a paused Redis.
        client.set("{" + key_prefix + "}:leader", '{"replica_id":"gone","fencing_token":1}', px=1500)
        expiry = time.time() + 1.5
    finally:
        client.close()
    rep = make(redis_server.url, key_prefix, reg, "a", lease_ttl=6.0, renew_deadline=4.0, retry_period=1.0,
               redis_socket_timeout=SOCKET_TIMEOUT_S)
    async with run_scheduler(rep):
        resumed = await _pause_redis_at(redis_server, expiry - 0.1)
        await wait_until(lambda: rep.is_leader, timeout_s=15, what="leadership")
        took_s = time.monotonic() - resumed
    # Not recognising its own re-sent attempt, it would wait out its own lease (6 s).
    assert took_s < 3.0, f"leader {took_s:.2f}s after Redis resumed"


# -- 8. smaller ones -------------------------------------------------------------------------------


async def test_a_standbys_failed_acquires_are_not_counted_as_renew_failures(key_prefix: str) -> None:
    from scheduler.devredis import free_port

    reg = JobRegistry()
    reg.add("noop", lambda ctx: None, trigger="1h")
    rep = make(f"redis://127.0.0.1:{free_port()}/0", key_prefix, reg, "a", lease_ttl=2.0, renew_deadline=1.2,
               retry_period=0.3)

    def sample(name: str) -> float:
        return rep.telemetry.registry.get_sample_value(name) or 0.0

    async with run_scheduler(rep):
        await wait_until(lambda: sample("lightsched_acquire_failures_total") >= 2, timeout_s=10,
                         what="failed acquire attempts counted")
    assert sample("lightsched_renew_failures_total") == 0, "a standby renews nothing"
