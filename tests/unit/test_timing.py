"""The pure lease timing, driven by FakeClock: no sleeping, no Redis."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leader import FakeClock, InvalidTimings, LeaseTerm, LeaseTimings
from leader.timing import EXPIRY_SLACK_S, RETRY_JITTER, leader_renew_delay_s, standby_retry_delay_s

T = LeaseTimings(ttl_s=15.0, renew_deadline_s=10.0, retry_period_s=2.0)


def term_at(clock: FakeClock, timings: LeaseTimings = T) -> LeaseTerm:
    return LeaseTerm(token=7, value="v", timings=timings, acquire_sent_mono=clock.monotonic())


# -- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "deadline", "retry", "names"),
    [
        (10.0, 10.0, 2.0, ("lease ttl", "renew deadline")),
        (5.0, 10.0, 2.0, ("lease ttl", "renew deadline")),
        (15.0, 2.0, 2.0, ("renew deadline", "retry period")),
        (15.0, 2.0, 3.0, ("renew deadline", "retry period")),
        (0.0, 10.0, 2.0, ("ttl_s",)),
        (15.0, -1.0, 2.0, ("renew_deadline_s",)),
        (15.0, 10.0, 0.0, ("retry_period_s",)),
        (math.inf, 10.0, 2.0, ("ttl_s",)),
        (15.0, math.nan, 2.0, ("renew_deadline_s",)),
    ],
)
def test_impossible_timings_are_refused_naming_the_settings(
    ttl: float, deadline: float, retry: float, names: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidTimings) as err:
        LeaseTimings(ttl, deadline, retry)
    msg = str(err.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg


@pytest.mark.parametrize(("ttl", "ms"), [(15.0, 15000), (2.0, 2000), (0.0004, 1), (1.2345, 1234)])
def test_ttl_ms(ttl: float, ms: int) -> None:
    assert LeaseTimings(ttl, ttl / 2, ttl / 4).ttl_ms == ms


# -- the leader's validity window ---------------------------------------------


@pytest.mark.parametrize(
    ("renew_sent_after", "check_after", "valid"),
    [
        (None, 0.0, True),
        (None, 9.999, True),
        (None, 10.0, False),  # exactly at the deadline the belief has ended
        (None, 14.0, False),
        (3.0, 12.999, True),  # a renew sent at +3 carries the belief to +13
        (3.0, 13.0, False),
    ],
)
def test_validity_window(renew_sent_after: float | None, check_after: float, valid: bool) -> None:
    clock = FakeClock()
    start = clock.monotonic()
    term = term_at(clock)
    if renew_sent_after is not None:
        term.renewed(start + renew_sent_after)
    assert term.is_valid(start + check_after) is valid
    assert term.time_left_s(start + check_after) == pytest.approx(max(0.0, term.valid_until() - start - check_after))


def test_an_older_renew_never_shortens_the_term() -> None:
    clock = FakeClock()
    term = term_at(clock)
    term.renewed(clock.monotonic() + 4.0)
    term.renewed(clock.monotonic() + 1.0)  # a slow renew answered after a faster one
    assert term.valid_until() == clock.monotonic() + 4.0 + T.renew_deadline_s


@pytest.mark.parametrize(
    ("elapsed", "failures", "backoff", "delay"),
    [
        (0.0, 0, 0.0, 2.0),  # just renewed: wait one retry period
        (0.5, 0, 0.0, 1.5),
        (2.5, 0, 0.0, 0.0),  # overdue: renew now
        (1.0, 1, 0.3, 0.3),  # after a failure: the caller's backoff
        (9.8, 3, 2.0, 0.2),  # ...but never past the own deadline, so the step-down runs on time
        (10.5, 2, 1.0, 0.0),
    ],
)
def test_leader_renew_delay(elapsed: float, failures: int, backoff: float, delay: float) -> None:
    clock = FakeClock()
    term = term_at(clock)
    clock.advance(elapsed)
    assert leader_renew_delay_s(term, clock.monotonic(), failures, backoff) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("pttl_ms", "rand", "delay"),
    [
        (None, 0.0, 2.0),  # nothing known: one retry period
        (None, 0.999, 2.0 * (1 + RETRY_JITTER * 0.999)),
        (14000, 0.5, 2.0 * (1 + RETRY_JITTER * 0.5)),  # holder far from expiry
        (300, 0.0, 0.3 + EXPIRY_SLACK_S),  # holder expires sooner: wake just after it
        (300, 0.5, 0.3 + EXPIRY_SLACK_S * 1.5),
        (0, 0.0, EXPIRY_SLACK_S),
        (-1, 0.0, 2.0),  # no TTL at all (a foreign key): the retry period
    ],
)
def test_standby_retry_delay(pttl_ms: int | None, rand: float, delay: float) -> None:
    assert standby_retry_delay_s(T, pttl_ms, rand) == pytest.approx(delay)


def test_standby_wait_never_exceeds_the_jittered_retry_period() -> None:
    assert standby_retry_delay_s(T, 10**9, 0.999) <= T.retry_period_s * (1 + RETRY_JITTER)


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start_mono=5.0, start_wall=datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.monotonic() == 5.0
    clock.jump_wall(-3600)
    assert clock.monotonic() == 5.0
    assert clock.wall() == datetime(2029, 12, 31, 23, tzinfo=UTC)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-0.1)


# -- properties ---------------------------------------------------------------

timings_st = st.tuples(
    st.floats(0.5, 30.0), st.floats(0.1, 0.95), st.floats(0.05, 0.95)
).map(lambda t: LeaseTimings(t[0], t[0] * t[1], t[0] * t[1] * t[2]))

# (gap before the renew is sent, delay until Redis receives it, delay of the reply, wall jump after)
step_st = st.tuples(
    st.floats(0.0, 20.0), st.floats(0.0, 20.0), st.floats(0.0, 20.0), st.floats(-1e6, 1e6)
)


def simulate(timings: LeaseTimings, steps: list[tuple[float, float, float, float]], jump_wall: bool) -> list[bool]:
    """Run renews as the elector does; assert belief < Redis expiry throughout; return the belief trace."""
    clock = FakeClock()
    term = term_at(clock, timings)
    # The acquire was received no earlier than it was sent.
    redis_expiry = clock.monotonic() + timings.ttl_s
    trace: list[bool] = []
    for gap, to_redis, back, wall in steps:
        clock.advance(gap)
        now = clock.monotonic()
        believes = term.is_valid(now)
        trace.append(believes)
        if believes:
            assert now < redis_expiry
            assert term.valid_until() <= redis_expiry - (timings.ttl_s - timings.renew_deadline_s) + 1e-9
        else:
            break  # the elector steps down; it never renews an ended term
        sent = now
        received = sent + to_redis
        if received < redis_expiry:  # the key still holds our value: PEXPIRE from receipt
            redis_expiry = received + timings.ttl_s
            clock.advance(to_redis + back)
            if term.is_valid(clock.monotonic()):
                term.renewed(sent)
        else:
            clock.advance(to_redis + back)  # the renew finds the key gone: LOST
            trace.append(term.is_valid(clock.monotonic()))
            break
        if jump_wall:
            clock.jump_wall(wall)
        trace.append(term.is_valid(clock.monotonic()))
    return trace


@given(timings_st, st.lists(step_st, max_size=30))
def test_belief_always_ends_before_the_lease_expires_in_redis(
    timings: LeaseTimings, steps: list[tuple[float, float, float, float]]
) -> None:
    simulate(timings, steps, jump_wall=True)


@given(timings_st, st.lists(step_st, max_size=30))
def test_wall_clock_jumps_change_nothing(timings: LeaseTimings, steps: list[tuple[float, float, float, float]]) -> None:
    assert simulate(timings, steps, jump_wall=True) == simulate(timings, steps, jump_wall=False)


@given(timings_st, st.integers(-2, 10**8), st.floats(0, 0.999999))
def test_standby_delay_is_bounded(timings: LeaseTimings, pttl_ms: int, rand: float) -> None:
    delay = standby_retry_delay_s(timings, pttl_ms, rand)
    assert 0 < delay <= timings.retry_period_s * (1 + RETRY_JITTER)
    if pttl_ms >= 0:
        assert delay >= min(timings.retry_period_s, pttl_ms / 1000)
