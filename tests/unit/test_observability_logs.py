"""observability.logs: JSON lines, console lines, trace ids, masking, idempotency."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider

from observability.logs import configure_logging, unconfigure_logging

log = logging.getLogger("lightsched.test")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    unconfigure_logging()
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in _lines(stream)]


def test_json_line_has_the_standard_fields_and_extras() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", "replica-a", stream=out)

    log.info("job %s done", "tick", extra={"event": "job.finished", "job_id": "tick", "duration_ms": 12.5})

    [line] = _json_lines(out)
    assert line["message"] == "job tick done"
    assert line["level"] == "INFO"
    assert line["logger"] == "lightsched.test"
    assert line["replica_id"] == "replica-a"
    assert line["event"] == "job.finished"
    assert line["job_id"] == "tick"
    assert line["duration_ms"] == 12.5
    ts = datetime.fromisoformat(str(line["ts"]))
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert "trace_id" not in line and "span_id" not in line


def test_json_line_inside_a_recording_span_carries_its_ids() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", "replica-a", stream=out)
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("job tick") as span:
        log.info("inside")
    log.info("outside")

    inside, outside = _json_lines(out)
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside


def test_level_filters_and_exceptions_are_one_json_object() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", "r", stream=out)

    log.info("dropped")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("run failed", extra={"event": "job.failed"})

    [line] = _json_lines(out)
    assert line["level"] == "ERROR"
    assert "ValueError: boom" in str(line["exc_info"])


def test_passwords_in_urls_and_secret_fields_are_masked() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", "r", stream=out)

    log.info(
        "connecting to redis://:hunter2@redis:6379/0",
        extra={"redis_url": "rediss://app:hunter2@redis:6380/1", "redis_password": "hunter2", "fencing_token": 9},
    )
    try:
        raise ConnectionError("cannot reach redis://:hunter2@redis:6379")
    except ConnectionError:
        log.exception("lost")

    raw = out.getvalue()
    assert "hunter2" not in raw
    first, second = _json_lines(out)
    assert first["message"] == "connecting to redis://:***@redis:6379/0"
    assert first["redis_url"] == "rediss://app:***@redis:6380/1"
    assert first["redis_password"] == "***"
    assert first["fencing_token"] == 9
    assert "redis://:***@redis:6379" in str(second["exc_info"])


def test_console_format_is_one_readable_line_with_extras() -> None:
    out = io.StringIO()
    configure_logging("console", "INFO", "r", stream=out)

    log.info("leadership acquired", extra={"event": "leader.acquired", "token": 7, "redis_url": "redis://:pw@h:1"})

    [line] = _lines(out)
    assert "INFO" in line and "lightsched.test: leadership acquired" in line
    assert "event=leader.acquired" in line and "token=7" in line
    assert "redis://:***@h:1" in line and ":pw@" not in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.parametrize(("stream", "expect_json"), [(io.StringIO(), True), (_Tty(), False)])
def test_auto_is_console_on_a_terminal_and_json_otherwise(stream: io.StringIO, expect_json: bool) -> None:
    configure_logging("auto", "INFO", "r", stream=stream)
    log.info("hello")
    [line] = _lines(stream)
    assert line.startswith("{") is expect_json


def test_configuring_twice_keeps_one_handler_and_the_latest_settings() -> None:
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)

    configure_logging("json", "INFO", "r1", stream=first)
    configure_logging("json", "DEBUG", "r2", stream=second)
    log.debug("once")

    assert len(root.handlers) == before + 1
    assert first.getvalue() == ""
    [line] = _json_lines(second)
    assert line["replica_id"] == "r2"


def test_uvicorn_records_reach_our_handler_and_access_lines_do_not() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", "r", stream=out)

    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1, extra={"color_message": "\x1b[36m"})
    logging.getLogger("uvicorn.access").info("GET /metrics 200")

    [line] = _json_lines(out)
    assert line["logger"] == "uvicorn.error"
    assert "color_message" not in line


@pytest.mark.parametrize(
    ("fmt", "level", "message"),
    [
        ("xml", "INFO", "log format must be one of auto, json, console, got 'xml'"),
        ("json", "LOUD", "log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
    ],
)
def test_bad_settings_are_refused_with_one_line_naming_them(fmt: str, level: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        configure_logging(fmt, level, "r", stream=io.StringIO())  # type: ignore[arg-type]
    assert str(excinfo.value) == message
