"""POST /v1/chat/completions (JSON, or SSE when `stream` is true) and /v1/chat/completions/stream.

The route reads the raw body once, parses it with orjson into the domain request, and hands it to
the dispatcher; the response goes back as OpenAI JSON or as SSE events ending in `data: [DONE]`. A
failure after the first streamed byte ends the stream with one error event, then `[DONE]`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import override

from llm_service.api.access_log import AccessRecord
from llm_service.api.body import BodyEnd, read_body
from llm_service.api.chat_schema import CHAT_OPENAPI, CHAT_STREAM_OPENAPI, RESUME_OPENAPI
from llm_service.api.errors import (
    INTERNAL_ERROR_BODY,
    JSONBytesResponse,
    RawHeaders,
    describe,
    error_body,
    error_response,
    json_response,
    raw_headers,
)
from llm_service.api.resume import DONE_EVENT, EventIds, SessionReader, StreamGone, parse_last_event_id
from llm_service.api.resume_store import open_stream
from llm_service.api.services import Services
from llm_service.api.sse import ClientGone, DisconnectWatch, SSEResponse
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatcher import ChunkStream, RoutedStream, UpstreamTime
from llm_service.core.llm.models import (
    InvalidRequestError,
    LLMChunk,
    LLMRequest,
    LLMServiceError,
    RequestTooLargeError,
)
from llm_service.core.llm.openai_format import encode_chat_chunk, encode_chat_response, parse_chat_request

log = logging.getLogger("llm_service.chat")
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
router = APIRouter()

STREAM_ID_HEADER = "x-llm-stream-id"
#: Logged for a client that went away before its response started (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


class ChatEndpoint:
    """POST /v1/chat/completions (or .../stream, which always streams) as a plain ASGI app.

    `GatewayApp` (main.py) serves these paths straight from here, inside the access log only: FastAPI's
    routing, dependency solving, `Request` objects and middleware stack cost about 200 µs a request in
    the benchmark's profile, more than everything the service itself does. The FastAPI routes below
    declare the same paths for the OpenAPI document and hand over to this when reached that way.
    """

    __slots__ = ("force_stream",)

    def __init__(self, *, force_stream: bool) -> None:
        self.force_stream = force_stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        access: AccessRecord = scope["state"]["access"]
        try:
            response = await _chat(scope, receive, services, access, force_stream=self.force_stream)
        except LLMServiceError as exc:
            access.error_code = exc.code
            response = error_response(exc)
        await response(scope, receive, send)


CHAT_ENDPOINTS = {
    "/v1/chat/completions": ChatEndpoint(force_stream=False),
    "/v1/chat/completions/stream": ChatEndpoint(force_stream=True),
}


class _Served(Response):
    """Hands a request the router reached over to a plain ASGI app (the body not yet read)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


@router.post("/v1/chat/completions", openapi_extra=CHAT_OPENAPI)
async def chat_completions(request: Request) -> Response:
    return _Served(CHAT_ENDPOINTS["/v1/chat/completions"])


@router.post("/v1/chat/completions/stream", openapi_extra=CHAT_STREAM_OPENAPI)
async def chat_completions_stream(request: Request) -> Response:
    return _Served(CHAT_ENDPOINTS["/v1/chat/completions/stream"])


async def _chat(
    scope: Scope, receive: Receive, services: Services, access: AccessRecord, *, force_stream: bool
) -> Response:
    # Reading, the upstream wait and the answer in one coroutine: every coroutine level a request
    # passes costs it again at each of its suspensions.
    try:
        body = await read_json_body(scope, receive, services.settings.server.max_body_bytes)
        llm_request = parse_chat_request(body, services.settings.request_limits)
        llm_request.stream = llm_request.stream or force_stream
        access.model, access.stream = llm_request.model, llm_request.stream
        if services.settings.telemetry.log_prompts:
            access.prompt = "\n".join(f"{m.role.value}: {m.text()}" for m in llm_request.messages)
        upstream_time = UpstreamTime()
        watch = DisconnectWatch(receive)
        if llm_request.stream:
            with watch:
                routed = await services.dispatcher.open_stream(llm_request, upstream_time)
            return await _stream_response(routed, services, llm_request, access, upstream_time, watch)
        with watch:
            deployment, response = await services.dispatcher.generate(llm_request, upstream_time)
    except ClientGone:  # before its body was read, or before its answer started
        access.error_code = "client_disconnected"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    facts = _note_deployment(access, deployment, services)
    access.record_usage(response.usage)
    for choice in response.choices:
        for call in choice.message.tool_calls:
            access.record_tool_call(call.id, call.provider_id)
    raw = (*facts, _overhead(access, upstream_time))
    # The upstream's own body when it already is the client's (LLMResponse.wire).
    wire = response.wire
    return JSONBytesResponse(wire if wire is not None else orjson.dumps(encode_chat_response(response)), 200, raw=raw)


async def _stream_response(
    routed: RoutedStream,
    services: Services,
    llm_request: LLMRequest,
    access: AccessRecord,
    upstream_time: UpstreamTime,
    watch: DisconnectWatch,
) -> Response:
    try:
        raw = (*_note_deployment(access, routed.deployment, services), _overhead(access, upstream_time))
        include_usage = llm_request.include_usage
        sessions = services.stream_sessions
        access.first_token()  # open_stream waited for it
        if sessions is None:
            events = ChatEvents(routed.chunks, include_usage=include_usage, access=access, event_ids=None)
            return SSEResponse(_then_done(events), {}, on_close=routed.chunks.aclose, watch=watch, raw=raw)
        session = sessions.start(
            lambda ids: ChatEvents(routed.chunks, include_usage=include_usage, access=access, event_ids=ids),
            shared=services.dispatcher.state_backend,
        )
    except BaseException:
        await routed.chunks.aclose()  # the stream holds a deployment slot and an upstream connection
        raise
    # The session owns the upstream now: a client that leaves may come back within the grace period.
    reader = session.read(-1)
    return SSEResponse(
        reader,
        {STREAM_ID_HEADER: session.key},
        on_close=reader.aclose,
        on_disconnect=reader.detach,
        watch=watch,
        raw=raw,
    )


@router.get("/v1/chat/completions/{stream_id}/stream", openapi_extra=RESUME_OPENAPI)
async def resume_stream(stream_id: str, request: Request) -> Response:
    """The events of a stream after the client's `Last-Event-ID` (or `?after=<index>`; neither: all of
    them), the live remainder, then `[DONE]`: from this replica, or from the stream log replicas share.
    404 for a stream not kept, 410 for events no longer kept."""
    services: Services = request.app.state.services
    sessions = services.stream_sessions
    if sessions is None:
        return _stream_gone("Stream resumption is turned off on this service (LLM_STREAM_RESUME_ENABLED).", 404)
    last = request.headers.get("last-event-id")
    after = request.query_params.get("after")
    try:
        index = parse_last_event_id(last, stream_id) if last else _index(after) if after is not None else -1
    except ValueError:
        raise InvalidRequestError(
            f"Last-Event-ID must be '{stream_id}:<index>' as this stream's events name themselves, and "
            "after= a whole number.",
            code="invalid_last_event_id",
            param="Last-Event-ID",
        ) from None
    try:
        events = await open_stream(sessions, services.dispatcher.state_backend, stream_id, index)
    except StreamGone as gone:
        return _stream_gone(str(gone), gone.status)
    on_disconnect = events.detach if isinstance(events, SessionReader) else None
    return SSEResponse(events, {STREAM_ID_HEADER: stream_id}, on_close=events.aclose, on_disconnect=on_disconnect)


def _index(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _stream_gone(message: str, status: int) -> Response:
    code = "stream_not_found" if status == 404 else "stream_expired"
    return json_response(status, error_body(message, "invalid_request_error", code=code))


class ChatEvents:
    """A stream's chunks as its SSE events, each named `<event_ids><index>` when given; one error event
    if the chunks fail. A `resume.EventSource`: the session reader awaits `items` itself and has each
    chunk `render`ed, so that a chunk passes no generator of its own on its way out (every async level
    costs again at every chunk); `_then_done` reads it the same way for a stream that cannot resume."""

    __slots__ = ("_access", "_ids", "_include_usage", "_index", "items")

    def __init__(self, chunks: ChunkStream, *, include_usage: bool, access: AccessRecord, event_ids: EventIds | None):
        self.items = chunks
        self._include_usage = include_usage
        self._access = access
        self._ids = event_ids
        self._index = 0

    def render(self, chunk: LLMChunk) -> bytes | None:
        """The chunk's event; None for one not sent (usage asked upstream for accounting only)."""
        access = self._access
        for choice in chunk.choices:
            if choice.tool_calls:
                for call in choice.tool_calls:
                    if call.id is not None:
                        access.record_tool_call(call.id, call.provider_id)
        if chunk.usage is not None:
            access.record_usage(chunk.usage)
            if not chunk.choices and not self._include_usage:
                return None
        # The upstream's own bytes when they already are the client's chunk (LLMChunk.wire).
        wire = chunk.wire
        return self._event(
            wire if wire is not None else orjson.dumps(encode_chat_chunk(chunk, include_usage=self._include_usage))
        )

    def failed(self, error: Exception) -> bytes:
        """The one event that ends a stream whose chunks raised `error`."""
        access = self._access
        if isinstance(error, LLMServiceError):
            _status, body, _headers = describe(error)
            access.stream_error = error.code or type(error).__name__
            return self._event(orjson.dumps(body))
        log.error("stream failed", exc_info=error, extra={"fields": {"request_id": access.request_id}})
        access.stream_error = "internal_error"
        return self._event(orjson.dumps(INTERNAL_ERROR_BODY))

    def _event(self, data: bytes) -> bytes:
        # One bytes formatting an event (concatenating its parts, or an id by f-string, cost a few µs more).
        index = self._index
        self._index = index + 1
        if self._ids is None:
            return b"data: %b\n\n" % data
        return b"%b%d\ndata: %b\n\n" % (self._ids, index, data)

    async def aclose(self) -> None:
        await self.items.aclose()


async def _then_done(events: ChatEvents) -> AsyncIterator[bytes]:
    """The events of a stream that cannot be resumed, then `[DONE]`."""
    try:
        async for chunk in events.items:
            event = events.render(chunk)
            if event is not None:
                yield event
    except Exception as error:
        yield events.failed(error)
    finally:
        await events.aclose()
    yield DONE_EVENT


def _note_deployment(access: AccessRecord, deployment: Deployment, services: Services) -> RawHeaders:
    """Notes the deployment that answered; its response headers."""
    provider, label, headers = _deployment_facts(deployment)
    access.provider, access.upstream_model = provider, deployment.model
    access.deployment = label
    access.metric_deployment = services.dispatcher.metric_label(deployment)
    return headers


def _overhead(access: AccessRecord, upstream_time: UpstreamTime) -> tuple[bytes, bytes]:
    """The gateway's own time so far (parsing, admission, queueing, encoding: all but the upstream
    calls), recorded for metrics and sent as a header."""
    access.overhead_ms = max(0.0, round((time.perf_counter() - access.started - upstream_time.seconds) * 1000, 2))
    return b"x-llm-gateway-overhead-ms", b"%.2f" % access.overhead_ms


@functools.lru_cache(maxsize=4096)
def _deployment_facts(deployment: Deployment) -> tuple[str, str, tuple[tuple[bytes, bytes], ...]]:
    """(provider, label, raw response headers) of a deployment, worked out once (its label parses a URL,
    the headers percent-encode and are encoded: a few µs a request otherwise)."""
    label = deployment.label
    headers = {
        "x-llm-provider": deployment.provider.value,
        "x-llm-model": _header_value(deployment.model),
        "x-llm-deployment": _header_value(label),
    }
    return deployment.provider.value, label, tuple(raw_headers(headers))


def _header_value(text: str) -> str:
    """Printable ASCII as it is, anything else percent-encoded: a model name is the caller's text."""
    return quote(text, safe=_HEADER_SAFE)


async def read_json_body(scope: Scope, receive: Receive, limit: int) -> object:
    """The parsed JSON body; 413 past `limit` bytes (checked before and while reading), 400 if not JSON."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _too_large(limit)
            break
    received, end = await read_body(receive, limit)
    if end is BodyEnd.DISCONNECTED:
        raise ClientGone
    if end is BodyEnd.TOO_LARGE:
        raise _too_large(limit)
    try:
        return orjson.loads(received)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
