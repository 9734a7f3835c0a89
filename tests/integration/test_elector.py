"""The Elector on real Redis servers: one leader at a time through releases,
crashes, Redis outages, restarts, loop stalls and SIGSTOPped processes.

Timings are short (TTL 1.5 s) so faults play out in seconds; every wait is a
polled condition with a deadline, and bounds carry wide margins for a noisy
two-core machine.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
from redis.asyncio import Redis

from leader import Elector, Identity, LeaseTimings, StepDownReason, SystemClock
from tests.support.elector_proc import (
    ElectorProcess,
    Recorder,
    assert_no_overlap,
    make_store,
    spawned,
    terms,
    wait_for,
)
from tests.support.redis_servers import ServerLike

pytestmark = pytest.mark.anyio

FAST = LeaseTimings(ttl_s=1.5, renew_deadline_s=0.9, retry_period_s=0.25)
CLOCK = SystemClock()


@dataclass
class Running:
    elector: Elector
    rec: Recorder
    scope: anyio.CancelScope

    @property
    def name(self) -> str:
        return self.rec.name


async def _run(r: Running, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    with r.scope:
        await r.elector.run(task_status=task_status)


@asynccontextmanager
async def running(url: str, prefix: str, n: int, timings: LeaseTimings = FAST) -> AsyncIterator[list[Running]]:
    """`n` electors in this event loop, each cancellable on its own through `scope`."""
    stores = [make_store(url, prefix) for _ in range(n)]
    out: list[Running] = []
    try:
        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                elector = Elector(store, Identity(f"e{i}", socket.gethostname(), 1000 + i), timings)
                r = Running(elector, Recorder(f"e{i}"), anyio.CancelScope())
                elector.subscribe(r.rec)
                out.append(r)
                await tg.start(_run, r)
            yield out
            tg.cancel_scope.cancel()
    finally:
        for store in stores:
            with anyio.move_on_after(2, shield=True):
                await store.aclose()


def leaders(rs: list[Running]) -> list[Running]:
    return [r for r in rs if r.elector.is_leader()]


async def one_leader(rs: list[Running], timeout_s: float = 10) -> Running:
    await wait_for(lambda: len(leaders(rs)) == 1, timeout_s)
    return leaders(rs)[0]


async def sample_at_most_one_leader(rs: list[Running], duration_s: float, interval_s: float = 0.005) -> int:
    """Sample `is_leader()` of all electors; fail on two at once. Returns samples that had a leader."""
    led = 0
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        now_leading = [r.name for r in leaders(rs)]
        assert len(now_leading) <= 1, f"two leaders at once: {now_leading}"
        led += bool(now_leading)
        await anyio.sleep(interval_s)
    return led


async def wait_subscribed(url: str, channel: str, count: int) -> None:
    client = Redis.from_url(url)
    try:
        with anyio.fail_after(10):
            while (await client.pubsub_numsub(channel))[0][1] < count:
                await anyio.sleep(0.01)
    finally:
        await client.aclose()


def all_records(rs: list[Running]) -> list[dict[str, object]]:
    return [e for r in rs for e in r.rec.events]


# -- one leader at a time ---------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5])
async def test_never_two_leaders_through_releases_and_cancellations(redis_url: str, key_prefix: str, n: int) -> None:
    async with running(redis_url, key_prefix, n) as rs:
        await one_leader(rs)
        led = 0
        for round_ in range(4):
            led += await sample_at_most_one_leader(rs, 0.5)
            leader = await one_leader(rs)
            if round_ == 1:
                leader.scope.cancel()  # a crash: no release, the lease runs out in Redis
            else:
                await leader.elector.release()
        led += await sample_at_most_one_leader(rs, 2.0)
        assert led > 0
        await one_leader(rs)
    intervals = terms(all_records(rs))
    assert len(intervals) >= 4
    assert_no_overlap(intervals)


async def test_graceful_release_is_taken_over_within_milliseconds(redis_url: str, key_prefix: str) -> None:
    # A long retry period: a standby that only polled would need >= 1 s.
    slow_poll = LeaseTimings(ttl_s=6.0, renew_deadline_s=4.0, retry_period_s=1.0)
    # Four, so that after three quick releases (each releaser sits out one retry
    # period) a standby is still free to take the third.
    async with running(redis_url, key_prefix, 4, slow_poll) as rs:
        await wait_subscribed(redis_url, rs[0].elector._store.keys.released_channel, 4)  # type: ignore[attr-defined]
        gaps = []
        for _ in range(3):
            old = await one_leader(rs)
            before = {r.name: len(r.rec.of("started")) for r in rs}
            released_at = CLOCK.monotonic()
            assert await old.elector.release()
            await wait_for(lambda: any(len(r.rec.of("started")) > before[r.name] for r in rs), 5)
            new = next(r for r in rs if len(r.rec.of("started")) > before[r.name])
            assert new is not old
            gaps.append(new.rec.of("started")[-1]["mono"] - released_at)
        assert max(gaps) < 0.5 * slow_poll.retry_period_s, gaps
    assert_no_overlap(terms(all_records(rs)))


async def test_a_cancelled_leader_is_replaced_when_its_lease_expires(redis_url: str, key_prefix: str) -> None:
    async with running(redis_url, key_prefix, 2) as rs:
        old = await one_leader(rs)
        other = next(r for r in rs if r is not old)
        client = Redis.from_url(redis_url)
        try:
            old.scope.cancel()
            cancelled_at = CLOCK.monotonic()
            pttl_ms = await client.pttl(old.elector._store.keys.leader)  # type: ignore[attr-defined]
        finally:
            await client.aclose()
        expires_at = cancelled_at + pttl_ms / 1000
        assert pttl_ms > (FAST.ttl_s - FAST.retry_period_s - 0.2) * 1000  # renewed on schedule until the end
        assert [e["reason"] for e in old.rec.of("stopped")] == ["cancelled"]
        await wait_for(lambda: other.rec.of("started"), FAST.ttl_s + 5)
        took_over = other.rec.of("started")[-1]["mono"]
        assert took_over >= expires_at - 0.05, "taken over before the lease expired in Redis"
        assert took_over <= expires_at + FAST.retry_period_s + 1.0


# -- Redis faults ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["sigstop", "down"])
async def test_redis_outage_longer_than_the_ttl(redis_server: ServerLike, fault: str) -> None:
    async with running(redis_server.url, "outage", 2) as rs:
        old = await one_leader(rs)
        term = old.elector.term
        assert term is not None
        if fault == "sigstop":
            redis_server.pause()
        else:
            redis_server.kill()
        try:
            with anyio.fail_after(10):
                await wait_for(lambda: old.rec.of("stopped"), 10)
            stopped = old.rec.of("stopped")[-1]
            # The last renew that could have reached Redis was sent no later than this.
            last_sent = term.last_renew_sent_mono
            assert stopped["reason"] == StepDownReason.DEADLINE.value
            assert stopped["mono"] < last_sent + FAST.ttl_s, "stepped down only after the lease could have expired"
            assert stopped["mono"] >= last_sent + FAST.renew_deadline_s - 0.01
            # Nobody leads while Redis is away; wait out the TTL with room to spare.
            end = last_sent + FAST.ttl_s + 0.5
            while CLOCK.monotonic() < end:
                assert not leaders(rs)
                await anyio.sleep(0.02)
        finally:
            if fault == "sigstop":
                redis_server.resume()
            else:
                redis_server.start()
        await one_leader(rs, timeout_s=10)
        assert await sample_at_most_one_leader(rs, 1.0) > 0
    assert_no_overlap(terms(all_records(rs)))


async def test_redis_restarted_empty_while_leading(redis_server: ServerLike) -> None:
    # A Redis that loses its data loses the lease without telling anyone, so a
    # standby may lead before the old leader notices: no overlap check here.
    # What must hold: the old leader finds out (LOST) and tokens keep rising,
    # so fencing refuses the old leader's writes.
    async with running(redis_server.url, "restart", 2) as rs:
        old = await one_leader(rs)
        first_token = old.rec.of("started")[-1]["token"]
        redis_server.restart()
        await wait_for(lambda: old.rec.of("stopped"), 10)
        assert old.rec.of("stopped")[-1]["reason"] == StepDownReason.LOST.value
        new = await one_leader(rs)
        assert new.rec.of("started")[-1]["token"] > first_token
        assert await sample_at_most_one_leader(rs, 0.5) > 0


async def test_an_acquire_whose_reply_was_lost_is_adopted(
    redis_server: ServerLike, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightsched.leader")
    async with running(redis_server.url, "adopt", 1) as rs:
        (only,) = rs
        await one_leader(rs)
        await only.elector.release()  # stands by (cool-off), then tries again
        redis_server.pause()
        try:
            # Its attempts time out; Redis holds them, unanswered, in its socket buffers.
            await wait_for(lambda: any(getattr(r, "event", "") == "store_unavailable" for r in caplog.records), 10)
            await anyio.sleep(FAST.retry_period_s)
        finally:
            redis_server.resume()
        resumed = CLOCK.monotonic()
        await one_leader(rs, timeout_s=10)
        # Without adoption, the queued acquire's lease would keep it out for a whole TTL.
        assert only.rec.of("started")[-1]["mono"] - resumed < FAST.ttl_s
        assert any(getattr(r, "event", "") == "lease_adopted" for r in caplog.records)


# -- stalls -------------------------------------------------------------------------


async def test_a_stalled_event_loop_yields_to_another_process(redis_url: str, key_prefix: str) -> None:
    async with running(redis_url, key_prefix, 1) as rs:
        (me,) = rs
        await one_leader(rs)
        other = ElectorProcess(redis_url, key_prefix, "other", FAST)
        with spawned(other):
            await wait_for(lambda: other.of("observed"), 20)
            term = me.elector.term
            assert term is not None
            renewed = term.last_renew_sent_mono
            await wait_for(lambda: term.last_renew_sent_mono > renewed, 5)  # the elector now sleeps
            time.sleep(FAST.ttl_s + 0.5)  # a coroutine that blocks the loop (sync code in async def)
            # Before any other task of this loop has run:
            assert not me.elector.is_leader()
            assert me.elector.current_term() is None
            assert not me.rec.of("stopped")
            woke = CLOCK.monotonic()
            await wait_for(lambda: other.of("started"), 10)
            await wait_for(lambda: me.rec.of("stopped"), 5)
            assert me.rec.of("stopped")[-1]["reason"] == StepDownReason.STALLED.value
            # The other process took over during the stall, after our belief had ended.
            assert term.valid_until() <= other.of("started")[0]["mono"] < woke


async def test_a_sigstopped_process_does_not_believe_it_leads_when_it_wakes(redis_url: str, key_prefix: str) -> None:
    stopped_proc = ElectorProcess(redis_url, key_prefix, "paused", FAST, act_interval_s=0.02)
    with spawned(stopped_proc):
        await wait_for(lambda: stopped_proc.of("started"), 20)
        async with running(redis_url, key_prefix, 1) as rs:
            (me,) = rs
            await wait_for(lambda: me.rec.of("observed"), 10)
            await wait_for(lambda: stopped_proc.of("act"), 5)
            stopped_proc.signal(signal.SIGSTOP)
            await wait_for(lambda: me.rec.of("started"), FAST.ttl_s + 10)
            await anyio.sleep(0.2)  # let it lead a while before the sleeper wakes
            stopped_proc.signal(signal.SIGCONT)
            woke = CLOCK.monotonic()
            await wait_for(lambda: stopped_proc.of("stopped"), 10)
            await wait_for(lambda: stopped_proc.of("observed")[-1]["replica_id"] == "e0", 10)
            assert stopped_proc.of("stopped")[-1]["reason"] in {StepDownReason.STALLED.value, StepDownReason.LOST.value}
            took_over = me.rec.of("started")[0]["mono"]
            acts = stopped_proc.of("act")
            assert acts and max(a["mono"] for a in acts) < took_over, "acted while another replica led"
            assert not [a for a in acts if a["mono"] >= woke]
            assert me.elector.is_leader()
    # Belief intervals (a StoppedLeading seen late still ends the belief at the deadline).
    assert_no_overlap(terms(me.rec.events + stopped_proc.events))


# -- terms, handoff -----------------------------------------------------------------


async def test_stop_leading_fires_once_per_term_and_a_demoted_elector_leads_again(
    redis_url: str, key_prefix: str
) -> None:
    async with running(redis_url, key_prefix, 2) as rs:
        first = await one_leader(rs)
        assert await first.elector.release()
        assert not await first.elector.release()  # idempotent: no second StoppedLeading
        second = await one_leader(rs)
        assert second is not first
        # Demoted by theft: the key now holds another value for a short while.
        client = Redis.from_url(redis_url)
        try:
            await client.set(second.elector._store.keys.leader, "stolen", px=600)  # type: ignore[attr-defined]
        finally:
            await client.aclose()
        await wait_for(lambda: second.rec.of("stopped"), 5)
        assert second.rec.of("stopped")[-1]["reason"] == StepDownReason.LOST.value
        await wait_for(lambda: len(first.rec.of("started")) == 2 or len(second.rec.of("started")) == 2, 10)
    for r in rs:
        started = [e["token"] for e in r.rec.of("started")]
        stopped = [e["token"] for e in r.rec.of("stopped")]
        assert started == stopped, f"{r.name}: every term stops exactly once"
    tokens = [e["token"] for e in sorted(all_records(rs), key=lambda e: e["mono"]) if e["e"] == "started"]
    assert len(tokens) == 3 and tokens == sorted(set(tokens))


async def test_a_handoff_request_reaches_only_the_leader_holding_that_token(redis_url: str, key_prefix: str) -> None:
    async with running(redis_url, key_prefix, 2) as rs:
        leader = await one_leader(rs)
        token = leader.rec.of("started")[-1]["token"]
        store = make_store(redis_url, key_prefix)
        try:
            await wait_subscribed(redis_url, store.keys.handoff_channel, 2)
            assert await store.request_handoff(str(token + 1)) == 2
            assert await store.request_handoff(str(token)) == 2  # a bare token: what older CLIs send
            await wait_for(lambda: leader.rec.of("handoff"), 5)
            await anyio.sleep(0.1)  # any stray delivery of the wrong token would have landed too
            assert [e["token"] for e in all_records(rs) if e["e"] == "handoff"] == [token]
            assert leader.elector.is_leader()  # the owner decides when to release
        finally:
            await store.aclose()

