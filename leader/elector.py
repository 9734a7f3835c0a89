"""The anyio elector: contend -> lead -> renew -> step down -> contend again.

Guarantees:
- `StoppedLeading` is emitted exactly once per term, and before the lease is
  given back, so an owner stops acting before anyone else can start.
- Events are delivered synchronously, in order, on the event loop: a listener
  that pauses its work inside the callback has paused it "at once".
- `is_leader()` answers from the monotonic clock alone. It turns False at the
  renew deadline even if the elector's task has not run since (a blocked loop,
  SIGSTOP): callers check it right before they act.
- Store errors never escape `run()`; it backs off (capped, jittered) and keeps
  contending. After any step-down it goes back to standing by.
- Each acquire attempt carries a fresh random lease id. An attempt whose reply
  was lost (a timeout, a dropped connection, a Redis that was paused and then
  ran the queued command) may still have taken the lease: a re-send of it is
  recognised by the script itself, and when a later attempt finds the key
  holding the lease id of one of this elector's unanswered attempts, it adopts
  it with a renew sent now, instead of leaving the lease leaderless for a TTL.
- A renew that lands but too few replicas acknowledge (`StoreNotReplicated`)
  ends the term at once (reason `unreplicated`), not at the renew deadline,
  and the lease is given back.

Loop stalls: renewals run on this event loop, over the store's own connection.
A coroutine that blocks the loop past the renew deadline starves them; the
lease then expires in Redis and a standby takes over. This replica notices on
waking (its monotonic deadline has passed), refuses to act (`is_leader()` is
False before any other task runs) and steps down with reason `stalled`. The
fencing token refuses whatever the blocked code writes afterwards. Plain
functions run in worker threads, so only a misbehaving coroutine can stall.

Does not guarantee: that code already running when leadership ends stops
writing; nor one leader at a time across a Redis that loses its data (a
restart without persistence, a failover without WAIT): a standby may acquire
the vanished lease while the old leader still believes in its term. Fencing
tokens cover both: they keep increasing, so the old leader's writes are
refused. (A leader whose listener connection breaks renews at once, which
narrows that window to milliseconds after a restart.)
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from redis.backoff import EqualJitterBackoff

from .fence import new_lease_id
from .store import AcquireResult, Identity, LeaseHolder, LeaseStore, StoreError, StoreNotReplicated, StoreRejected
from .timing import Clock, LeaseTerm, LeaseTimings, SystemClock, leader_renew_delay_s, standby_retry_delay_s

__all__ = [
    "AcquireFailed",
    "ElectionEvent",
    "Elector",
    "ElectorStatus",
    "HandoffRequested",
    "LeaderObserved",
    "RenewFailed",
    "RenewedLate",
    "StartedLeading",
    "StepDownReason",
    "StoppedLeading",
]

log = logging.getLogger("lightsched.leader")


class StepDownReason(enum.StrEnum):
    RELEASED = "released"  # we gave the lease back (handoff, shutdown)
    LOST = "lost"  # a renew found the key no longer ours (expired, taken, Redis emptied)
    DEADLINE = "renew_deadline_passed"  # renewals failed (or landed too late) until the deadline
    UNREPLICATED = "unreplicated"  # a renew landed but too few replicas acknowledged it (WAIT)
    STALLED = "stalled"  # the loop or process was paused past the deadline
    CANCELLED = "cancelled"  # the elector was cancelled while leading, lease not released


@dataclass(frozen=True, slots=True)
class StartedLeading:
    term: LeaseTerm


@dataclass(frozen=True, slots=True)
class StoppedLeading:
    term: LeaseTerm
    reason: StepDownReason


@dataclass(frozen=True, slots=True)
class LeaderObserved:
    """The leader key changed hands as seen from here; `holder` None means vacant."""

    holder: LeaseHolder | None


@dataclass(frozen=True, slots=True)
class HandoffRequested:
    """An operator asked this leader to step down; the owner drains, then calls `release()`."""

    term: LeaseTerm


@dataclass(frozen=True, slots=True)
class RenewedLate:
    term: LeaseTerm
    late_s: float  # how far past its due time the renew completed
    latency_s: float


@dataclass(frozen=True, slots=True)
class RenewFailed:
    """A leader's renew failed (an error or a timeout); it retries until its deadline."""

    term: LeaseTerm
    error: str
    latency_s: float


@dataclass(frozen=True, slots=True)
class AcquireFailed:
    """A standby's acquire attempt failed (an error or a timeout); it retries."""

    error: str
    latency_s: float


ElectionEvent = (
    StartedLeading | StoppedLeading | LeaderObserved | HandoffRequested | RenewedLate | RenewFailed | AcquireFailed
)


@dataclass(slots=True)
class ElectorStatus:
    replica_id: str
    is_leader: bool
    fencing_token: int | None
    lease_left_s: float | None
    leader: LeaseHolder | None
    running: bool
    last_loop_mono: float | None
    transitions: int = 0


@dataclass(slots=True)
class _Counters:
    transitions: int = 0
    renew_failures: int = 0
    standby_failures: int = 0
    last_foreign_raw: str | None = field(default=None)


class Elector:
    """Contends for one lease in `store`; tells its listeners of each transition."""

    def __init__(
        self,
        store: LeaseStore,
        identity: Identity,
        timings: LeaseTimings,
        *,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
        cooloff_s: float | None = None,
    ) -> None:
        self._store = store
        self.identity = identity
        self.timings = timings
        self._clock = clock or SystemClock()
        self._rng = rng
        self._cooloff_s = timings.retry_period_s if cooloff_s is None else cooloff_s
        self._listeners: list[Callable[[ElectionEvent], None]] = []
        self._term: LeaseTerm | None = None
        self._leader: LeaseHolder | None = None
        self._wake = anyio.Event()
        self._cooloff_until = 0.0
        # Set when the listener's connection broke: renew at once, not on schedule.
        self._check_now = False
        self._counters = _Counters()
        self._running = False
        self._last_loop_mono: float | None = None
        self._backoff = EqualJitterBackoff(cap=timings.retry_period_s, base=0.05)
        # Lease ids of acquire attempts that got no answer: they may have taken
        # the lease in Redis all the same.
        self._unanswered: deque[str] = deque(maxlen=8)
        # Set when a renew succeeded in Redis but came back after the deadline.
        self._renew_landed_late = False
        self._withdrawn = False

    def __repr__(self) -> str:
        return f"Elector(replica_id={self.identity.replica_id!r}, leading={self.is_leader()})"

    # -- owner API ---------------------------------------------------------

    def subscribe(self, listener: Callable[[ElectionEvent], None]) -> None:
        self._listeners.append(listener)

    @property
    def term(self) -> LeaseTerm | None:
        return self._term

    def is_leader(self) -> bool:
        term = self._term
        return term is not None and term.is_valid(self._clock.monotonic())

    def current_term(self) -> LeaseTerm | None:
        """The term if it is still valid right now, else None."""
        term = self._term
        return term if term is not None and term.is_valid(self._clock.monotonic()) else None

    def status(self) -> ElectorStatus:
        term = self.current_term()
        now = self._clock.monotonic()
        return ElectorStatus(
            replica_id=self.identity.replica_id,
            is_leader=term is not None,
            fencing_token=term.token if term else None,
            lease_left_s=term.time_left_s(now) if term else None,
            leader=self._leader,
            running=self._running,
            last_loop_mono=self._last_loop_mono,
            transitions=self._counters.transitions,
        )

    def withdraw(self) -> None:
        """Stop contending: from now on this elector never acquires the lease again.

        A term in progress goes on (renewed) until it is released or lost. A
        stopping replica calls this first, so a lease lost while it drains is
        not taken back only to be released a moment later.
        """
        self._withdrawn = True

    async def release(self) -> bool:
        """Step down voluntarily and hand the lease to a standby at once.

        Listeners hear `StoppedLeading(RELEASED)` before the lease is deleted.
        This replica then stays out of the contest for one retry period so a
        standby wins. Returns whether the lease was still ours to delete.
        """
        term = self._term
        if term is None:
            return False
        self._end_term(term, StepDownReason.RELEASED)
        self._cooloff_until = self._clock.monotonic() + self._cooloff_s
        released = False
        try:
            with anyio.fail_after(self.timings.retry_period_s):
                released = await self._store.release(term.value)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "could not release the lease; it expires on its own",
                extra={"event": "lease_release_failed", "error": str(exc), "fencing_token": term.token},
            )
        self._wake.set()
        return released

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Contend and lead until cancelled. Cancelling does not release the lease."""
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen, name=f"lease-listener:{self.identity.replica_id}")
                task_status.started()
                while True:
                    self._last_loop_mono = self._clock.monotonic()
                    if self._term is None:
                        await self._standby_step()
                    else:
                        await self._leader_step(self._term)
        finally:
            self._running = False
            if self._term is not None:
                self._end_term(self._term, StepDownReason.CANCELLED)

    # -- internals ---------------------------------------------------------

    def _emit(self, event: ElectionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not take the elector down
                log.exception("election listener failed", extra={"event": "listener_failed"})

    def _end_term(self, term: LeaseTerm, reason: StepDownReason) -> None:
        if self._term is not term:
            return  # already ended: exactly one StoppedLeading per term
        self._term = None
        self._check_now = False
        self._renew_landed_late = False
        self._counters.transitions += 1
        log.info(
            "stopped leading",
            extra={"event": "stopped_leading", "reason": reason.value, "fencing_token": term.token},
        )
        self._emit(StoppedLeading(term, reason))

    def _observe(self, holder: LeaseHolder | None) -> None:
        old = self._leader
        if (old.raw if old else None) == (holder.raw if holder else None):
            return
        self._leader = holder
        if holder is not None and holder.foreign and holder.raw != self._counters.last_foreign_raw:
            self._counters.last_foreign_raw = holder.raw
            log.warning(
                "leader key holds a value that is not a lightsched lease; treating it as held",
                extra={"event": "foreign_holder", "value_len": len(holder.raw)},
            )
        self._emit(LeaderObserved(holder))

    def _on_released(self) -> None:
        self._wake.set()

    def _on_handoff(self, fence: str) -> None:
        """`fence` names the term to hand off: `<token>:<lease_id>`, or a bare token (older CLIs)."""
        term = self.current_term()
        if term is not None and fence in (term.fence, str(term.token)):
            log.info("handoff requested", extra={"event": "handoff_requested", "fencing_token": term.token})
            self._emit(HandoffRequested(term))

    def _on_listen_error(self, exc: BaseException) -> None:
        log.debug("lease listener reconnecting", extra={"event": "listener_error", "error": str(exc)})
        if self._term is not None:
            # Redis may have restarted and lost the lease: a standby may hold it
            # already. Find out now rather than at the next scheduled renew.
            self._check_now = True
            self._wake.set()

    async def _listen(self) -> None:
        await self._store.listen(self._on_released, self._on_handoff, self._on_listen_error)

    async def _sleep_or_wake(self, delay_s: float) -> None:
        """Sleep `delay_s`, or less if woken. The caller made `self._wake` fresh beforehand."""
        if delay_s > 0:
            with anyio.move_on_after(delay_s):
                await self._wake.wait()

    async def _standby_step(self) -> None:
        if self._withdrawn:
            await anyio.sleep_forever()
        self._wake = anyio.Event()
        now = self._clock.monotonic()
        if now < self._cooloff_until:
            await anyio.sleep(self._cooloff_until - now)
            return
        acquired_at = self._clock.wall().isoformat(timespec="milliseconds")
        lease_id = new_lease_id()
        sent = self._clock.monotonic()
        try:
            with anyio.fail_after(self.timings.retry_period_s):
                res: AcquireResult = await self._store.try_acquire(
                    self.identity, self.timings.ttl_ms, acquired_at, lease_id
                )
        except (StoreError, TimeoutError) as exc:
            self._unanswered.append(lease_id)
            self._counters.standby_failures += 1
            failures = self._counters.standby_failures
            rejected = isinstance(exc, StoreRejected)
            log.log(
                logging.ERROR if rejected else logging.WARNING if failures == 1 else logging.DEBUG,
                "the lease store refused the acquire; retrying" if rejected else "cannot reach the lease store; retrying",
                extra={"event": "store_unavailable", "error": str(exc) or type(exc).__name__, "failures": failures},
            )
            self._emit(AcquireFailed(str(exc) or type(exc).__name__, self._clock.monotonic() - sent))
            await self._sleep_or_wake(self._backoff.compute(failures))
            return
        self._counters.standby_failures = 0
        if res.acquired:
            assert res.value is not None and res.token is not None
            self._start_term(LeaseTerm(res.token, res.value, self.timings, sent, res.lease_id or lease_id))
            return
        if res.holder is not None and self._is_unanswered_attempt(res.holder) and await self._adopt(res.holder):
            return
        self._observe(res.holder)
        pttl = res.holder_pttl_ms if res.holder is not None and not res.holder.foreign else None
        await self._sleep_or_wake(standby_retry_delay_s(self.timings, pttl, self._rng()))

    def _start_term(self, term: LeaseTerm) -> None:
        self._term = term
        self._unanswered.clear()
        self._counters.transitions += 1
        self._observe(LeaseHolder.parse(term.value))
        log.info("started leading", extra={"event": "started_leading", "fencing_token": term.token})
        self._emit(StartedLeading(term))

    def _is_unanswered_attempt(self, holder: LeaseHolder) -> bool:
        me = self.identity
        return (
            not holder.foreign
            and (holder.replica_id, holder.host, holder.pid) == (me.replica_id, me.host, me.pid)
            and holder.lease_id is not None
            and holder.lease_id in self._unanswered
        )

    async def _adopt(self, holder: LeaseHolder) -> bool:
        """Take over a lease one of our unanswered acquires created, by renewing it.

        Safe: the key still holding that exact value means nobody acquired
        since, so its token is the newest; and the term is measured from this
        renew's send time, as after any renew.
        """
        assert holder.fencing_token is not None and holder.lease_id is not None
        sent = self._clock.monotonic()
        try:
            with anyio.fail_after(self.timings.retry_period_s):
                ok = await self._store.renew(holder.raw, self.timings.ttl_ms)
        except StoreNotReplicated:
            await self._give_back(holder.raw)
            return False
        except (StoreError, TimeoutError):
            return False
        if not ok:
            return False
        log.info("adopted a lease whose acquire reply was lost", extra={"event": "lease_adopted"})
        self._start_term(LeaseTerm(holder.fencing_token, holder.raw, self.timings, sent, holder.lease_id))
        return True

    async def _give_back(self, value: str) -> None:
        """Best effort: delete the lease if it still holds `value`, rather than wait out its TTL."""
        with anyio.move_on_after(self.timings.retry_period_s):
            try:
                await self._store.release(value)
            except StoreError:
                pass

    async def _leader_step(self, term: LeaseTerm) -> None:
        self._wake = anyio.Event()
        now = self._clock.monotonic()
        failures = self._counters.renew_failures
        if not term.is_valid(now):
            late = failures or self._renew_landed_late
            reason = StepDownReason.DEADLINE if late else StepDownReason.STALLED
            self._counters.renew_failures = 0
            self._end_term(term, reason)
            # Best effort: if the key is somehow still ours, free it now rather than after the TTL.
            await self._give_back(term.value)
            return
        delay = leader_renew_delay_s(term, now, failures, self._backoff.compute(failures) if failures else 0.0)
        if self._check_now and not failures:
            self._check_now, delay = False, 0.0
        if delay > 0:
            await self._sleep_or_wake(delay)
            return
        due = term.last_renew_sent_mono + self.timings.retry_period_s
        sent = self._clock.monotonic()
        try:
            with anyio.fail_after(max(0.001, term.time_left_s(sent))):
                ok = await self._store.renew(term.value, self.timings.ttl_ms)
        except StoreNotReplicated as exc:
            # Held on the primary only: a failover may hand it to someone else. Stop now.
            self._counters.renew_failures = 0
            log.warning(
                "lease renew not acknowledged by enough replicas; stepping down",
                extra={"event": "renew_unreplicated", "error": str(exc), "fencing_token": term.token},
            )
            if self._term is term:
                self._end_term(term, StepDownReason.UNREPLICATED)
                await self._give_back(term.value)
            return
        except (StoreError, TimeoutError) as exc:
            self._counters.renew_failures += 1
            error = str(exc) or type(exc).__name__
            log.warning(
                "lease renew failed",
                extra={"event": "renew_failed", "error": error, "fencing_token": term.token, "failures": failures + 1},
            )
            self._emit(RenewFailed(term, error, self._clock.monotonic() - sent))
            return
        done = self._clock.monotonic()
        self._counters.renew_failures = 0
        if self._term is not term:
            return  # released while the renew was in flight
        if not ok:
            self._end_term(term, StepDownReason.LOST)
            return
        if not term.is_valid(done):
            self._renew_landed_late = True
            return  # the renew landed after our deadline; the next step steps down (reason: deadline)
        term.renewed(sent)
        late_s = max(0.0, done - due)
        if late_s > self.timings.retry_period_s / 2:
            log.warning(
                "lease renewed late",
                extra={"event": "renewed_late", "late_s": round(late_s, 3), "fencing_token": term.token},
            )
            self._emit(RenewedLate(term, late_s, done - sent))
