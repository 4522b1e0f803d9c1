"""OpenTelemetry traces, when an OTLP endpoint is configured (`TelemetrySettings`).

Each chat request is a trace: a SERVER span from the ASGI edge (`RequestSpan`, started and ended by the
access-log middleware, so a stream's span ends with its last byte), continuing the caller's W3C
`traceparent`, and one CLIENT child span per upstream attempt (`AttemptSpans`, the dispatcher's
`AttemptTracer`), from taking a deployment slot to ending it. Attributes follow the OpenTelemetry GenAI
and HTTP semantic conventions; prompt and completion text never go into a span. Each attempt's upstream
request carries the attempt span's W3C `traceparent` (and the caller's `tracestate`), as an instrumented
HTTP client's does, unless `LLM_PROPAGATE_TRACE_CONTEXT` is off; the access log line of a traced request
names its trace and SERVER span (`trace_id`, `span_id`), to go from a log line to its trace.

The tracer provider is this app's own, never the global one (several apps may live in one process). It
samples new traces by ratio and follows a caller's sampling decision (parent-based), and exports from a
batch processor's thread over OTLP/HTTP with protobuf bodies; the lifespan shuts it down, flushing what
is left. Without an endpoint the service never builds one (nor imports this module): the dispatcher has
no tracer and the middleware no span to start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextvars import Token
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.types import Scope

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings, VertexAISettings
from llm_service.core.llm.dispatch.attempt_trace import NO_HEADERS, AttemptOutcome
from llm_service.core.llm.models import LLMRequest, ProviderError

log = logging.getLogger("llm_service.tracing")

#: The routes whose requests are traced.
CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/chat/completions/stream"})
#: `gen_ai.provider.name` of each provider (the GenAI semantic conventions' well-known values).
GEN_AI_PROVIDER: dict[ProviderID, str] = {
    ProviderID.OPENAI: "openai",
    ProviderID.AZURE_OPENAI: "azure.ai.openai",
    ProviderID.VERTEX_AI: "gcp.vertex_ai",
    ProviderID.OPENROUTER: "openrouter",
    ProviderID.REMOTE: "remote",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_CHAT = "chat"


class Tracing:
    """This app's tracer provider and the two sources of spans: `request_span()` and `attempts`."""

    def __init__(self, settings: Settings, *, version: str) -> None:
        telemetry = settings.telemetry
        url = telemetry.traces_url()
        if url is None:
            raise ValueError("tracing needs an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)")
        # The timeout is given in seconds here; the setting is in milliseconds, as OpenTelemetry's env var.
        exporter = OTLPSpanExporter(
            endpoint=url, headers=telemetry.export_headers(), timeout=telemetry.otlp_timeout_ms / 1000
        )
        self._provider = TracerProvider(
            resource=Resource({SERVICE_NAME: telemetry.service_name, SERVICE_VERSION: version}),
            sampler=ParentBased(TraceIdRatioBased(telemetry.traces_sample_ratio)),
            shutdown_on_exit=False,  # the lifespan shuts it down; an atexit hook per app would pile up
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("llm_service", version)
        self._propagator = TraceContextTextMapPropagator()
        self.attempts = AttemptSpans(
            self._tracer, settings, self._propagator if telemetry.propagates_trace_context() else None
        )
        log.info(
            "tracing",
            extra={
                "fields": {
                    "traces_url": _without_credentials(url),
                    "service_name": telemetry.service_name,
                    "sample_ratio": telemetry.traces_sample_ratio,
                }
            },
        )

    def request_span(self, scope: Scope) -> RequestSpan | None:
        """The SERVER span of a chat request, current until `RequestSpan.end()`; None for other routes."""
        path = scope["path"]
        if path not in CHAT_PATHS or scope["method"] != "POST":
            return None
        carrier = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in _TRACE_HEADERS}
        parent = self._propagator.extract(carrier, Context())  # the caller's trace, or a new one
        span = self._tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "url.path": path,
                "http.route": path,
                "gen_ai.operation.name": _CHAT,
            },
        )
        return RequestSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    async def aclose(self) -> None:
        """Export what is left and stop the exporter (off the event loop: the export is blocking I/O)."""
        await asyncio.to_thread(self._provider.shutdown)


class RequestSpan:
    """A chat request's SERVER span, the current span (the attempts' parent) until it ends."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self._span = span
        self._token = token

    def ids(self) -> tuple[str, str]:
        """Its trace id and span id as W3C trace context writes them (32 and 16 lower-case hex digits)."""
        context = self._span.get_span_context()
        return format_trace_id(context.trace_id), format_span_id(context.span_id)

    def end(self, status: int, model: str | None, stream_error: str | None = None) -> None:
        """End it with the response status, the model the caller asked for (maybe an alias), and the error
        that ended a stream after its 200, if one did."""
        span = self._span
        otel_context.detach(self._token)
        if span.is_recording():
            if status:
                span.set_attribute("http.response.status_code", status)
            if model is not None:
                span.set_attribute("gen_ai.request.model", model)
            error = stream_error or (str(status) if status >= 500 else None)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR))
        span.end()


class AttemptSpans:
    """`AttemptTracer` with OpenTelemetry: a CLIENT span `chat {upstream model}` per upstream attempt, a
    child of the current (request) span; with a `propagator`, named to the upstream in its headers."""

    def __init__(self, tracer: Tracer, settings: Settings, propagator: TraceContextTextMapPropagator | None) -> None:
        self._tracer = tracer
        self._settings = settings
        self._propagator = propagator
        #: (address, port) by (provider, the deployment's own base URL): as many entries as the profile has.
        self._servers: dict[tuple[ProviderID, str | None], tuple[str, int] | None] = {}

    def attempt(self, deployment: Deployment, request: LLMRequest) -> AttemptSpan:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": _CHAT,
            "gen_ai.provider.name": GEN_AI_PROVIDER[deployment.provider],
            "gen_ai.request.model": deployment.model,
            "llm.deployment": deployment.label,
        }
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.top_p is not None:
            attributes["gen_ai.request.top_p"] = request.top_p
        server = self._server(deployment)
        if server is not None:
            attributes["server.address"], attributes["server.port"] = server
        span = self._tracer.start_span(f"chat {deployment.model}", kind=SpanKind.CLIENT, attributes=attributes)
        if self._propagator is None:
            return AttemptSpan(span, NO_HEADERS)
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))  # sampled or not: it follows
        return AttemptSpan(span, headers)

    def _server(self, deployment: Deployment) -> tuple[str, int] | None:
        key = (deployment.provider, deployment.base_url)
        if key not in self._servers:
            self._servers[key] = _address(_base_url(self._settings, deployment))
        return self._servers[key]


class AttemptSpan:
    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: Mapping[str, str]) -> None:
        self._span = span
        #: `traceparent` (and `tracestate`) naming this span to the upstream; empty when not propagated.
        self.headers = headers

    def end(self, outcome: AttemptOutcome) -> None:
        span = self._span
        if span.is_recording():
            _describe(span, outcome)
        span.end()


def _describe(span: Span, outcome: AttemptOutcome) -> None:
    error = outcome.error
    if error is not None:
        status = error.status if isinstance(error, ProviderError) else None
        span.set_attribute("error.type", str(status) if status is not None else type(error).__name__)
        code = getattr(error, "code", None)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__ + (f" ({code})" if code else "")))
        return
    if outcome.abandoned:
        span.set_attribute("error.type", "cancelled")
        span.set_status(Status(StatusCode.ERROR, "abandoned: the caller went away or the request's budget ran out"))
        return
    if outcome.response_id is not None:
        span.set_attribute("gen_ai.response.id", outcome.response_id)
    if outcome.response_model is not None:
        span.set_attribute("gen_ai.response.model", outcome.response_model)
    if outcome.finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", outcome.finish_reasons)
    if outcome.usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", outcome.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", outcome.usage.completion_tokens)


def _base_url(settings: Settings, deployment: Deployment) -> str | None:
    """Where the deployment's requests go: the GenAI Platform fronting it, else its own or its provider's URL."""
    platform = settings.genai_platform
    if platform.fronts(deployment.provider):
        return platform.base_url
    group = settings.deployment_settings(deployment)
    if isinstance(group, VertexAISettings):
        return group.api_root()
    return group.base_url if group is not None else None


def _address(url: str | None) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url or "")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


def _without_credentials(url: str) -> str:
    """A URL for a log line: a password in it (`https://user:pass@host`) is left out, with the user."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url
