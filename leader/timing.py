"""Pure lease timing, after Kubernetes client-go leader election.

Guarantees:
- Every decision takes its times from a `Clock`; nothing here sleeps, reads a
  real clock or does I/O, so tests drive it with `FakeClock.advance()`.
- A leader believes it leads only until `renew_deadline_s` after it *sent* its
  last successful renew (or acquire). Redis keeps the key until at least
  `ttl_s` after it *received* that command, which is later, so the local belief
  always ends before the lease can expire in Redis, by at least
  `ttl_s - renew_deadline_s` (the margin for clock-rate drift and scheduling).
- Only the monotonic clock is used for lease decisions; wall-clock jumps
  change nothing. On Linux the monotonic clock is CLOCK_BOOTTIME, which keeps
  counting through SIGSTOP, long GC pauses and host suspend.

Does not guarantee: anything about a process that keeps running code after its
belief ended (a job already started). Fencing tokens cover that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "Clock",
    "FakeClock",
    "InvalidTimings",
    "LeaseTerm",
    "LeaseTimings",
    "SystemClock",
    "leader_renew_delay_s",
    "standby_retry_delay_s",
]

#: A standby that knows the holder's remaining lease wakes this long after the
#: expiry it expects, so it does not race a renew that is in flight.
EXPIRY_SLACK_S = 0.005
#: Random spread added to a standby's wait, as a fraction of the retry period
#: (client-go adds up to 1.2). It spreads standbys out and keeps each one under
#: half a command per second at the default 2 s retry period.
RETRY_JITTER = 0.25


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""

    def wall(self) -> datetime:
        """The current UTC time, for display only."""


class SystemClock:
    """The real clock: CLOCK_BOOTTIME where the OS has it, else time.monotonic."""

    _clock_id = getattr(time, "CLOCK_BOOTTIME", None)

    def monotonic(self) -> float:
        if self._clock_id is not None:
            return time.clock_gettime(self._clock_id)
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock for tests: time moves only when `advance()` or `jump_wall()` is called."""

    def __init__(self, start_mono: float = 1000.0, start_wall: datetime | None = None) -> None:
        self._mono = start_mono
        self._wall = start_wall or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock, as NTP or an operator might."""
        self._wall += timedelta(seconds=seconds)


class InvalidTimings(ValueError):
    """Lease timings that cannot be safe; the message names the settings involved."""


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """Lease TTL > renew deadline > retry period > 0, all in seconds."""

    ttl_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("ttl_s", "renew_deadline_s", "retry_period_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InvalidTimings(f"{name} must be a positive number of seconds, got {value!r}")
        if self.renew_deadline_s >= self.ttl_s:
            raise InvalidTimings(
                f"lease ttl ({self.ttl_s}s) must be greater than renew deadline ({self.renew_deadline_s}s)"
            )
        if self.retry_period_s >= self.renew_deadline_s:
            raise InvalidTimings(
                f"renew deadline ({self.renew_deadline_s}s) must be greater than retry period ({self.retry_period_s}s)"
            )

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))


@dataclass(slots=True)
class LeaseTerm:
    """One tenure as leader: from a successful acquire to the step-down.

    `value` is the exact string stored under the leader key; renew and release
    compare against it inside Redis. `token` and `lease_id` together are the
    term's identity, which fenced scripts check (`fence`).
    """

    token: int
    value: str
    timings: LeaseTimings
    acquire_sent_mono: float
    lease_id: str = ""
    last_renew_sent_mono: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_renew_sent_mono = self.acquire_sent_mono

    @property
    def fence(self) -> str:
        """ARGV[1] of a fenced script for this term: `<token>:<lease_id>`."""
        return f"{self.token}:{self.lease_id}"

    def renewed(self, sent_mono: float) -> None:
        """Record a successful renew whose command left at `sent_mono`."""
        self.last_renew_sent_mono = max(self.last_renew_sent_mono, sent_mono)

    def valid_until(self) -> float:
        return self.last_renew_sent_mono + self.timings.renew_deadline_s

    def is_valid(self, now_mono: float) -> bool:
        return now_mono < self.valid_until()

    def time_left_s(self, now_mono: float) -> float:
        return max(0.0, self.valid_until() - now_mono)


def leader_renew_delay_s(term: LeaseTerm, now_mono: float, failures: int, backoff_s: float) -> float:
    """How long a leader waits before its next renew attempt.

    After a success it renews one retry period after the last renew was sent.
    After `failures` consecutive failures it retries after `backoff_s` (the
    caller's capped, jittered backoff), but never later than its own deadline,
    so the step-down check runs on time.
    """
    left = term.time_left_s(now_mono)
    if failures == 0:
        due = term.last_renew_sent_mono + term.timings.retry_period_s - now_mono
    else:
        due = backoff_s
    return max(0.0, min(due, left))


def standby_retry_delay_s(timings: LeaseTimings, holder_pttl_ms: int | None, rand: float) -> float:
    """How long a standby waits before its next acquire attempt.

    `rand` is uniform in [0, 1). The wait is one retry period stretched by up
    to RETRY_JITTER, so standbys spread out and each costs at most one command
    per retry period. When the holder's lease would expire sooner (it is known
    from the failed attempt's PTTL), the standby wakes just after that expiry:
    a crashed leader is replaced within the TTL plus a few milliseconds, not
    the TTL plus a retry period.
    """
    wait = timings.retry_period_s * (1.0 + RETRY_JITTER * rand)
    if holder_pttl_ms is not None and holder_pttl_ms >= 0:
        wait = min(wait, holder_pttl_ms / 1000.0 + EXPIRY_SLACK_S * (1.0 + rand))
    return wait
