"""Per-request id and the one structured access-log line each request produces.

Pure ASGI middleware, so a streamed response is logged when its last byte has gone, with its
duration and the tokens the stream reported. Routes fill in the `AccessRecord` found at
`request.state.access`. Prompt and completion text never go here. With tracing configured, the
request's SERVER span (`tracing.RequestSpan`) starts and ends here too, for the same reason.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_service.api.errors import internal_error_response
from llm_service.core.llm.models import Usage
from llm_service.logs import info_fields
from llm_service.metrics import Metrics

log = logging.getLogger("llm_service.access")
REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(init=False)
class AccessRecord:
    """What the access line of one request says. Made for every request with three fields and its start
    time set, the rest read from the class's defaults until a route sets them (a dataclass `__init__`
    set all 25: 82 bytecodes a request, against 12)."""

    request_id: str
    method: str
    path: str
    status: int = 0
    caller: str | None = None  # the caller's key, by its name or digest prefix (auth.py), never the key
    latency_ms: float = 0.0
    model: str | None = None
    provider: str | None = None
    deployment: str | None = None
    metric_deployment: str | None = field(default=None, repr=False)  # bounded name for metrics
    upstream_model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error_code: str | None = None
    stream_error: str | None = None
    prompt: str | None = None  # only when LLM_LOG_PROMPTS is on
    #: The tool calls answered: the id the client sees and the provider's own (None: it gave none).
    tool_calls: list[dict[str, str | None]] | None = None
    ttft_ms: float | None = None  # streams: until the first chunk was ready to go out
    overhead_ms: float | None = None  # the gateway's own time until the response started
    trace_id: str | None = None  # with tracing: the request's trace and SERVER span (tracing.RequestSpan)
    span_id: str | None = None
    started: float = field(default=0.0, repr=False)

    def __init__(self, request_id: str, method: str, path: str) -> None:
        self.request_id, self.method, self.path = request_id, method, path
        self.started = time.perf_counter()

    def first_token(self) -> None:
        self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def record_tool_call(self, call_id: str, provider_id: str | None) -> None:
        if self.tool_calls is None:
            self.tool_calls = []
        self.tool_calls.append({"id": call_id, "provider_id": provider_id})

    def record_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens
            self.total_tokens = usage.total_tokens


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or _new_request_id()
        record = AccessRecord(request_id=request_id, method=scope["method"], path=scope["path"])
        scope.setdefault("state", {})["access"] = record
        started = record.started
        services = getattr(scope["app"].state, "services", None) if "app" in scope else None
        tracing = services.tracing if services is not None else None
        span = tracing.request_span(scope) if tracing is not None else None
        if span is not None:
            record.trace_id, record.span_id = span.ids()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        # It does nothing to a body message: a streamed response may send those to `send` itself
        # (SSEResponse does: a coroutine call less a chunk).
        send_with_id.body_send = send  # type: ignore[attr-defined]

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            record.error_code = "internal_error"
            if record.status == 0:  # nothing sent yet: answer properly
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            record.latency_ms = round((time.perf_counter() - started) * 1000, 2)
            # Not dataclasses.asdict: it deep-copies every value (~50 µs a request in the benchmark's profile);
            # the values read in one call (`_LOGGED_VALUES`) rather than a getattr each, and the unset ones
            # left out in C (a comprehension ran ~180 bytecodes a request over the 20 fields).
            values = _LOGGED_VALUES(record)
            present = map(operator.is_not, values, _NONES)
            logged: dict[str, Any] = dict(itertools.compress(zip(_LOGGED, values, strict=True), present))
            info_fields(log, "request", logged)
            if services is not None and record.model is not None:
                record_request_metrics(services.metrics, record)
            if span is not None:
                span.end(record.status, record.model, record.stream_error)


_LOGGED = tuple(f.name for f in fields(AccessRecord) if f.name not in {"started", "metric_deployment"})
_LOGGED_VALUES = operator.attrgetter(*_LOGGED)
_NONES = (None,) * len(_LOGGED)


def record_request_metrics(metrics: Metrics, record: AccessRecord) -> None:
    """One chat request's outcome, duration, time to first token and tokens."""
    metrics.request_outcome(
        record.provider or "",
        record.metric_deployment or "",
        str(record.status) if not record.stream_error else "stream_error",
        bool(record.stream),
        seconds=record.latency_ms / 1000,
        ttft=record.ttft_ms / 1000 if record.ttft_ms is not None else None,
        overhead=record.overhead_ms / 1000 if record.overhead_ms is not None else None,
        tokens_in=record.prompt_tokens,
        tokens_out=record.completion_tokens,
    )


#: Request ids: this process's random prefix and a counter (unique across replicas and restarts with
#: 64 random bits; uuid4 per request cost about 5 µs).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_ID.match(text) else None
    return None
