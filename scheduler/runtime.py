"""The leader-gated runtime: one replica = elector + APScheduler + slot claims.

Guarantees:
- Every replica builds its AsyncIOScheduler; only a leader starts it, and a
  replica that stops leading pauses it inside the elector's callback (before
  the lease can be taken by anyone else) and cancels its in-flight runs.
- Every run, right before it starts, checks the local lease (monotonic clock;
  False after a freeze) and then claims its slot with a fenced Lua script;
  a stale leader's claim fails and its run does not start. Slots are claimed
  in increasing time order per job, so no slot runs twice.
- A new leader continues each job from its last claimed slot (not from now):
  slots older than the misfire grace are counted as missed, the rest run,
  coalesced into one by default.
- At most one run of a job at a time on a replica: a slot that falls due while
  the job still runs waits behind it (a cancelled thread-run holds its place
  until the thread returns), then runs late, coalesces or counts as missed.
- Graceful stop and handoff: stop starting runs, drain in-flight runs for up to
  `drain_timeout` while still renewing, then release the lease at once.

Does not guarantee: that code already running stops writing when leadership
ends (plain functions in threads cannot be cancelled): fenced writes refuse it.
The APScheduler 3 seam used is `BaseExecutor._do_submit_job(job, run_times)`,
tested against the pinned 3.11 minor.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import anyio
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from redis.exceptions import RedisError

from leader import (
    ElectionEvent,
    Elector,
    HandoffRequested,
    Identity,
    LeaderObserved,
    LeaseTerm,
    LoopLagMonitor,
    RedisLeaseStore,
    RenewedLate,
    RenewFailed,
    StartedLeading,
    StoppedLeading,
    SystemClock,
)
from leader.timing import Clock

from .connection import make_client
from .context import JobContext, JobLogger
from .keys import Keyspace
from .registry import JobRegistry, JobSpec
from .settings import Settings
from .slots import FoldSafeTrigger, SlotStore, from_ms, plan_resume, to_ms
from .status import ClusterStatus, ReplicaStatus, read_cluster_status

__all__ = ["Replica", "RunOutcome"]

log = logging.getLogger("lightsched.scheduler")

#: Longest error text kept in a run record.
ERROR_TEXT_MAX = 500


class RunOutcome(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    FENCED = "fenced"


def schedule_trigger(trigger: BaseTrigger) -> BaseTrigger:
    """The trigger the runtime schedules with: cron wall-clock slots fire once across DST."""
    if isinstance(trigger, CronTrigger):
        return FoldSafeTrigger(trigger)
    return trigger


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"


def _never_called() -> None:  # APScheduler needs a func; the gated executor runs the spec instead
    raise AssertionError("jobs run through the gated executor")


class _GatedExecutor(BaseExecutor):
    """Hands due slots to the replica instead of running `job.func`.

    `_do_submit_job` is APScheduler 3's executor extension point, the only
    place that sees the scheduled fire times. `submit_job` is overridden so a
    slot that falls due while the job's previous submission still runs is
    queued behind it (and then runs late, coalesces or counts as missed by the
    usual rules) instead of being dropped by APScheduler's max-instances check.
    At most one task per job runs at a time.
    """

    #: Slots queued behind a running submission, per job, before the oldest are dropped (and counted missed).
    MAX_PENDING = 1000

    def __init__(
        self,
        submit: Callable[[str, list[datetime]], Awaitable[None]],
        on_dropped: Callable[[str, list[datetime]], None],
    ) -> None:
        super().__init__()
        self._submit = submit
        self._on_dropped = on_dropped
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, list[datetime]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._loop = scheduler._eventloop

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        running = self.tasks.get(job.id)
        if running is not None and not running.done():
            pending = self._pending.setdefault(job.id, [])
            pending.extend(run_times)
            if len(pending) > self.MAX_PENDING:
                dropped = pending[: len(pending) - self.MAX_PENDING]
                del pending[: len(dropped)]
                self._on_dropped(job.id, dropped)
            return
        self._do_submit_job(job, run_times)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._drain(job.id, list(run_times)), name=f"lightsched-run:{job.id}")
        self.tasks[job.id] = task
        # A done-callback, not a `finally` in `_drain`: a task cancelled before its first step
        # never runs its coroutine, and its entry must go all the same.
        task.add_done_callback(functools.partial(self._done, job.id))

    async def _drain(self, job_id: str, run_times: list[datetime]) -> None:
        while run_times:
            await self._submit(job_id, run_times)
            run_times = self._pending.pop(job_id, [])

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
            self._pending.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._logger.error("running job %s failed in the runtime", job_id, exc_info=(type(exc), exc, exc.__traceback__))

    def cancel_all(self) -> int:
        self._pending.clear()
        for task in self.tasks.values():
            task.cancel()
        return len(self.tasks)

    async def wait_idle(self) -> None:
        while live := [t for t in self.tasks.values() if not t.done()]:
            await asyncio.wait(live)


class _TimedStore:
    """The lease store, with renew latency reported to telemetry."""

    def __init__(self, inner: RedisLeaseStore, on_renew: Callable[[float], None], clock: Clock) -> None:
        self._inner = inner
        self._on_renew = on_renew
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def renew(self, value: str, ttl_ms: int) -> bool:
        start = self._clock.monotonic()
        ok = await self._inner.renew(value, ttl_ms)
        if ok:
            self._on_renew(self._clock.monotonic() - start)
        return ok


def load_telemetry(replica_id: str) -> Any:
    from observability.telemetry import Telemetry

    return Telemetry(replica_id)


class Replica:
    """One replica of the fleet. `await replica.run()` until `request_stop()` or cancellation."""

    def __init__(
        self,
        settings: Settings,
        registry: JobRegistry,
        *,
        telemetry: Any | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)
        self.registry = registry.configured(settings.job_schedules, settings.disabled_jobs)
        self.configs = {spec.id: spec.load_config() for spec in self.registry if spec.enabled}
        self.clock = clock or SystemClock()
        self.telemetry = telemetry if telemetry is not None else load_telemetry(settings.replica_id)
        self.identity = Identity(settings.replica_id, socket.gethostname(), os.getpid())
        self.lag = LoopLagMonitor(clock=self.clock)
        self.redis: Any = None
        self.elector: Elector | None = None
        self.slots: SlotStore | None = None
        self._lease_client: Any = None
        self._scheduler: AsyncIOScheduler | None = None
        self._executor = _GatedExecutor(self._run_due, self._on_dropped)
        self._triggers: dict[str, BaseTrigger] = {s.id: schedule_trigger(s.trigger) for s in self.registry}
        self._control_send: Any = None
        self._control_recv: Any = None
        self._stop_event = anyio.Event()
        self._stop_now = False
        self._drain_scope: anyio.CancelScope | None = None
        self._draining = False
        self._running = False
        self._stopping = False
        self._last_records: dict[str, dict[str, Any]] = {}
        self._max_lag_since_run = 0.0
        self.http_port: int | None = None
        self.telemetry.declare_jobs([s.id for s in self.registry if s.enabled])

    def __repr__(self) -> str:
        return f"Replica(replica_id={self.settings.replica_id!r}, leading={self.is_leader})"

    # -- public --------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader()

    @property
    def fencing_token(self) -> int | None:
        term = self.elector.current_term() if self.elector else None
        return term.token if term else None

    def request_stop(self, *, now: bool = False) -> None:
        """Begin a graceful stop (drain, release); `now=True` skips the drain."""
        if now or self._stop_event.is_set():
            self._stop_now = True
            self._executor.cancel_all()
            if self._drain_scope is not None:
                self._drain_scope.cancel()
        self._stop_event.set()

    async def request_handoff(self) -> bool:
        """Drain and release if leading; another replica takes over at once."""
        term = self.elector.current_term() if self.elector else None
        if term is None:
            return False
        await self._handoff(term)
        return True

    def liveness(self) -> tuple[bool, str]:
        if not self._running:
            return False, "not running"
        self.telemetry.set_loop_lag(self.lag.lag_s)
        tick = self.lag.last_tick_mono
        if tick is not None and self.clock.monotonic() - tick > max(10.0, 20 * self.lag.interval_s):
            return False, "event loop stalled"
        if self.settings.enabled and self.elector is not None and not self.elector.status().running:
            return False, "elector stopped"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self._running:
            return False, "starting"
        if self._stopping:
            return False, "stopping"
        return self.liveness()

    async def cluster_status(self) -> ClusterStatus:
        return await read_cluster_status(self.redis, self.keys, [s.id for s in self.registry])

    async def status(self) -> ReplicaStatus:
        """This replica's view plus the deployment's state in Redis (for the health endpoint)."""
        cluster: ClusterStatus | None = None
        error: str | None = None
        try:
            with anyio.fail_after(self.settings.redis_socket_timeout):
                cluster = await self.cluster_status()
        except (RedisError, OSError, TimeoutError) as exc:
            from .errors import describe_redis_error

            error = describe_redis_error(exc, self.settings)
        term = self.elector.current_term() if self.elector else None
        return ReplicaStatus.build(
            replica_id=self.settings.replica_id,
            enabled=self.settings.enabled,
            scheduler_running=bool(
                self._scheduler is not None and self._scheduler.running and self._scheduler.state == STATE_RUNNING and term
            ),
            term=term,
            now_mono=self.clock.monotonic(),
            specs=list(self.registry),
            cluster=cluster,
            local_records=self._last_records,
            draining=self._draining,
            redis_error=error,
        )

    async def run(
        self, *, handle_signals: bool = False, task_status: anyio.abc.TaskStatus[Replica] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.redis = make_client(s, "jobs")
        self._lease_client = make_client(s, "lease")
        store = RedisLeaseStore(self._lease_client, self.keys, wait_replicas=s.wait_replicas, wait_timeout_ms=s.wait_timeout_ms)
        self.elector = Elector(_TimedStore(store, self.telemetry.renew_succeeded, self.clock), self.identity, s.timings, clock=self.clock)  # type: ignore[arg-type]
        self.elector.subscribe(self._on_election_event)
        self.slots = SlotStore(self.redis, self.keys, s.run_history, timeout_s=2 * s.redis_socket_timeout)
        self._control_send, self._control_recv = anyio.create_memory_object_stream[tuple[str, LeaseTerm]](16)
        self._scheduler = AsyncIOScheduler(
            event_loop=loop,
            executors={"default": self._executor},
            job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        for spec in self.registry:
            if spec.enabled:
                self._scheduler.add_job(
                    _never_called, trigger=self._triggers[spec.id], id=spec.id, name=spec.id, next_run_time=None
                )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.lag.run, name="loop-lag")
                if s.enabled:
                    tg.start_soon(self.elector.run, name="elector")
                else:
                    log.warning("scheduler disabled by LIGHTSCHED_ENABLED=false; not contending", extra={"event": "disabled"})
                tg.start_soon(self._control, name="leadership-control")
                if handle_signals:
                    tg.start_soon(self._signals, name="signals")
                if s.http_port:
                    from .http import start_http

                    self.http_port = await tg.start(start_http, self)
                self._running = True
                task_status.started(self)
                await self._stop_event.wait()
                self._stopping = True
                with anyio.CancelScope(shield=True):
                    await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            self._running = False
            self._control_send.close()
            self._control_recv.close()
            self._executor.cancel_all()
            if self._scheduler.running:
                self._scheduler.shutdown(wait=False)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.redis.aclose()
                await self._lease_client.aclose()

    # -- leadership ----------------------------------------------------------

    def _on_election_event(self, event: ElectionEvent) -> None:
        t = self.telemetry
        match event:
            case StartedLeading(term=term):
                t.leadership_acquired(term.token)
                self._control_send.send_nowait(("lead", term))
            case StoppedLeading(term=term, reason=reason):
                if self._scheduler is not None and self._scheduler.running:
                    self._scheduler.pause()
                cancelled = self._executor.cancel_all()
                t.leadership_lost(term.token, reason.value)
                if cancelled:
                    log.warning(
                        "cancelled in-flight runs on losing leadership",
                        extra={"event": "runs_cancelled", "count": cancelled, "fencing_token": term.token},
                    )
            case HandoffRequested(term=term):
                self._control_send.send_nowait(("handoff", term))
            case LeaderObserved(holder=holder):
                t.leader_observed(holder.replica_id if holder is not None else None)
            case RenewedLate(term=term, late_s=late_s):
                t.renew_late(term.token, late_s)
            case RenewFailed(error=error):
                t.renew_failed(error)

    def _on_dropped(self, job_id: str, slots: list[datetime]) -> None:
        self.telemetry.slots_missed(job_id, len(slots))
        log.warning(
            "slots dropped: too many queued behind a run that is still going",
            extra={"event": "slot_missed", "job_id": job_id, "cause": "still_running", "count": len(slots)},
        )

    async def _control(self) -> None:
        async for command, term in self._control_recv:
            if command == "lead":
                await self._take_over(term)
            elif command == "handoff" and self.elector is not None and self.elector.current_term() is term:
                await self._handoff(term)

    async def _take_over(self, term: LeaseTerm) -> None:
        """Continue every job's schedule from its last claimed slot, then start the scheduler."""
        assert self._scheduler is not None and self.slots is not None and self.elector is not None
        if not self._scheduler.running:
            self._scheduler.start(paused=True)
        ids = [s.id for s in self.registry if s.enabled]
        while True:
            if self.elector.current_term() is not term or self._draining:
                return
            try:
                with anyio.fail_after(self.settings.redis_socket_timeout):
                    last = await self.slots.last_slots(ids)
                break
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cannot read slots; retrying", extra={"event": "resume_failed", "error": str(exc)})
                await anyio.sleep(self.settings.retry_period / 2)
        now = self.clock.wall()
        for job_id in ids:
            spec = self.registry.get(job_id)
            grace = spec.options.misfire_grace_time or self.settings.misfire_grace_time
            prev = from_ms(last[job_id]) if last[job_id] is not None else None
            plan = plan_resume(self._triggers[job_id], prev, now, grace)
            if plan.missed:
                self.telemetry.slots_missed(job_id, plan.missed)
                log.warning(
                    "slots missed beyond the misfire grace",
                    extra={"event": "slot_missed", "job_id": job_id, "count": plan.missed, "cause": "no_leader"},
                )
            job = self._scheduler.get_job(job_id)
            if job is None:
                continue
            if plan.next_run_time is None:
                job.pause()
            else:
                job.modify(next_run_time=plan.next_run_time)
            try:
                await self.slots.set_next(job_id, term.token, plan.next_run_time)
            except RedisError as exc:
                log.debug("could not publish next run time", extra={"event": "set_next_failed", "error": str(exc)})
        if self.elector.current_term() is term and not self._draining:
            self._scheduler.resume()
            log.info(
                "scheduler running",
                extra={"event": "scheduler_resumed", "fencing_token": term.token, "jobs": len(ids)},
            )

    async def _drain(self) -> None:
        """Stop starting runs and wait for in-flight ones, up to drain_timeout."""
        self._draining = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
        if self._executor.tasks and not self._stop_now:
            log.info("draining in-flight runs", extra={"event": "draining", "count": len(self._executor.tasks)})
            with anyio.move_on_after(self.settings.drain_timeout) as scope:
                self._drain_scope = scope
                await self._executor.wait_idle()
            self._drain_scope = None
        if self._executor.cancel_all():
            with anyio.move_on_after(5):
                await self._executor.wait_idle()

    async def _handoff(self, term: LeaseTerm) -> None:
        assert self.elector is not None
        await self._drain()
        await self.elector.release()
        self._draining = False

    async def _shutdown(self) -> None:
        await self._drain()
        if self.elector is not None and self.elector.term is not None:
            await self.elector.release()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                first = not self._stop_event.is_set()
                log.info(
                    "signal received: %s" % ("stopping gracefully" if first else "stopping now"),
                    extra={"event": "signal", "signal": signal.Signals(signum).name},
                )
                self.request_stop(now=not first)

    # -- runs ----------------------------------------------------------------

    async def _run_due(self, job_id: str, run_times: list[datetime]) -> None:
        spec = self.registry.get(job_id)
        now = self.clock.wall()
        grace = spec.options.misfire_grace_time or self.settings.misfire_grace_time
        due = [rt for rt in run_times if (now - rt).total_seconds() <= grace]
        if len(due) < len(run_times):
            self.telemetry.slots_missed(job_id, len(run_times) - len(due))
            log.warning(
                "slots missed beyond the misfire grace",
                extra={"event": "slot_missed", "job_id": job_id, "count": len(run_times) - len(due), "cause": "late"},
            )
        if spec.options.coalesce and len(due) > 1:
            self.telemetry.slots_coalesced(job_id, len(due) - 1)
            due = due[-1:]
        for slot in due:
            if not await self._run_slot(spec, slot):
                return

    async def _run_slot(self, spec: JobSpec, slot: datetime) -> bool:
        """Claim and run one slot. Returns False when this replica must stop running slots."""
        assert self.elector is not None and self.slots is not None
        term = self.elector.current_term()
        if term is None or self._draining:
            log.info(
                "slot not started: not leading",
                extra={"event": "slot_not_started", "job_id": spec.id, "slot": slot.isoformat()},
            )
            return False
        trigger = self._triggers[spec.id]
        next_slot = trigger.get_next_fire_time(slot, slot)
        try:
            # No local deadline here: the script checks the fence when it runs, so a slow claim
            # is safe, and giving up on it would lose a slot it may still win. The batch itself
            # is bounded (SlotStore timeout).
            claim = await self.slots.claim(spec.id, slot, term.token, self.settings.replica_id, next_slot)
        except RedisError as exc:
            self.telemetry.slots_missed(spec.id, 1)
            log.warning(
                "slot missed: could not claim it",
                extra={"event": "slot_missed", "job_id": spec.id, "slot": slot.isoformat(), "cause": "redis",
                       "error": str(exc) or type(exc).__name__},
            )
            return True
        if not claim.ok:
            log.warning(
                "slot claim refused",
                extra={"event": "slot_claim_refused", "job_id": spec.id, "slot": slot.isoformat(),
                       "reason": claim.reason, "fencing_token": term.token},
            )
            return claim.reason == "claimed"
        if spec.options.jitter:
            await anyio.sleep(random.uniform(0, spec.options.jitter))
        record = await self.execute(spec, slot, term.token, next_slot=next_slot, term=term)
        try:
            if not await self.slots.record(spec.id, term.token, record):
                log.warning("run record fenced out", extra={"event": "record_fenced", "job_id": spec.id})
        except RedisError as exc:
            log.warning("could not store the run record", extra={"event": "record_failed", "error": str(exc)})
        return True

    def _leading(self, term: LeaseTerm | None) -> bool:
        return term is None or (self.elector is not None and self.elector.current_term() is term)

    async def execute(
        self,
        spec: JobSpec,
        slot: datetime,
        token: int,
        *,
        next_slot: datetime | None = None,
        term: LeaseTerm | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run `spec` for `slot` with retries and timeout; return the run record.

        With `term`, every attempt first checks that the term is still valid.
        Manual runs (`lightsched run-job`) pass no term.
        """
        started = self.clock.wall()
        lateness_s = max(0.0, (started - slot).total_seconds())
        lag = max(self.lag.max_lag_s, 0.0)
        self.lag.reset_max()
        opts = spec.options
        outcome, error, attempt = RunOutcome.FENCED, None, 0
        while True:
            attempt += 1
            if not self._leading(term):
                outcome, error = RunOutcome.FENCED, "no longer leading"
                break
            ctx = JobContext(
                job_id=spec.id,
                replica_id=self.settings.replica_id,
                fencing_token=token,
                scheduled_time=slot,
                redis=self.redis,
                keys=self.keys,
                log=JobLogger(
                    logging.getLogger(f"lightsched.job.{spec.id}"),
                    {"job_id": spec.id, "fencing_token": token, "slot": slot.isoformat()},
                ),
                config=self.configs.get(spec.id),
                params=params or {},
                attempt=attempt,
                manual=term is None,
                loop_lag_s=lag,
            )
            outcome, error = await self._attempt(spec, ctx, lateness_s)
            if outcome in (RunOutcome.SUCCESS, RunOutcome.CANCELLED, RunOutcome.FENCED) or attempt > opts.retries:
                break
            delay = min(opts.retry_backoff * 2 ** (attempt - 1), opts.retry_backoff_max)
            if next_slot is not None and (self.clock.wall() - next_slot).total_seconds() + delay >= 0:
                log.info("no retry: it would run into the next slot", extra={"event": "retry_skipped", "job_id": spec.id})
                break
            log.info("retrying", extra={"event": "retry", "job_id": spec.id, "attempt": attempt + 1, "delay_s": delay})
            await anyio.sleep(delay)
        finished = self.clock.wall()
        record = {
            "job_id": spec.id,
            "scheduled_time": slot.astimezone(UTC).isoformat(),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "status": outcome.value,
            "error": _cut(error) if error else None,
            "replica_id": self.settings.replica_id,
            "fencing_token": token,
            "attempts": attempt,
            "duration_ms": round((finished - started).total_seconds() * 1000, 3),
            "lateness_ms": round(lateness_s * 1000, 3),
            "slot_ms": to_ms(slot),
            "manual": term is None,
        }
        self._last_records[spec.id] = record
        level = logging.INFO if outcome is RunOutcome.SUCCESS else logging.WARNING
        log.log(level, "job run %s", outcome.value, extra={"event": "job_run", **record})
        return record

    async def _attempt(self, spec: JobSpec, ctx: JobContext, lateness_s: float) -> tuple[RunOutcome, str | None]:
        timeout = spec.options.timeout
        outcome, error = RunOutcome.SUCCESS, None
        try:
            with self.telemetry.job_run(
                spec.id, ctx.scheduled_time, ctx.fencing_token, lateness_s, attempt=ctx.attempt, manual=ctx.manual
            ) as rec:
                try:
                    with anyio.fail_after(timeout) if timeout else nullcontext():
                        if spec.is_coroutine:
                            await spec.func(ctx)  # type: ignore[misc]
                        else:
                            await anyio.to_thread.run_sync(spec.func, ctx)
                except TimeoutError:
                    outcome, error = RunOutcome.TIMEOUT, f"timed out after {timeout}s"
                    rec.set_outcome(outcome.value, error)
                    raise
                except anyio.get_cancelled_exc_class():
                    outcome, error = RunOutcome.CANCELLED, "cancelled: leadership lost or stopping"
                    rec.set_outcome(outcome.value, error)
                    raise
                except PermissionError as exc:  # a fenced write was refused: superseded, not broken
                    outcome, error = RunOutcome.FENCED, f"{type(exc).__name__}: {exc}"
                    rec.set_outcome(outcome.value, error)
                    raise
                except Exception as exc:
                    outcome, error = RunOutcome.FAILED, f"{type(exc).__name__}: {exc}"
                    rec.set_outcome(outcome.value, error)
                    raise
                rec.set_outcome(outcome.value)
        except anyio.get_cancelled_exc_class():
            self._record_cancelled(spec, ctx)
            raise
        except Exception:
            if outcome is RunOutcome.SUCCESS:  # raised by telemetry itself
                outcome, error = RunOutcome.FAILED, "telemetry error"
            if outcome is RunOutcome.FAILED:
                log.warning("job failed", exc_info=True, extra={"event": "job_failed", "job_id": spec.id})
        return outcome, error

    def _record_cancelled(self, spec: JobSpec, ctx: JobContext) -> None:
        now = self.clock.wall()
        self._last_records[spec.id] = {
            "job_id": spec.id,
            "scheduled_time": ctx.scheduled_time.astimezone(UTC).isoformat(),
            "started_at": None,
            "finished_at": now.isoformat(),
            "status": RunOutcome.CANCELLED.value,
            "error": "cancelled: leadership lost or stopping",
            "replica_id": self.settings.replica_id,
            "fencing_token": ctx.fencing_token,
        }
        log.warning("job run cancelled", extra={"event": "job_run", **self._last_records[spec.id]})
