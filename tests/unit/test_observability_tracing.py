"""observability.tracing: when export is on, what it costs when off, and spans arriving over real OTLP/HTTP.

Each test that installs the global tracer provider runs in a subprocess: the
provider can be set only once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability.tracing import TracingConfigError, TracingHandle, instrument_redis, tracing_export_enabled
from tests.support.otlp_receiver import OtlpReceiver, SpanDict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        # an unsupported protocol does not matter while export is off
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),
    ],
)
def test_export_is_on_only_when_configured(environ: dict[str, str], enabled: bool) -> None:
    assert tracing_export_enabled(environ) is enabled


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin' is not supported; lightsched exports with otlp (or none)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported; lightsched exports OTLP over HTTP "
            "(http/protobuf, usually port 4318)",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json' is not supported; lightsched exports OTLP over HTTP "
            "(http/protobuf, usually port 4318)",
        ),
    ],
)
def test_unsupported_choices_are_refused_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TracingConfigError) as excinfo:
        tracing_export_enabled(environ)
    assert str(excinfo.value) == message


def test_disabled_handle_shutdown_is_a_no_op_and_idempotent() -> None:
    handle = TracingHandle(enabled=False)
    handle.shutdown(timeout_s=0.1)
    handle.shutdown(timeout_s=0.1)
    assert not handle.enabled


def _child_env(**otel: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    env["PYTHONPATH"] = str(REPO)
    return env


def _run_child(code: str, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_without_configuration_no_provider_is_installed_and_sdk_and_exporter_stay_unloaded() -> None:
    report = _run_child(
        """
        import json, sys
        from datetime import UTC, datetime
        from opentelemetry import trace
        from observability.tracing import setup_tracing
        from observability.telemetry import Telemetry

        handle = setup_tracing("replica-a")
        telemetry = Telemetry("replica-a")
        telemetry.leadership_acquired(1)
        with telemetry.job_run("tick", datetime.now(UTC), 1, 0.0) as run:
            recording = trace.get_current_span().is_recording()
        handle.shutdown()
        print(json.dumps({
            "enabled": handle.enabled,
            "recording": recording,
            "proxy": isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider),
            "sdk": "opentelemetry.sdk.trace" in sys.modules,
            "exporter": any(m.startswith("opentelemetry.exporter") for m in sys.modules),
            "uvicorn": "uvicorn" in sys.modules,
        }))
        """,
        _child_env(),
    )
    assert report == {
        "enabled": False,
        "recording": False,
        "proxy": True,
        "sdk": False,
        "exporter": False,
        "uvicorn": False,
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def _named(spans: list[SpanDict], name: str) -> list[SpanDict]:
    return [span for span in spans if span["name"] == name]


def test_spans_arrive_over_otlp_http_with_attributes_resource_and_error_status(receiver: OtlpReceiver) -> None:
    report = _run_child(
        """
        import json
        from datetime import UTC, datetime
        from observability.tracing import setup_tracing
        from observability.telemetry import Telemetry

        handle = setup_tracing("replica-a")
        telemetry = Telemetry("replica-a")
        slot = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
        telemetry.leadership_acquired(7)
        with telemetry.job_run("tick", slot, 7, 0.004):
            pass
        try:
            with telemetry.job_run("report", slot, 7, 0.25, attempt=2):
                raise ConnectionError("redis://:hunter2@cache:6379 refused")
        except ConnectionError:
            pass
        telemetry.leadership_lost(7, "stalled")
        handle.shutdown(timeout_s=10)
        handle.shutdown(timeout_s=10)  # idempotent
        print(json.dumps({"enabled": handle.enabled}))
        """,
        _child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="billing-scheduler"),
    )
    assert report == {"enabled": True}

    spans = receiver.wait_for(
        lambda got: (
            {"job tick", "job report", "leadership acquired", "leadership lost"} <= {span["name"] for span in got}
        ),
        timeout_s=30,
    )
    [tick] = _named(spans, "job tick")
    assert tick["attributes"] == {
        "lightsched.job_id": "tick",
        "lightsched.scheduled_time": "2025-03-01T12:00:00+00:00",
        "lightsched.lateness_ms": 4.0,
        "lightsched.fencing_token": 7,
        "lightsched.replica_id": "replica-a",
        "lightsched.attempt": 1,
        "lightsched.manual": False,
        "lightsched.outcome": "success",
    }
    assert tick["status_code"] == "UNSET"
    assert tick["kind"] == "INTERNAL"
    assert tick["resource"]["service.name"] == "billing-scheduler"
    assert tick["resource"]["service.instance.id"] == "replica-a"

    [report_span] = _named(spans, "job report")
    assert report_span["status_code"] == "ERROR"
    assert report_span["status_message"] == "ConnectionError: redis://:***@cache:6379 refused"
    assert report_span["attributes"]["lightsched.outcome"] == "failed"
    assert report_span["attributes"]["lightsched.attempt"] == 2
    assert [event["name"] for event in report_span["events"]] == ["exception"]
    assert "hunter2" not in json.dumps(spans)

    [acquired] = _named(spans, "leadership acquired")
    assert acquired["attributes"] == {"lightsched.replica_id": "replica-a", "lightsched.fencing_token": 7}
    [lost] = _named(spans, "leadership lost")
    assert lost["attributes"]["lightsched.reason"] == "stalled"


def test_service_name_defaults_to_lightsched(receiver: OtlpReceiver) -> None:
    _run_child(
        """
        import json
        from observability.tracing import setup_tracing
        from observability.telemetry import Telemetry

        handle = setup_tracing("replica-b")
        Telemetry("replica-b").leadership_acquired(3)
        handle.shutdown(timeout_s=10)
        print(json.dumps({}))
        """,
        _child_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/v1/traces"),
    )
    [span] = receiver.wait_for(lambda got: _named(got, "leadership acquired"), timeout_s=30)
    assert span["resource"]["service.name"] == "lightsched"
    assert span["resource"]["service.instance.id"] == "replica-b"


def test_redis_commands_are_traced_only_while_instrumented(redis_url: str, key_prefix: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = redis.Redis.from_url(redis_url)
    try:
        instrument_redis(True, tracer_provider=provider)
        instrument_redis(True, tracer_provider=provider)  # idempotent
        client.set(f"{key_prefix}:k", "secret-value")
        instrument_redis(False)
        client.get(f"{key_prefix}:k")
    finally:
        instrument_redis(False)
        client.delete(f"{key_prefix}:k")
        client.close()

    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["SET"]
    assert "secret-value" not in str(dict(spans[0].attributes or {}))
