"""Process-wide logging: one JSON object per line, or a readable line on a terminal.

Guarantees:
- JSON lines (python-json-logger) carry `ts` (ISO 8601 UTC), `level`, `logger`,
  `message`, `replica_id`, every `extra={...}` field, and `trace_id` /
  `span_id` (hex) when logged inside a recording span.
- URL passwords are masked in the message, in extra fields and in tracebacks;
  extra fields named like a password or secret are masked whole.
- `configure_logging` is idempotent: it replaces the handler it installed
  before and leaves other handlers alone. Uvicorn's loggers propagate to ours
  and its access log is off.

Does not guarantee: that third-party handlers installed elsewhere format the
same way, or that secrets in other shapes than URLs are masked.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from .redact import redact_text, redact_value

__all__ = ["LogFormat", "configure_logging", "unconfigure_logging"]

LogFormat = Literal["auto", "json", "console"]
_FORMATS: tuple[str, ...] = ("auto", "json", "console")
_MARK = "_lightsched_handler"
# Record attributes that are plumbing, not fields: the standard ones, ours, and
# uvicorn's ANSI-coloured duplicate of the message.
_NOT_FIELDS = frozenset(RESERVED_ATTRS) | {"taskName", "color_message", "trace_id", "span_id", "replica_id"}


class _TraceContextFilter(logging.Filter):
    """Adds `trace_id` / `span_id` of the current recording span to the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span()
        if span.is_recording():
            context = span.get_span_context()
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True


class _JsonLineFormatter(JsonFormatter):
    def __init__(self, replica_id: str) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"replica_id": replica_id},
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "color_message"],
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        # `ts` first so a human scanning raw lines finds it at once.
        log_data["ts"] = _iso_utc(record.created)
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return redact_value(log_data)  # type: ignore[no-any-return]


class _ConsoleFormatter(logging.Formatter):
    """`12:00:01.123 INFO  lightsched.leader: message key=value ... [trace 4bf92f35]`."""

    _COLOURS = {
        "DEBUG": "\x1b[2m",
        "INFO": "\x1b[32m",
        "WARNING": "\x1b[33m",
        "ERROR": "\x1b[31m",
        "CRITICAL": "\x1b[1;31m",
    }
    _RESET = "\x1b[0m"

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        level = f"{record.levelname:<7}"
        if self._colour:
            level = f"{self._COLOURS.get(record.levelname, '')}{level}{self._RESET}"
        parts = [clock, level, f"{record.name}:", redact_text(record.getMessage())]
        extras = {k: v for k, v in record.__dict__.items() if k not in _NOT_FIELDS and not k.startswith("_")}
        parts.extend(f"{key}={value}" for key, value in redact_value(extras).items())
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            parts.append(f"[trace {trace_id[:8]}]")
        line = " ".join(parts)
        if record.exc_info:
            line = f"{line}\n{redact_text(self.formatException(record.exc_info))}"
        elif record.exc_text:
            line = f"{line}\n{redact_text(record.exc_text)}"
        return line


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _level_number(level: str) -> int:
    names = logging.getLevelNamesMapping()
    number = names.get(str(level).upper())
    if number is None:
        raise ValueError(f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}")
    return number


def configure_logging(fmt: LogFormat, level: str, replica_id: str, *, stream: IO[str] | None = None) -> logging.Handler:
    """Install (or replace) the root handler; returns it. `stream` defaults to stderr.

    `auto` picks console when the stream is a terminal, else JSON.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"log format must be one of {', '.join(_FORMATS)}, got {fmt!r}")
    number = _level_number(level)
    out = stream if stream is not None else sys.stderr
    is_tty = bool(getattr(out, "isatty", lambda: False)())
    chosen = ("console" if is_tty else "json") if fmt == "auto" else fmt

    handler = logging.StreamHandler(out)
    handler.setFormatter(_ConsoleFormatter(colour=is_tty) if chosen == "console" else _JsonLineFormatter(replica_id))
    handler.addFilter(_TraceContextFilter())
    setattr(handler, _MARK, chosen)

    root = logging.getLogger()
    unconfigure_logging()
    root.addHandler(handler)
    root.setLevel(number)

    # Uvicorn runs with log_config=None (see health.serve_http); make sure records
    # reach our handler once and that per-request access lines stay off.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    return handler


def unconfigure_logging() -> None:
    """Remove the handler `configure_logging` installed, if any (tests, re-configuration)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, None):
            root.removeHandler(handler)
            handler.close()
