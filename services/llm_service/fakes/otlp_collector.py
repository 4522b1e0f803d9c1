"""A fake OpenTelemetry collector: the OTLP/HTTP traces receiver, on a loopback port.

:class:`FakeOTLPCollector` accepts ``POST /v1/traces`` with an ``application/x-protobuf`` body, decodes
it as an ``ExportTraceServiceRequest`` (the real OTLP protobuf schema), records every span as a
:class:`ReceivedSpan` and answers 200 with an empty ``ExportTraceServiceResponse``, as a collector does.
Any other path is recorded and answered 404; another content type 415; a body that does not decode 400.
``requests`` logs each export (path, headers), so a test can check what the exporter sent.

Start it in the test's event loop (``await collector.start()``) or in a thread with
:class:`~llm_service.fakes.threaded.ServerThread`; :meth:`FakeOTLPCollector.wait_for_spans` waits from
another thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded. Ids are lower-case hex (a root span's `parent_span_id` is "")."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class ExportRequest:
    """One request the collector received. Header names are lower-cased."""

    path: str
    headers: dict[str, str]
    spans: int


class FakeOTLPCollector:
    """Records the spans exported to it; thread-safe to read and wait on from another thread."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests: list[ExportRequest] = []
        self._changed = threading.Condition()
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = any free port) inside the running event loop."""
        if self._runner is not None:
            raise RuntimeError("FakeOTLPCollector already started")
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        url_host = f"[{host}]" if ":" in host else host
        self._origin = f"http://{url_host}:{int(runner.addresses[0][1])}"

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the base URL to give as OTEL_EXPORTER_OTLP_ENDPOINT."""
        if self._origin is None:
            raise RuntimeError("FakeOTLPCollector not started")
        return self._origin

    def reset(self) -> None:
        with self._changed:
            self.spans.clear()
            self.requests.clear()

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` spans arrived (from another thread than the collector's)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.spans) >= count, timeout)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in the order they started."""
        with self._changed:
            return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {key.lower(): value for key, value in request.headers.items()}
        spans: list[ReceivedSpan] = []
        try:
            if request.path != TRACES_PATH:
                return web.Response(status=404, text=f"no receiver at {request.path}")
            if request.content_type != PROTOBUF:
                return web.Response(status=415, text=f"expected {PROTOBUF}, got {request.content_type}")
            try:
                spans = decode_spans(body)
            except DecodeError as exc:
                return web.Response(status=400, text=f"not an ExportTraceServiceRequest: {exc}")
        finally:
            with self._changed:
                self.requests.append(ExportRequest(request.path, headers, len(spans)))
                self.spans.extend(spans)
                self._changed.notify_all()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)


def decode_spans(body: bytes) -> list[ReceivedSpan]:
    """Every span of an OTLP ``ExportTraceServiceRequest``, with its resource and scope."""
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    found: list[ReceivedSpan] = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            found += [_span(span, resource, scope_spans.scope.name) for span in scope_spans.spans]
    return found


def _span(span: Span, resource: dict[str, Any], scope: str) -> ReceivedSpan:
    return ReceivedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=_attributes(span.attributes),
        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        status_message=span.status.message,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        resource=resource,
        scope=scope,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        found[pair.key] = _value(pair.value)
    return found


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return bytes(value.bytes_value)
    return getattr(value, kind) if kind else None
