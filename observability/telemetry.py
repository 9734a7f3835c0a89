"""The facade the scheduler reports to: Prometheus metrics and OpenTelemetry spans.

Guarantees:
- Metrics live in this object's own `CollectorRegistry` (several `Telemetry`
  objects can coexist in one process); names are listed in `docs/TRACING.md`.
- Spans come from the tracer provider handed in, else the global one: with
  tracing off they are the API's no-op spans and attributes are never built.
- `job_run` makes the span `job <id>` current for the block, so code inside
  (and worker threads started with a copied context) opens child spans under
  it. An exception escaping the block is recorded (message and traceback with
  URL passwords masked), gives status ERROR and outcome `failed` — or
  `cancelled` for cancellation — and is re-raised unchanged.
- Expected outcomes are not errors: `cancelled` and `fenced` runs and every
  leadership change keep status UNSET; their outcome/reason attribute says why.

Does not guarantee: that spans are exported (see `observability.tracing`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .redact import redact_text

__all__ = ["MISSED_CAUSES", "OUTCOMES", "JobRunRecorder", "Telemetry", "UnknownOutcome"]

OUTCOMES: tuple[str, ...] = ("success", "failed", "timeout", "cancelled", "fenced")
#: Why a slot did not run: too late (late), missed while nobody led (no_leader), too many queued
#: behind a run (still_running), its claim failed on Redis (redis) or was not acknowledged by
#: replicas (unreplicated), this replica's clock ran far ahead of Redis' (clock_ahead).
MISSED_CAUSES: tuple[str, ...] = ("late", "no_leader", "still_running", "redis", "unreplicated", "clock_ahead")
_ERROR_OUTCOMES = frozenset({"failed", "timeout"})
# Step-down reasons that mean "we gave the lease back" rather than "we lost it".
_RELEASE_REASONS = frozenset({"released", "handoff"})
_TRACER_NAME = "lightsched"

# Lease round trips: sub-millisecond on loopback, seconds when Redis struggles.
_RENEW_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Light jobs: milliseconds to a few minutes.
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Dispatch lateness: milliseconds normally, up to the misfire grace time after a takeover.
_LATENESS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0)


class UnknownOutcome(ValueError):
    def __init__(self, outcome: str) -> None:
        super().__init__(f"job outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")


class JobRunRecorder:
    """Handed to the body of `Telemetry.job_run`; says how the run ended if not by returning or raising."""

    __slots__ = ("error", "outcome", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.outcome: str | None = None
        self.error: str | None = None

    def set_outcome(self, outcome: str, error: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise UnknownOutcome(outcome)
        self.outcome = outcome
        self.error = error

    @property
    def trace_id(self) -> str | None:
        """The run's trace id in hex, or None when tracing is off."""
        context = self.span.get_span_context()
        return trace.format_trace_id(context.trace_id) if context.is_valid else None


class _JobSeries:
    """One job's metric children, looked up once instead of on every run."""

    __slots__ = ("_outcomes", "_runs", "duration", "job_id", "lateness")

    def __init__(self, telemetry: Telemetry, job_id: str) -> None:
        self.job_id = job_id
        self._runs = telemetry._runs
        self.duration = telemetry._duration.labels(job_id)
        self.lateness = telemetry._lateness.labels(job_id)
        self._outcomes: dict[str, Any] = {}

    def runs(self, outcome: str) -> Any:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._runs.labels(self.job_id, outcome)
        return child


class Telemetry:
    def __init__(
        self,
        replica_id: str,
        registry: CollectorRegistry | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self.observed_leader: str | None = None
        self._jobs: dict[str, _JobSeries] = {}
        r = self.registry

        self._replica_info = Gauge(
            "lightsched_replica_info", "Always 1; labels name this replica", ["replica_id"], registry=r
        )
        self._replica_info.labels(replica_id).set(1)
        self._is_leader = Gauge("lightsched_is_leader", "1 while this replica holds the lease, else 0", registry=r)
        self._fencing_token = Gauge(
            "lightsched_fencing_token", "Fencing token of the latest term this replica held (0: never led)", registry=r
        )
        self._leader_info = Gauge(
            "lightsched_leader_info",
            "1 for the replica this replica last saw holding the lease; absent when none",
            ["leader_replica_id"],
            registry=r,
        )
        self._transitions = Counter(
            "lightsched_leadership_transitions",
            "Times this replica became leader (acquired) or stopped leading (lost)",
            ["kind"],
            registry=r,
        )
        self._step_downs = Counter(
            "lightsched_step_downs", "Times this replica stopped leading, by reason", ["reason"], registry=r
        )
        self._renew_latency = Histogram(
            "lightsched_lease_renew_latency_seconds",
            "Round trip of successful lease renewals",
            buckets=_RENEW_BUCKETS_S,
            registry=r,
        )
        self._renews_late = Counter(
            "lightsched_renews_late", "Renewals that succeeded later than the retry period asked", registry=r
        )
        self._renew_failures = Counter(
            "lightsched_renew_failures", "A leader's renewals that failed (Redis error or timeout)", registry=r
        )
        self._acquire_failures = Counter(
            "lightsched_acquire_failures",
            "A standby's acquire attempts that failed (Redis error or timeout; not 'held by another')",
            registry=r,
        )
        self._clock_skew = Gauge(
            "lightsched_clock_skew_seconds",
            "This replica's wall clock minus Redis TIME, latest measure (slot claims, takeover)",
            registry=r,
        )
        self._outlived = Counter(
            "lightsched_runs_outliving_lease",
            "Thread runs still executing when this replica gave its lease back (they could not be stopped)",
            ["job_id"],
            registry=r,
        )
        self._runs = Counter("lightsched_job_runs", "Finished job runs", ["job_id", "outcome"], registry=r)
        self._duration = Histogram(
            "lightsched_job_duration_seconds", "Job run duration", ["job_id"], buckets=_DURATION_BUCKETS_S, registry=r
        )
        self._lateness = Histogram(
            "lightsched_job_lateness_seconds",
            "Start of a scheduled run minus its slot time (manual runs excluded)",
            ["job_id"],
            buckets=_LATENESS_BUCKETS_S,
            registry=r,
        )
        self._missed = Counter(
            "lightsched_slots_missed",
            "Slots that did not run, by cause: " + ", ".join(MISSED_CAUSES),
            ["job_id", "cause"],
            registry=r,
        )
        self._coalesced = Counter(
            "lightsched_slots_coalesced", "Overdue slots merged into a single run", ["job_id"], registry=r
        )
        self._loop_lag = Gauge("lightsched_loop_lag_seconds", "Latest event-loop lag measured", registry=r)
        for kind in ("acquired", "lost"):
            self._transitions.labels(kind)

    def __repr__(self) -> str:
        return f"Telemetry(replica_id={self.replica_id!r})"

    # -- jobs -----------------------------------------------------------------

    def declare_jobs(self, job_ids: Iterable[str]) -> None:
        """Create the per-job series at zero, so dashboards show jobs that have not run yet."""
        for job_id in job_ids:
            series = self._job_series(job_id)
            for outcome in OUTCOMES:
                series.runs(outcome)
            for cause in MISSED_CAUSES:
                self._missed.labels(job_id, cause)
            self._coalesced.labels(job_id)

    @contextmanager
    def job_run(
        self,
        job_id: str,
        scheduled_time: datetime,
        fencing_token: int,
        lateness_s: float,
        attempt: int = 1,
        manual: bool = False,
    ) -> Iterator[JobRunRecorder]:
        series = self._job_series(job_id)
        if not manual:
            series.lateness.observe(max(0.0, lateness_s))
        span = self._tracer.start_span(f"job {job_id}", kind=SpanKind.INTERNAL)
        recording = span.is_recording()
        if recording:
            span.set_attributes(
                {
                    "lightsched.job_id": job_id,
                    "lightsched.scheduled_time": _iso_utc(scheduled_time),
                    "lightsched.lateness_ms": round(lateness_s * 1000.0, 3),
                    "lightsched.fencing_token": fencing_token,
                    "lightsched.replica_id": self.replica_id,
                    "lightsched.attempt": attempt,
                    "lightsched.manual": manual,
                }
            )
        # The no-op span (tracing off) has no context worth making current; skipping
        # the attach is most of what makes a run cost nothing when tracing is off.
        token = context_api.attach(trace.set_span_in_context(span)) if span.get_span_context().is_valid else None
        recorder = JobRunRecorder(span)
        raised: BaseException | None = None
        started = time.perf_counter()
        try:
            yield recorder
        except BaseException as exc:
            raised = exc
            raise
        finally:
            duration_s = time.perf_counter() - started
            if token is not None:
                context_api.detach(token)
            outcome = recorder.outcome
            if outcome is None:
                if raised is None:
                    outcome = "success"
                else:
                    outcome = "failed" if isinstance(raised, Exception) else "cancelled"
            series.runs(outcome).inc()
            series.duration.observe(duration_s)
            if recording:
                self._finish_span(span, outcome, recorder.error, raised)
            span.end()

    def _job_series(self, job_id: str) -> _JobSeries:
        series = self._jobs.get(job_id)
        if series is None:
            series = self._jobs[job_id] = _JobSeries(self, job_id)
        return series

    @staticmethod
    def _finish_span(span: trace.Span, outcome: str, error: str | None, raised: BaseException | None) -> None:
        span.set_attribute("lightsched.outcome", outcome)
        if isinstance(raised, Exception):
            message = redact_text(str(raised))
            span.record_exception(
                raised,
                attributes={
                    "exception.message": message,
                    "exception.stacktrace": redact_text(_format_traceback(raised)),
                },
            )
            if error is None:
                error = f"{type(raised).__name__}: {message}" if message else type(raised).__name__
        if error is not None:
            span.set_attribute("lightsched.error", redact_text(error))
        if outcome in _ERROR_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, redact_text(error) if error else outcome))

    def slots_missed(self, job_id: str, count: int = 1, cause: str = "late") -> None:
        """`cause`: one of `MISSED_CAUSES`."""
        self._missed.labels(job_id, cause).inc(count)

    def runs_outlived_lease(self, job_id: str, count: int = 1) -> None:
        self._outlived.labels(job_id).inc(count)

    def slots_coalesced(self, job_id: str, count: int = 1) -> None:
        self._coalesced.labels(job_id).inc(count)

    # -- leadership -----------------------------------------------------------

    def leadership_acquired(self, token: int, reason: str | None = None) -> None:
        self._is_leader.set(1)
        self._fencing_token.set(token)
        self._transitions.labels("acquired").inc()
        self._note_leader(self.replica_id)
        self._short_span("leadership acquired", token, reason)

    def leadership_lost(self, token: int, reason: str) -> None:
        """`reason`: released | lost | renew_deadline_passed | unreplicated | stalled | cancelled | handoff."""
        self._is_leader.set(0)
        self._transitions.labels("lost").inc()
        self._step_downs.labels(reason).inc()
        if self.observed_leader == self.replica_id:
            self._note_leader(None)
        name = "leadership released" if reason in _RELEASE_REASONS else "leadership lost"
        self._short_span(name, token, reason)

    def leader_observed(self, replica_id: str | None) -> None:
        self._note_leader(replica_id)

    def renew_succeeded(self, latency_s: float) -> None:
        self._renew_latency.observe(latency_s)

    def renew_late(self, token: int, late_s: float) -> None:
        self._renews_late.inc()
        self._short_span("lease renewed late", token, None, {"lightsched.late_ms": round(late_s * 1000.0, 3)})

    def renew_failed(self, error: str) -> None:
        # The error text is for logs; as a label it would make unbounded series.
        del error
        self._renew_failures.inc()

    def acquire_failed(self, error: str) -> None:
        del error  # for logs only, as with renewals
        self._acquire_failures.inc()

    def set_clock_skew(self, skew_s: float) -> None:
        self._clock_skew.set(skew_s)

    def set_loop_lag(self, lag_s: float) -> None:
        self._loop_lag.set(lag_s)

    # -- helpers ----------------------------------------------------------------

    def _note_leader(self, replica_id: str | None) -> None:
        if replica_id == self.observed_leader:
            return
        self.observed_leader = replica_id
        self._leader_info.clear()
        if replica_id is not None:
            self._leader_info.labels(replica_id).set(1)

    def _short_span(self, name: str, token: int, reason: str | None, extra: dict[str, Any] | None = None) -> None:
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL)
        if span.is_recording():
            span.set_attribute("lightsched.replica_id", self.replica_id)
            span.set_attribute("lightsched.fencing_token", token)
            if reason is not None:
                span.set_attribute("lightsched.reason", reason)
            if extra:
                span.set_attributes(extra)
        span.end()


def _iso_utc(moment: datetime) -> str:
    return (moment.astimezone(UTC) if moment.tzinfo is not None else moment).isoformat()


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
