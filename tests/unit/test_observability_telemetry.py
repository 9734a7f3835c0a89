"""observability.telemetry: span attributes and status, metrics as Prometheus sees them.

Spans go to a local SDK provider with an in-memory exporter: the global
provider can be set once per process, so these tests never set it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observability.telemetry import Telemetry, UnknownOutcome

SLOT = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def telemetry(provider: TracerProvider) -> Telemetry:
    return Telemetry("replica-a", tracer_provider=provider)


def samples(telemetry: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry as Prometheus would scrape it: (name, sorted labels) -> value."""
    text = generate_latest(telemetry.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def only_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(spans) == 1, [span.name for span in exporter.get_finished_spans()]
    return spans[0]


def test_successful_run_span_has_the_attributes_and_is_current_inside(
    telemetry: Telemetry, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    paris_slot = SLOT.astimezone(timezone(timedelta(hours=1)))
    with telemetry.job_run("tick", paris_slot, fencing_token=42, lateness_s=0.0125) as run:
        inside = trace.get_current_span()
        with provider.get_tracer("job-code").start_as_current_span("child work"):
            pass
    assert trace.get_current_span() is not inside

    span = only_span(exporter, "job tick")
    assert span.kind is SpanKind.INTERNAL
    assert inside is run.span
    assert dict(span.attributes or {}) == {
        "lightsched.job_id": "tick",
        "lightsched.scheduled_time": "2025-03-01T12:00:00+00:00",
        "lightsched.lateness_ms": 12.5,
        "lightsched.fencing_token": 42,
        "lightsched.replica_id": "replica-a",
        "lightsched.attempt": 1,
        "lightsched.manual": False,
        "lightsched.outcome": "success",
    }
    assert span.status.status_code is StatusCode.UNSET
    child = only_span(exporter, "child work")
    assert child.parent is not None and child.parent.span_id == span.context.span_id
    assert run.trace_id == f"{span.context.trace_id:032x}"


def test_exception_is_recorded_as_error_masked_and_reraised(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    class ReportFailed(Exception):
        pass

    with pytest.raises(ReportFailed) as excinfo:
        with telemetry.job_run("report", SLOT, fencing_token=3, lateness_s=0.0, attempt=2):
            raise ReportFailed("upload to redis://:hunter2@cache:6379 refused")
    assert "hunter2" in str(excinfo.value)  # re-raised unchanged

    span = only_span(exporter, "job report")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ReportFailed: upload to redis://:***@cache:6379 refused"
    assert span.attributes is not None
    assert span.attributes["lightsched.outcome"] == "failed"
    assert span.attributes["lightsched.attempt"] == 2
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith("ReportFailed")
    assert "hunter2" not in str(event.attributes["exception.message"])
    assert "hunter2" not in str(event.attributes["exception.stacktrace"])
    assert samples(telemetry)[("lightsched_job_runs_total", (("job_id", "report"), ("outcome", "failed")))] == 1


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("timeout", StatusCode.ERROR),
        ("failed", StatusCode.ERROR),
        ("fenced", StatusCode.UNSET),
        ("cancelled", StatusCode.UNSET),
    ],
)
def test_outcome_set_by_the_caller_decides_status(
    telemetry: Telemetry, exporter: InMemorySpanExporter, outcome: str, status: StatusCode
) -> None:
    with telemetry.job_run("tick", SLOT, 5, 0.0) as run:
        run.set_outcome(outcome, error=f"run ended: {outcome}")

    span = only_span(exporter, "job tick")
    assert span.attributes is not None
    assert span.attributes["lightsched.outcome"] == outcome
    assert span.attributes["lightsched.error"] == f"run ended: {outcome}"
    assert span.status.status_code is status


def test_cancellation_is_outcome_cancelled_not_an_error(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(asyncio.CancelledError):
        with telemetry.job_run("tick", SLOT, 5, 0.0):
            raise asyncio.CancelledError

    span = only_span(exporter, "job tick")
    assert span.attributes is not None and span.attributes["lightsched.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert samples(telemetry)[("lightsched_job_runs_total", (("job_id", "tick"), ("outcome", "cancelled")))] == 1


def test_unknown_outcome_is_refused_naming_the_choices(telemetry: Telemetry) -> None:
    with telemetry.job_run("tick", SLOT, 5, 0.0) as run:
        with pytest.raises(UnknownOutcome, match="one of success, failed, timeout, cancelled, fenced, got 'ok'"):
            run.set_outcome("ok")


def test_job_metrics_count_runs_durations_and_lateness(telemetry: Telemetry) -> None:
    telemetry.declare_jobs(["tick", "report"])
    for lateness_s in (0.002, 0.2):
        with telemetry.job_run("tick", SLOT, 1, lateness_s):
            pass
    with telemetry.job_run("tick", SLOT, 1, 99.0, manual=True):
        pass
    telemetry.slots_missed("report", 3)
    telemetry.slots_coalesced("tick")

    got = samples(telemetry)
    assert got[("lightsched_job_runs_total", (("job_id", "tick"), ("outcome", "success")))] == 3
    assert got[("lightsched_job_runs_total", (("job_id", "report"), ("outcome", "success")))] == 0
    assert got[("lightsched_job_duration_seconds_count", (("job_id", "tick"),))] == 3
    # manual runs have no slot, so their "lateness" is not counted
    assert got[("lightsched_job_lateness_seconds_count", (("job_id", "tick"),))] == 2
    assert got[("lightsched_job_lateness_seconds_bucket", (("job_id", "tick"), ("le", "0.0025")))] == 1
    assert got[("lightsched_job_lateness_seconds_sum", (("job_id", "tick"),))] == pytest.approx(0.202)
    assert got[("lightsched_slots_missed_total", (("cause", "late"), ("job_id", "report")))] == 3
    assert got[("lightsched_slots_coalesced_total", (("job_id", "tick"),))] == 1
    assert got[("lightsched_slots_missed_total", (("cause", "late"), ("job_id", "tick")))] == 0


def test_leadership_gauges_counters_and_spans(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    telemetry.leader_observed("replica-b")
    assert samples(telemetry)[("lightsched_leader_info", (("leader_replica_id", "replica-b"),))] == 1

    telemetry.leadership_acquired(8)
    got = samples(telemetry)
    assert got[("lightsched_is_leader", ())] == 1
    assert got[("lightsched_fencing_token", ())] == 8
    assert got[("lightsched_leadership_transitions_total", (("kind", "acquired"),))] == 1
    assert ("lightsched_leader_info", (("leader_replica_id", "replica-b"),)) not in got
    assert got[("lightsched_leader_info", (("leader_replica_id", "replica-a"),))] == 1

    telemetry.renew_late(8, late_s=1.5)
    telemetry.leadership_lost(8, "renew_deadline_passed")
    telemetry.leadership_acquired(10)
    telemetry.leadership_lost(10, "handoff")

    got = samples(telemetry)
    assert got[("lightsched_is_leader", ())] == 0
    assert got[("lightsched_fencing_token", ())] == 10
    assert got[("lightsched_leadership_transitions_total", (("kind", "lost"),))] == 2
    assert got[("lightsched_step_downs_total", (("reason", "handoff"),))] == 1
    assert got[("lightsched_renews_late_total", ())] == 1

    acquired = [s for s in exporter.get_finished_spans() if s.name == "leadership acquired"]
    assert [dict(s.attributes or {}) for s in acquired] == [
        {"lightsched.replica_id": "replica-a", "lightsched.fencing_token": 8},
        {"lightsched.replica_id": "replica-a", "lightsched.fencing_token": 10},
    ]
    lost = only_span(exporter, "leadership lost")
    assert dict(lost.attributes or {}) == {
        "lightsched.replica_id": "replica-a",
        "lightsched.fencing_token": 8,
        "lightsched.reason": "renew_deadline_passed",
    }
    assert lost.status.status_code is StatusCode.UNSET
    released = only_span(exporter, "leadership released")
    assert released.attributes is not None and released.attributes["lightsched.reason"] == "handoff"
    late = only_span(exporter, "lease renewed late")
    assert late.attributes is not None and late.attributes["lightsched.late_ms"] == 1500.0


def test_renewal_metrics_and_loop_lag(telemetry: Telemetry) -> None:
    for latency_s in (0.0004, 0.003, 0.003):
        telemetry.renew_succeeded(latency_s)
    telemetry.renew_failed("ConnectionError: refused")
    telemetry.set_loop_lag(0.25)

    got = samples(telemetry)
    assert got[("lightsched_lease_renew_latency_seconds_count", ())] == 3
    assert got[("lightsched_lease_renew_latency_seconds_bucket", (("le", "0.0005"),))] == 1
    assert got[("lightsched_lease_renew_latency_seconds_bucket", (("le", "0.005"),))] == 3
    assert got[("lightsched_renew_failures_total", ())] == 1
    assert got[("lightsched_loop_lag_seconds", ())] == 0.25
    assert got[("lightsched_replica_info", (("replica_id", "replica-a"),))] == 1


def test_instances_have_separate_registries(provider: TracerProvider) -> None:
    first = Telemetry("a", tracer_provider=provider)
    second = Telemetry("b", tracer_provider=provider)
    first.leadership_acquired(1)
    assert samples(first)[("lightsched_is_leader", ())] == 1
    assert samples(second)[("lightsched_is_leader", ())] == 0


def test_with_tracing_off_runs_are_counted_and_nothing_is_recorded() -> None:
    # The process-wide provider is never set in the unit tests: this is the no-op tracer.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    telemetry = Telemetry("replica-a")

    with pytest.raises(KeyError):
        with telemetry.job_run("tick", SLOT, 1, 0.0) as run:
            assert not trace.get_current_span().is_recording()
            raise KeyError("x")

    assert not run.span.is_recording()
    assert run.trace_id is None
    assert samples(telemetry)[("lightsched_job_runs_total", (("job_id", "tick"), ("outcome", "failed")))] == 1
