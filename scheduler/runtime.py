"""The leader-gated runtime: one replica = elector + APScheduler + slot claims.

Guarantees:
- Every replica builds its AsyncIOScheduler; only a leader starts it, and a
  replica that stops leading pauses it inside the elector's callback (before
  the lease can be taken by anyone else) and cancels its in-flight runs'
  coroutines (thread runs cannot be stopped: they keep their job occupied).
- Every run, right before it starts, checks the local lease (monotonic clock;
  False after a freeze) and then claims its slot with a fenced Lua script
  (token and lease id); a stale leader's claim fails and its run does not
  start. Slots are claimed in increasing time order per job, so no slot runs
  twice. With `WAIT_REPLICAS` > 0 a claim that too few replicas acknowledged
  does not start its run (the slot is counted missed, cause `unreplicated`).
- A slot more than `MAX_CLOCK_SKEW_MS` ahead of Redis' clock is not claimed
  (this replica's wall clock runs ahead): it waits for Redis time, or is
  counted missed (cause `clock_ahead`) past the misfire grace.
- A new leader continues each job from its last claimed slot (not from now):
  slots older than the misfire grace are counted as missed, the rest run,
  coalesced into one by default.
- At most one run of a job at a time on a replica, a worker thread included
  until it returns (`scheduler.executor`): a slot that falls due while the
  job still runs waits behind it, then runs late, coalesces or counts as
  missed. Manual requests (`lightsched run-job`) go through the same queue.
- Graceful stop and handoff: stop starting runs, drain in-flight runs for up to
  `drain_timeout` while still renewing, cancel what is left, wait for thread
  runs up to their job's timeout (saying so when one outlives it), then
  release the lease at once.

Does not guarantee: that code already running stops writing when leadership
ends (plain functions in threads cannot be cancelled): fenced writes refuse it.
The APScheduler 3 seam used is `BaseExecutor._do_submit_job(job, run_times)`,
tested against the pinned 3.11 minor.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from redis.exceptions import RedisError

from leader import (
    AcquireFailed,
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
from .executor import JobExecutor, ThreadRun
from .fencing import Fence, FencedOut
from .keys import Keyspace
from .registry import JobRegistry, JobSpec
from .requests import ManualRequest, RequestStore
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


def run_record(
    *,
    run_id: str,
    spec: JobSpec,
    slot: datetime,
    started: datetime | None,
    finished: datetime,
    outcome: RunOutcome,
    error: str | None,
    replica_id: str,
    term: LeaseTerm,
    attempts: int,
    lateness_s: float,
    trigger: str,
    requested_by: str | None,
) -> dict[str, Any]:
    """The one shape of a run record: run history, status, logs and the health route all show it."""
    return {
        "run_id": run_id,
        "job_id": spec.id,
        "scheduled_time": slot.astimezone(UTC).isoformat(),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat(),
        "status": outcome.value,
        "error": _cut(error) if error else None,
        "replica_id": replica_id,
        "fencing_token": term.token,
        "attempts": attempts,
        "duration_ms": round((finished - started).total_seconds() * 1000, 3) if started else None,
        "lateness_ms": round(lateness_s * 1000, 3),
        "slot_ms": to_ms(slot),
        "trigger": trigger,
        "manual": trigger != "scheduled",
        "requested_by": requested_by,
    }


def _never_called() -> None:  # APScheduler needs a func; the gated executor runs the spec instead
    raise AssertionError("jobs run through the gated executor")


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
        self.requests: RequestStore | None = None
        self.fence: Fence | None = None
        self._lease_client: Any = None
        self._scheduler: AsyncIOScheduler | None = None
        self._executor = JobExecutor(self._run_items, self._on_dropped)
        self._triggers: dict[str, BaseTrigger] = {s.id: schedule_trigger(s.trigger) for s in self.registry}
        self._control_send: Any = None
        self._control_recv: Any = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._term_scope: anyio.CancelScope | None = None
        self._stop_event = anyio.Event()
        self._stop_now = False
        self._drain_scope: anyio.CancelScope | None = None
        self._draining = False
        self._running = False
        self._stopping = False
        self._last_records: dict[str, dict[str, Any]] = {}
        self.clock_skew_s: float | None = None  # this replica's wall clock minus Redis TIME, latest measure
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
            clock_skew_s=self.clock_skew_s,
        )

    async def run(
        self, *, handle_signals: bool = False, task_status: anyio.abc.TaskStatus[Replica] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._executor.bind(loop)
        self.redis = make_client(s, "jobs")
        self._lease_client = make_client(s, "lease")
        store = RedisLeaseStore(self._lease_client, self.keys, wait_replicas=s.wait_replicas, wait_timeout_ms=s.wait_timeout_ms)
        self.elector = Elector(_TimedStore(store, self.telemetry.renew_succeeded, self.clock), self.identity, s.timings, clock=self.clock)  # type: ignore[arg-type]
        self.elector.subscribe(self._on_election_event)
        replication = {"wait_replicas": s.wait_replicas, "wait_timeout_ms": s.wait_timeout_ms}
        self.slots = SlotStore(
            self.redis, self.keys, s.run_history, timeout_s=2 * s.redis_socket_timeout,
            ahead_max_ms=s.max_clock_skew_ms, **replication,
        )
        self.requests = RequestStore(self.redis, self.keys, **replication)
        self.fence = Fence(self.redis, self.keys, **replication)
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
                self._tg = tg
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
            self._tg = None
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
                if self._term_scope is not None:
                    self._term_scope.cancel()  # the term's own tasks: manual requests, next-run publishing
                cancelled = self._executor.cancel_all()
                t.leadership_lost(term.token, reason.value)
                if cancelled:
                    threads = self._executor.thread_runs()
                    log.warning(
                        "cancelled in-flight runs on losing leadership",
                        extra={"event": "runs_cancelled", "count": cancelled, "fencing_token": term.token,
                               "threads_still_running": len(threads)},
                    )
            case HandoffRequested(term=term):
                self._control_send.send_nowait(("handoff", term))
            case LeaderObserved(holder=holder):
                t.leader_observed(holder.replica_id if holder is not None else None)
            case RenewedLate(term=term, late_s=late_s):
                t.renew_late(term.token, late_s)
            case RenewFailed(error=error):
                t.renew_failed(error)
            case AcquireFailed(error=error):
                t.acquire_failed(error)

    def _on_dropped(self, job_id: str, slots: list[datetime]) -> None:
        self._missed(job_id, len(slots), "still_running", "slots dropped: too many queued behind a run that is still going")

    def _missed(self, job_id: str, count: int, cause: str, message: str, **extra: Any) -> None:
        self.telemetry.slots_missed(job_id, count, cause)
        log.warning(message, extra={"event": "slot_missed", "job_id": job_id, "count": count, "cause": cause, **extra})

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
        plans: dict[str, datetime | None] = {}
        for job_id in ids:
            spec = self.registry.get(job_id)
            grace = spec.options.misfire_grace_time or self.settings.misfire_grace_time
            prev = from_ms(last[job_id]) if last[job_id] is not None else None
            plan = plan_resume(self._triggers[job_id], prev, now, grace)
            if plan.missed:
                self._missed(job_id, plan.missed, "no_leader", "slots missed beyond the misfire grace")
            job = self._scheduler.get_job(job_id)
            if job is None:
                continue
            if plan.next_run_time is None:
                job.pause()
            else:
                job.modify(next_run_time=plan.next_run_time)
            plans[job_id] = plan.next_run_time
        if self.elector.current_term() is not term or self._draining:
            return
        self._scheduler.resume()
        log.info("scheduler running", extra={"event": "scheduler_resumed", "fencing_token": term.token, "jobs": len(ids)})
        # The term's own background work, cancelled the moment it ends: informational writes
        # must not hold up the schedule, and manual requests are read only while leading.
        assert self._tg is not None
        self._term_scope = scope = anyio.CancelScope()
        self._tg.start_soon(self._term_tasks, scope, term, plans, name="term-tasks")

    async def _term_tasks(self, scope: anyio.CancelScope, term: LeaseTerm, plans: dict[str, datetime | None]) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._publish_next, term, plans, name="publish-next-runs")
                tg.start_soon(self._measure_skew, term, name="clock-skew")
                tg.start_soon(self._read_requests, term, name="manual-requests")

    async def _publish_next(self, term: LeaseTerm, plans: dict[str, datetime | None]) -> None:
        assert self.slots is not None
        for job_id, nxt in plans.items():
            try:
                with anyio.fail_after(self.settings.redis_socket_timeout):
                    await self.slots.set_next(job_id, term.fence, nxt)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("could not publish next run time", extra={"event": "set_next_failed", "error": str(exc)})

    async def _measure_skew(self, term: LeaseTerm) -> None:
        """This replica's wall clock against Redis TIME, once per term (slot claims refresh it)."""
        try:
            with anyio.fail_after(self.settings.redis_socket_timeout):
                before = self.clock.wall()
                secs, micros = await self.redis.time()
                after = self.clock.wall()
        except (RedisError, OSError, TimeoutError):
            return
        self._note_skew(before, after, secs * 1000 + micros // 1000)
        skew = self.clock_skew_s or 0.0
        if abs(skew) * 1000 > self.settings.max_clock_skew_ms / 2:
            log.warning(
                "this replica's wall clock differs from Redis' clock",
                extra={"event": "clock_skew", "skew_ms": round(skew * 1000, 1), "fencing_token": term.token,
                       "max_clock_skew_ms": self.settings.max_clock_skew_ms},
            )

    def _note_skew(self, before: datetime, after: datetime, redis_ms: int) -> None:
        mid_ms = (before.timestamp() + after.timestamp()) * 500
        self.clock_skew_s = round((mid_ms - redis_ms) / 1000, 4)
        self.telemetry.set_clock_skew(self.clock_skew_s)

    async def _read_requests(self, term: LeaseTerm) -> None:
        """Take manual run requests while this term lasts and queue them per job. The stream is
        read from its start first: requests an earlier leader left pending are taken up."""
        assert self.requests is not None and self.elector is not None
        block_ms = max(50, min(1000, int(self.settings.redis_socket_timeout * 500)))
        cursor, caught_up = "0-0", False
        while self.elector.current_term() is term:
            try:
                cursor, requests = await self.requests.read(cursor, block_ms if caught_up else None)
            except (RedisError, OSError) as exc:
                log.debug("cannot read manual requests; retrying", extra={"event": "requests_failed", "error": str(exc)})
                await anyio.sleep(self.settings.retry_period / 2)
                continue
            caught_up = caught_up or not requests
            for request in requests:
                await self._accept_request(term, request)

    async def _accept_request(self, term: LeaseTerm, request: ManualRequest) -> None:
        assert self.requests is not None
        spec = self.registry.get(request.job_id) if request.job_id in self.registry else None
        if spec is None or not spec.enabled:
            why = f"unknown job {request.job_id!r} (known: {', '.join(self.registry.ids)})" if spec is None else (
                f"job {request.job_id!r} is disabled")
            log.warning("manual run request rejected", extra={"event": "request_rejected", "request_id": request.id,
                                                              "job_id": request.job_id, "reason": why})
            try:
                await self.requests.finish(term.fence, request.id, state="rejected", outcome="rejected", error=why)
            except (RedisError, OSError):
                pass
            return
        log.info("manual run requested", extra={"event": "request_queued", "request_id": request.id,
                                                "job_id": request.job_id, "requested_by": request.requested_by})
        self._executor.enqueue(request.job_id, [request])

    async def _drain(self) -> None:
        """Stop starting runs, wait for in-flight ones (drain_timeout), cancel the rest, and wait
        for thread runs up to their job's timeout: a released lease must not outlive our own runs."""
        self._draining = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
        drain_start = self.clock.monotonic()
        if self._executor.tasks and not self._stop_now:
            log.info("draining in-flight runs", extra={"event": "draining", "count": len(self._executor.tasks)})
            with anyio.move_on_after(self.settings.drain_timeout) as scope:
                self._drain_scope = scope
                await self._executor.wait_idle()
            self._drain_scope = None
        if not self._executor.cancel_all():
            return
        # Cancelled coroutines finish quickly; a thread run holds the lease until it returns,
        # bounded by its job's timeout (or the drain timeout for a job without one).
        wait_until = drain_start + self.settings.drain_timeout
        for run in self._executor.thread_runs():
            if run.deadline_mono is not None:
                wait_until = max(wait_until, run.deadline_mono)
        bound_s = 0.0 if self._stop_now else max(2.0, wait_until - self.clock.monotonic())
        with anyio.move_on_after(bound_s) as scope:
            self._drain_scope = scope
            await self._executor.wait_idle()
        self._drain_scope = None
        outliving = self._executor.thread_runs()
        if outliving:
            by_job: dict[str, int] = {}
            for run in outliving:
                by_job[run.job_id] = by_job.get(run.job_id, 0) + 1
            for job_id, count in by_job.items():
                self.telemetry.runs_outlived_lease(job_id, count)
            log.warning(
                "giving the lease back while thread runs still execute (their fenced writes will be refused)",
                extra={"event": "release_with_runs_in_flight", "jobs": sorted(by_job), "count": len(outliving)},
            )

    async def _handoff(self, term: LeaseTerm) -> None:
        assert self.elector is not None and self.fence is not None
        try:  # tell `lightsched handoff` the leader itself heard it (standbys hear it too)
            with anyio.fail_after(self.settings.redis_socket_timeout):
                await self.fence.set(term.fence, self.keys.handoff_ack(), term.fence, px=60_000)
        except (RedisError, OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - an ack is best effort
            log.debug("could not acknowledge the handoff", extra={"event": "handoff_ack_failed", "error": str(exc)})
        await self._drain()
        await self.elector.release()
        self._draining = False

    async def _shutdown(self) -> None:
        if self.elector is not None:
            self.elector.withdraw()  # a lease lost while draining is not taken back
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

    async def _run_items(self, job_id: str, items: list[Any]) -> None:
        """One queue batch of a job, in order: runs of due slots, and manual requests."""
        i = 0
        while i < len(items):
            if isinstance(items[i], ManualRequest):
                await self._run_request(items[i])
                i += 1
                continue
            j = i
            while j < len(items) and not isinstance(items[j], ManualRequest):
                j += 1
            if not await self._run_due(job_id, items[i:j]):
                return
            i = j

    async def _run_due(self, job_id: str, run_times: list[datetime]) -> bool:
        """Run due slots; False when this replica must stop running slots (not leading)."""
        spec = self.registry.get(job_id)
        now = self.clock.wall()
        grace = spec.options.misfire_grace_time or self.settings.misfire_grace_time
        run_times = sorted(run_times)  # deferred slots may rejoin the queue behind later ones
        due = [rt for rt in run_times if (now - rt).total_seconds() <= grace]
        if len(due) < len(run_times):
            self._missed(job_id, len(run_times) - len(due), "late", "slots missed beyond the misfire grace")
        if len(due) > 1:
            due = await self._defer_early(job_id, due)
        if spec.options.coalesce and len(due) > 1:
            self.telemetry.slots_coalesced(job_id, len(due) - 1)
            due = due[-1:]
        for slot in due:
            if not await self._run_slot(spec, slot):
                return False
        return True

    async def _defer_early(self, job_id: str, due: list[datetime]) -> list[datetime]:
        """Of several slots due at once (a forward wall-clock step, a long pause), those Redis'
        clock says are not due yet are queued again for when they are, not coalesced away."""
        try:
            with anyio.fail_after(self.settings.redis_socket_timeout):
                before = self.clock.wall()
                secs, micros = await self.redis.time()
                after = self.clock.wall()
        except (RedisError, OSError, TimeoutError):
            return due  # each claim still refuses a slot too far ahead
        redis_ms = secs * 1000 + micros // 1000
        self._note_skew(before, after, redis_ms)
        limit_ms = redis_ms + self.settings.max_clock_skew_ms
        early = [slot for slot in due if to_ms(slot) > limit_ms]
        for slot in early:
            self._executor.enqueue_later((to_ms(slot) - redis_ms) / 1000, job_id, [slot])
        if early:
            log.warning(
                "slots ahead of Redis' clock deferred until they are due",
                extra={"event": "slots_deferred", "job_id": job_id, "count": len(early),
                       "ahead_s": round((to_ms(early[-1]) - redis_ms) / 1000, 3)},
            )
        return [slot for slot in due if to_ms(slot) <= limit_ms]

    async def _claim(self, spec: JobSpec, slot: datetime, term: LeaseTerm) -> bool | None:
        """Claim `slot` under `term`: True to run it, False to skip it, None to stop running slots."""
        assert self.slots is not None and self.elector is not None
        next_slot = self._triggers[spec.id].get_next_fire_time(slot, slot)
        before = self.clock.wall()
        try:
            # No local deadline here: the script checks the fence when it runs, so a slow claim
            # is safe, and giving up on it would lose a slot it may still win. The batch itself
            # is bounded (SlotStore timeout).
            claim = await self.slots.claim(spec.id, slot, term.fence, term.token, self.settings.replica_id, next_slot)
        except RedisError as exc:
            self._missed(spec.id, 1, "redis", "slot missed: could not claim it", slot=slot.isoformat(),
                         error=str(exc) or type(exc).__name__)
            return False
        if claim.redis_now_ms is not None:
            self._note_skew(before, self.clock.wall(), claim.redis_now_ms)
        match claim.reason:
            case "ok":
                return True
            case "future":
                # This replica's wall clock runs ahead: the slot is not due by Redis' clock. It is
                # queued again for when it is (claiming it now would also refuse the real slots
                # before it), or counted missed when that is beyond the misfire grace.
                assert claim.redis_now_ms is not None
                wait_s = (to_ms(slot) - claim.redis_now_ms) / 1000
                grace = spec.options.misfire_grace_time or self.settings.misfire_grace_time
                if wait_s > grace:
                    self._missed(spec.id, 1, "clock_ahead", "slot missed: this replica's clock runs far ahead of Redis",
                                 slot=slot.isoformat(), ahead_s=round(wait_s, 3))
                    return False
                log.warning(
                    "slot lies ahead of Redis' clock; deferred until it is due",
                    extra={"event": "slot_ahead", "job_id": spec.id, "slot": slot.isoformat(),
                           "ahead_s": round(wait_s, 3), "fencing_token": term.token},
                )
                # Due exactly when Redis' clock reaches it: deferred slots come back in slot order.
                self._executor.enqueue_later(max(0.0, wait_s), spec.id, [slot])
                return False
            case "unreplicated":
                self._missed(spec.id, 1, "unreplicated",
                             "slot missed: its claim was not acknowledged by enough replicas (WAIT)",
                             slot=slot.isoformat(), fencing_token=term.token)
                return False
            case reason:
                log.warning(
                    "slot claim refused",
                    extra={"event": "slot_claim_refused", "job_id": spec.id, "slot": slot.isoformat(),
                           "reason": reason, "fencing_token": term.token},
                )
                return False if reason == "claimed" else None

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
        claimed = await self._claim(spec, slot, term)
        if claimed is None:
            return False
        if not claimed:
            return True
        if spec.options.jitter:
            await anyio.sleep(random.uniform(0, spec.options.jitter))
        next_slot = self._triggers[spec.id].get_next_fire_time(slot, slot)
        record = await self.execute(spec, slot, term, next_slot=next_slot)
        await self._store_record(spec.id, term, record)
        return True

    async def _store_record(self, job_id: str, term: LeaseTerm, record: dict[str, Any]) -> None:
        assert self.slots is not None
        try:
            if not await self.slots.record(job_id, term.fence, record):
                log.warning("run record fenced out", extra={"event": "record_fenced", "job_id": job_id})
        except RedisError as exc:
            log.warning("could not store the run record", extra={"event": "record_failed", "error": str(exc)})

    async def _run_request(self, request: ManualRequest) -> None:
        """A manual run: claim the request (fenced, at most once), run it like a slot, record it."""
        assert self.elector is not None and self.requests is not None
        spec = self.registry.get(request.job_id)
        term = self.elector.current_term()
        if term is None or self._draining:
            return  # still pending: the next leader takes it, or the requester cancels it
        try:
            claimed = await self.requests.claim(term.fence, request, self.settings.replica_id, term.token)
        except (RedisError, OSError) as exc:
            log.warning("could not claim a manual request", extra={"event": "request_claim_failed",
                                                                   "request_id": request.id, "error": str(exc)})
            return
        if claimed != "ok":
            log.info("manual request not run", extra={"event": "request_not_run", "request_id": request.id,
                                                      "reason": claimed})
            if claimed == "unreplicated":
                await self._finish_request(term, request, "done", "failed",
                                           "its claim was not acknowledged by enough replicas (WAIT); not run")
            return
        record = await self.execute(spec, request.requested_at, term, params=dict(request.params),
                                    trigger="manual", requested_by=request.requested_by or None)
        await self._store_record(spec.id, term, record)
        await self._finish_request(term, request, "done", record["status"], record.get("error"),
                                   record.get("duration_ms"), record["run_id"])

    async def _finish_request(
        self, term: LeaseTerm, request: ManualRequest, state: str, outcome: str, error: str | None,
        duration_ms: float | None = None, run_id: str | None = None,
    ) -> None:
        assert self.requests is not None
        try:
            await self.requests.finish(term.fence, request.id, state=state, outcome=outcome, error=error,
                                       duration_ms=duration_ms, run_id=run_id)
        except (RedisError, OSError) as exc:
            log.warning("could not store a manual request's outcome", extra={"event": "request_finish_failed",
                                                                             "request_id": request.id, "error": str(exc)})

    async def execute(
        self,
        spec: JobSpec,
        slot: datetime,
        term: LeaseTerm,
        *,
        next_slot: datetime | None = None,
        params: dict[str, str] | None = None,
        trigger: str = "scheduled",
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Run `spec` for `slot` under `term` with retries and timeout; return the run record.

        Every attempt first checks that `term` is still this replica's valid
        term. A cancellation (leadership lost, stopping) is recorded, then
        re-raised.
        """
        run_id = uuid.uuid4().hex
        started = self.clock.wall()
        lateness_s = max(0.0, (started - slot).total_seconds()) if trigger == "scheduled" else 0.0
        lag = self.lag.reset_max()
        opts = spec.options
        outcome, error, attempt = RunOutcome.FENCED, "no longer leading", 0

        def record() -> dict[str, Any]:
            rec = run_record(
                run_id=run_id, spec=spec, slot=slot, started=started, finished=self.clock.wall(), outcome=outcome,
                error=error, replica_id=self.settings.replica_id, term=term, attempts=attempt,
                lateness_s=lateness_s, trigger=trigger, requested_by=requested_by,
            )
            self._last_records[spec.id] = rec
            level = logging.INFO if outcome is RunOutcome.SUCCESS else logging.WARNING
            log.log(level, "job run %s", outcome.value, extra={"event": "job_run", **rec})
            return rec

        try:
            while True:
                attempt += 1
                if self.elector is None or self.elector.current_term() is not term:
                    outcome, error = RunOutcome.FENCED, "no longer leading"
                    break
                ctx = JobContext(
                    job_id=spec.id,
                    replica_id=self.settings.replica_id,
                    fencing_token=term.token,
                    scheduled_time=slot,
                    redis=self.redis,
                    keys=self.keys,
                    log=JobLogger(
                        logging.getLogger(f"lightsched.job.{spec.id}"),
                        {"job_id": spec.id, "fencing_token": term.token, "slot": slot.isoformat()},
                    ),
                    config=self.configs.get(spec.id),
                    params=params or {},
                    attempt=attempt,
                    manual=trigger != "scheduled",
                    loop_lag_s=lag,
                    lease_id=term.lease_id,
                    trigger=trigger,
                    requested_by=requested_by,
                    _ops=self.fence,
                )
                outcome, error, thread_left = await self._attempt(spec, ctx, lateness_s)
                if outcome in (RunOutcome.SUCCESS, RunOutcome.FENCED) or attempt > opts.retries:
                    break
                if thread_left:
                    # Its thread still runs: another attempt now would run the job twice at once.
                    error = f"{error}; no retry while its thread still runs"
                    break
                delay = min(opts.retry_backoff * 2 ** (attempt - 1), opts.retry_backoff_max)
                if next_slot is not None and (self.clock.wall() - next_slot).total_seconds() + delay >= 0:
                    log.info("no retry: it would run into the next slot", extra={"event": "retry_skipped", "job_id": spec.id})
                    break
                log.info("retrying", extra={"event": "retry", "job_id": spec.id, "attempt": attempt + 1, "delay_s": delay})
                await anyio.sleep(delay)
        except anyio.get_cancelled_exc_class():
            outcome, error = RunOutcome.CANCELLED, "cancelled: leadership lost or stopping"
            record()
            raise
        return record()

    async def _attempt(
        self, spec: JobSpec, ctx: JobContext, lateness_s: float
    ) -> tuple[RunOutcome, str | None, bool]:
        """One attempt: (outcome, error, whether its worker thread is still running)."""
        timeout = spec.options.timeout
        run: ThreadRun[Any] | None = None
        with self.telemetry.job_run(
            spec.id, ctx.scheduled_time, ctx.fencing_token, lateness_s, attempt=ctx.attempt, manual=ctx.manual
        ) as rec:
            try:
                with anyio.move_on_after(timeout if timeout else float("inf")) as scope:
                    if spec.is_coroutine:
                        await spec.func(ctx)  # type: ignore[misc]
                    else:
                        deadline = self.clock.monotonic() + timeout if timeout else None
                        run = ThreadRun(spec.id, spec.func, ctx, deadline_mono=deadline, limiter=self._executor.limiter)
                        self._executor.hold(run)
                        await run.wait()
            except anyio.get_cancelled_exc_class():
                rec.set_outcome(RunOutcome.CANCELLED.value, "cancelled: leadership lost or stopping")
                raise
            except Exception as exc:  # noqa: BLE001 - classified, recorded, logged
                outcome, error = _classify(exc)
                rec.set_outcome(outcome.value, error)
                if outcome is RunOutcome.FAILED:
                    log.warning("job failed", exc_info=True, extra={"event": "job_failed", "job_id": spec.id})
                return outcome, error, run is not None and not run.done.done()
            if scope.cancelled_caught:
                thread_left = run is not None and not run.done.done()
                error = f"timed out after {timeout}s" + ("; its thread is still running" if thread_left else "")
                rec.set_outcome(RunOutcome.TIMEOUT.value, error)
                return RunOutcome.TIMEOUT, error, thread_left
            rec.set_outcome(RunOutcome.SUCCESS.value)
        return RunOutcome.SUCCESS, None, False


#: How an exception raised by a job's attempt is classified: first match wins.
_OUTCOME_OF: tuple[tuple[type[BaseException], RunOutcome], ...] = (
    (FencedOut, RunOutcome.FENCED),  # a fenced write was refused: superseded, not broken
    (Exception, RunOutcome.FAILED),
)


def _classify(exc: BaseException) -> tuple[RunOutcome, str]:
    for kind, outcome in _OUTCOME_OF:
        if isinstance(exc, kind):
            return outcome, f"{type(exc).__name__}: {exc}"
    return RunOutcome.FAILED, f"{type(exc).__name__}: {exc}"
