"""A real OTLP/HTTP trace receiver on loopback, for end-to-end tracing tests.

`OtlpReceiver().start()` serves `POST /v1/traces` (protobuf, optionally gzip)
with Starlette on uvicorn in a background thread and returns the base endpoint
to put in `OTEL_EXPORTER_OTLP_ENDPOINT`. Each received span is kept as a plain
dict: name, kind, attributes (AnyValue decoded to Python), status_code
("UNSET" | "OK" | "ERROR"), status_message, events, resource (attributes),
scope, trace_id / span_id / parent_span_id (hex; parent None for roots).
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["OtlpReceiver", "SpanDict"]

SpanDict = dict[str, Any]
_PROTOBUF = "application/x-protobuf"


def decode_any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [decode_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: decode_any_value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _status_name(code: int) -> str:
    return str(Status.StatusCode.Name(code)).removeprefix("STATUS_CODE_")


def _span_dict(span: Span, resource: dict[str, Any], scope: str) -> SpanDict:
    return {
        "name": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "attributes": decode_attributes(span.attributes),
        "status_code": _status_name(span.status.code),
        "status_message": span.status.message,
        "events": [{"name": e.name, "attributes": decode_attributes(e.attributes)} for e in span.events],
        "resource": resource,
        "scope": scope,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
    }


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.endpoint = ""
        self.requests = 0
        self._spans: list[SpanDict] = []
        self._changed = threading.Condition()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception:  # a malformed body is the client's fault: answer like a collector
            return Response(b"malformed ExportTraceServiceRequest", status_code=400)
        received: list[SpanDict] = []
        for resource_spans in message.resource_spans:
            resource = decode_attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                received.extend(_span_dict(span, resource, scope_spans.scope.name) for span in scope_spans.spans)
        with self._changed:
            self.requests += 1
            self._spans.extend(received)
            self._changed.notify_all()
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=_PROTOBUF)

    def start(self, timeout_s: float = 10.0) -> str:
        """Start serving; returns the base endpoint (`http://127.0.0.1:PORT`)."""
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="off")
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:  # uvicorn exposes a flag, not an event
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"OTLP receiver did not start within {timeout_s} s")
            time.sleep(0.01)
        self.endpoint = f"http://{self.host}:{port}"
        return self.endpoint

    def spans(self) -> list[SpanDict]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[list[SpanDict]], Any], timeout_s: float = 10.0) -> list[SpanDict]:
        """Block until `predicate(all spans so far)` is truthy; returns the spans. Raises TimeoutError."""
        with self._changed:
            if self._changed.wait_for(lambda: predicate(list(self._spans)), timeout=timeout_s):
                return list(self._spans)
            names = sorted({span["name"] for span in self._spans})
        raise TimeoutError(f"spans did not satisfy the condition within {timeout_s} s; received names: {names}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
