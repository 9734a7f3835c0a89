"""The process's OpenTelemetry tracer provider, installed only when export is configured.

Guarantees:
- Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER=otlp`;
  it is off when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
  Unsupported choices (another exporter, OTLP over gRPC) are refused with a
  one-line `TracingConfigError` naming the variable.
- When off, no provider is installed and neither the SDK nor the OTLP exporter
  is imported: spans come from the API's no-op tracer and cost a context switch.
- When on: a `TracerProvider` with `service.name` (`OTEL_SERVICE_NAME`, else
  `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the argument, else
  "lightsched") and `service.instance.id` = replica id; an OTLP/HTTP exporter
  configured by the standard `OTEL_EXPORTER_OTLP_*` variables; a batch span
  processor. `TracingHandle.shutdown` flushes and stops it within its timeout,
  and is idempotent; it also runs at interpreter exit.

Reading the standard `OTEL_*` variables here is the one place a lightsched
module reads the environment: the OpenTelemetry SDK reads them anyway.

Does not guarantee: delivery. Spans that cannot be exported in time are
dropped (the SDK logs why); the scheduler never waits on a collector.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from .redact import redact_text

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "TracingConfigError",
    "TracingHandle",
    "instrument_redis",
    "setup_tracing",
    "tracing_export_enabled",
]

log = logging.getLogger("lightsched.tracing")

DEFAULT_SERVICE_NAME = "lightsched"
_SUPPORTED_PROTOCOL = "http/protobuf"
_installed: TracingHandle | None = None
_install_lock = threading.Lock()


class TracingConfigError(ValueError):
    """An `OTEL_*` variable asks for something lightsched cannot do; the message names it."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_export_enabled(environ: Mapping[str, str]) -> bool:
    """Whether these `OTEL_*` variables turn span export on; raises `TracingConfigError` if unsupported."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return False
    exporters_raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    exporters = {name.strip() for name in exporters_raw.split(",") if name.strip()}
    unsupported = exporters - {"otlp", "none"}
    if unsupported:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={exporters_raw!r} is not supported; lightsched exports with otlp (or none)"
        )
    if "otlp" in exporters:
        enabled = True
    elif exporters == {"none"}:
        return False
    else:
        enabled = bool(
            environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        )
    if enabled:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(variable, "").strip().lower()
            if protocol:
                if protocol != _SUPPORTED_PROTOCOL:
                    raise TracingConfigError(
                        f"{variable}={protocol!r} is not supported; lightsched exports OTLP over HTTP "
                        f"({_SUPPORTED_PROTOCOL}, usually port 4318)"
                    )
                break
    return enabled


class TracingHandle:
    """What `setup_tracing` installed; `shutdown` flushes and stops it."""

    def __init__(self, enabled: bool, provider: TracerProvider | None = None, *, owned: bool = True) -> None:
        self.enabled = enabled
        self.provider = provider
        self._owned = owned
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TracingHandle(enabled={self.enabled}, closed={self._closed})"

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered and stop the exporter, waiting at most `timeout_s`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._shutdown_at_exit)
        provider = self.provider
        if provider is None:
            return

        def close() -> None:
            try:
                provider.force_flush(int(timeout_s * 1000))
                if self._owned:
                    provider.shutdown()
            except Exception:  # the exporter's own errors must not break the scheduler's shutdown
                log.exception("tracing shutdown failed", extra={"event": "tracing.shutdown_failed"})

        # A dead collector makes the exporter retry for its own timeout; bound our wait in a thread.
        try:
            worker = threading.Thread(target=close, name="lightsched-tracing-shutdown", daemon=True)
            worker.start()
        except RuntimeError:  # no new threads during interpreter shutdown
            close()
            return
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning(
                "tracing shutdown did not finish in %.1f s; unsent spans are dropped",
                timeout_s,
                extra={"event": "tracing.shutdown_timeout", "timeout_s": timeout_s},
            )

    def _shutdown_at_exit(self) -> None:
        self.shutdown()


def setup_tracing(replica_id: str, *, service_name: str | None = None) -> TracingHandle:
    """Install the global tracer provider if `OTEL_*` variables configure export.

    Called twice, it returns the first handle: the global provider can be set once per process.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        if not tracing_export_enabled(os.environ):
            log.debug("tracing off: no OTLP endpoint configured", extra={"event": "tracing.disabled"})
            return TracingHandle(enabled=False)
        current = trace.get_tracer_provider()
        if not isinstance(current, trace.ProxyTracerProvider):
            # Someone (e.g. `opentelemetry-instrument`) installed a provider: use it, flush it, don't stop it.
            log.info("tracing through the tracer provider already installed", extra={"event": "tracing.external"})
            _installed = TracingHandle(enabled=True, provider=current, owned=False)  # type: ignore[arg-type]
        else:
            _installed = _install_provider(replica_id, service_name)
        atexit.register(_installed._shutdown_at_exit)
        return _installed


def _install_provider(replica_id: str, service_name: str | None) -> TracingHandle:
    # Imported here so that a replica without tracing never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {SERVICE_INSTANCE_ID: replica_id}
    if SERVICE_NAME not in OTELResourceDetector().detect().attributes:
        attributes[SERVICE_NAME] = service_name or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"
    )
    log.info(
        "tracing on: exporting spans over OTLP/HTTP to %s",
        redact_text(endpoint),
        extra={
            "event": "tracing.enabled",
            "service_name": provider.resource.attributes.get(SERVICE_NAME),
        },
    )
    return TracingHandle(enabled=True, provider=provider)


def instrument_redis(enabled: bool, *, tracer_provider: Any = None) -> None:
    """Trace every Redis command (sanitised: `SET ? ?`) when `enabled`; otherwise undo it if done.

    The instrumentation module is imported only when enabled. `tracer_provider`
    defaults to the global one (tests pass their own).
    """
    if not enabled:
        module = sys.modules.get("opentelemetry.instrumentation.redis")
        if module is not None and module.RedisInstrumentor().is_instrumented_by_opentelemetry:
            module.RedisInstrumentor().uninstrument()
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider)
