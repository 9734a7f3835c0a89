"""Observability for lightsched: structured logs, OpenTelemetry spans, Prometheus metrics, health HTTP.

A leaf package: it imports neither `scheduler`, `jobs` nor `leader`; the
scheduler hands it what to report. Names are exported lazily so that
importing `observability.telemetry` does not load uvicorn, and a replica
without tracing never loads the OpenTelemetry SDK or exporter.

- `observability.logs`: `configure_logging(fmt, level, replica_id)`.
- `observability.tracing`: `setup_tracing(replica_id) -> TracingHandle`, `instrument_redis(enabled)`.
- `observability.telemetry`: `Telemetry`, the metrics + spans facade.
- `observability.health`: the Starlette routes and `serve_http`.
- `observability.redact`: URL-password masking used by all of the above.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .health import (
        Check,
        HttpServerError,
        StatusProvider,
        create_health_app,
        health_router,
        health_routes,
        serve_http,
    )
    from .logs import configure_logging, unconfigure_logging
    from .redact import redact_text, redact_value
    from .telemetry import OUTCOMES, JobRunRecorder, Telemetry, UnknownOutcome
    from .tracing import TracingConfigError, TracingHandle, instrument_redis, setup_tracing

_EXPORTS = {
    "Check": "health",
    "HttpServerError": "health",
    "StatusProvider": "health",
    "create_health_app": "health",
    "health_router": "health",
    "health_routes": "health",
    "serve_http": "health",
    "configure_logging": "logs",
    "unconfigure_logging": "logs",
    "redact_text": "redact",
    "redact_value": "redact",
    "OUTCOMES": "telemetry",
    "JobRunRecorder": "telemetry",
    "Telemetry": "telemetry",
    "UnknownOutcome": "telemetry",
    "TracingConfigError": "tracing",
    "TracingHandle": "tracing",
    "instrument_redis": "tracing",
    "setup_tracing": "tracing",
}

__all__ = [
    "Check",
    "HttpServerError",
    "JobRunRecorder",
    "OUTCOMES",
    "StatusProvider",
    "Telemetry",
    "TracingConfigError",
    "TracingHandle",
    "UnknownOutcome",
    "configure_logging",
    "create_health_app",
    "health_router",
    "health_routes",
    "instrument_redis",
    "redact_text",
    "redact_value",
    "serve_http",
    "setup_tracing",
    "unconfigure_logging",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'observability' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
