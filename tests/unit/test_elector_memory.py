"""The elector's decisions, one step at a time, on an in-memory store and a fake clock.

Table-driven like client-go's `tryAcquireOrRenew` tests: each case steps the
elector (`_standby_step`, `_leader_step`) through a fault and checks the
events it emitted and what it left in the store. Milliseconds each; the same
behaviour on real Redis is in tests/integration/test_elector.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from leader import (
    AcquireFailed,
    Elector,
    FakeClock,
    Identity,
    LeaseTimings,
    RenewFailed,
    StartedLeading,
    StepDownReason,
    StoppedLeading,
)
from tests.support.memory_store import InMemoryLeaseStore

pytestmark = pytest.mark.anyio

# Short, so the few real sleeps the elector takes between steps (backoffs) stay in milliseconds.
TIMINGS = LeaseTimings(ttl_s=0.3, renew_deadline_s=0.2, retry_period_s=0.05)


def setup() -> tuple[Elector, InMemoryLeaseStore, FakeClock, list[Any]]:
    clock = FakeClock()
    store = InMemoryLeaseStore(clock)
    elector = Elector(store, Identity("me", "host", 1), TIMINGS, clock=clock, rng=lambda: 0.0)
    events: list[Any] = []
    elector.subscribe(events.append)
    return elector, store, clock, events


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def lead(elector: Elector, clock: FakeClock) -> None:
    await elector._standby_step()
    assert elector.is_leader()


async def renew_once(elector: Elector, clock: FakeClock) -> None:
    """Advance to the renew's due time and take one leader step."""
    term = elector.term
    assert term is not None
    clock.advance(max(0.0, term.last_renew_sent_mono + TIMINGS.retry_period_s - clock.monotonic()))
    await elector._leader_step(term)


def advance(clock: FakeClock, seconds: float) -> Callable[[], None]:
    return lambda: clock.advance(seconds)


async def _renew_lands_after_the_deadline(elector: Elector, store: InMemoryLeaseStore, clock: FakeClock) -> None:
    # The renew succeeds in the store, but its round trip outlasts the time left: Redis was slow.
    store.script["renew"] = [advance(clock, TIMINGS.renew_deadline_s + 0.01)]
    await renew_once(elector, clock)
    assert elector.term is not None
    await elector._leader_step(elector.term)


async def _renews_fail_until_the_deadline(elector: Elector, store: InMemoryLeaseStore, clock: FakeClock) -> None:
    store.script["renew"] = ["error"] * 50
    for _ in range(50):
        if elector.term is None:
            return
        clock.advance(0.03)  # failed renews retry on a backoff until the deadline passes
        await elector._leader_step(elector.term)


async def _process_stalls_past_the_deadline(elector: Elector, store: InMemoryLeaseStore, clock: FakeClock) -> None:
    clock.advance(TIMINGS.renew_deadline_s + 0.01)  # SIGSTOP, a blocked loop: no step ran meanwhile
    assert elector.term is not None
    await elector._leader_step(elector.term)


async def _renew_acknowledged_by_too_few_replicas(
    elector: Elector, store: InMemoryLeaseStore, clock: FakeClock
) -> None:
    store.script["renew"] = ["unreplicated"]
    await renew_once(elector, clock)


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (_renew_lands_after_the_deadline, StepDownReason.DEADLINE),
        (_renews_fail_until_the_deadline, StepDownReason.DEADLINE),
        (_process_stalls_past_the_deadline, StepDownReason.STALLED),
        (_renew_acknowledged_by_too_few_replicas, StepDownReason.UNREPLICATED),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)).strip("_"),
)
async def test_how_a_term_ends(scenario: Callable[..., Any], reason: StepDownReason) -> None:
    elector, store, clock, events = setup()
    await lead(elector, clock)
    await scenario(elector, store, clock)
    assert [s.reason for s in of(events, StoppedLeading)] == [reason]
    assert not elector.is_leader()


async def test_an_unreplicated_renew_gives_the_lease_back_at_once() -> None:
    elector, store, clock, events = setup()
    await lead(elector, clock)
    store.script["renew"] = ["unreplicated"]
    await renew_once(elector, clock)
    assert [s.reason for s in of(events, StoppedLeading)] == [StepDownReason.UNREPLICATED]
    assert store.released == 1 and store.value is None, "a lease held on the primary only must not linger"


async def test_an_acquire_whose_reply_was_lost_is_adopted_by_the_next_attempt() -> None:
    elector, store, clock, events = setup()
    store.script["acquire"] = ["lost_reply"]
    await elector._standby_step()
    assert not elector.is_leader() and len(of(events, AcquireFailed)) == 1
    taken = store.value
    await elector._standby_step()
    started = of(events, StartedLeading)
    assert len(started) == 1 and started[0].term.value == taken, "the lease its lost reply created is its own"
    assert of(events, RenewFailed) == [], "a standby's failures are not renew failures"


async def test_a_re_sent_acquire_is_recognised_by_its_lease_id() -> None:
    elector, store, clock, _ = setup()
    holder = Identity("me", "host", 1)
    first = await store.try_acquire(holder, 300, "t", "attempt-1")
    again = await store.try_acquire(holder, 300, "t", "attempt-1")  # what a redis-py re-send does
    other = await store.try_acquire(holder, 300, "t", "attempt-2")
    assert first.acquired and again.acquired and again.token == first.token
    assert not other.acquired


async def test_a_released_replica_sits_out_one_retry_period() -> None:
    elector, store, clock, events = setup()
    await lead(elector, clock)
    assert await elector.release()
    acquires = sum(1 for op, _ in store.calls if op == "acquire")
    await elector._standby_step()  # still cooling off: waits (a real, short sleep) instead of contending
    assert sum(1 for op, _ in store.calls if op == "acquire") == acquires
    clock.advance(TIMINGS.retry_period_s)
    await elector._standby_step()
    assert elector.is_leader()


async def test_exactly_one_stopped_leading_per_term() -> None:
    elector, store, clock, events = setup()
    await lead(elector, clock)
    store.steal()
    await renew_once(elector, clock)  # finds it gone: lost
    assert not await elector.release()  # nothing left to release, and no second event
    assert [s.reason for s in of(events, StoppedLeading)] == [StepDownReason.LOST]
