"""Fake OpenAI Chat Completions upstream (plain OpenAI, or its OpenRouter or Azure OpenAI flavour).

An aiohttp.web server that replays fixture files byte for byte, records every request it
receives and misbehaves on demand (see :class:`~llm_service.fakes.faults.Fault`). The test
suite points the real gateway at it over HTTP; the gateway's demo mode starts it inside its
own event loop when no provider keys are configured.

:class:`LoopbackChatFake` holds what every chat fake shares (lifecycle, request log, fault
queue, hang-up bookkeeping, the fault-aware stream writer); :class:`FakeUpstream` and the
Vertex fake (:mod:`.vertex_upstream`) add their provider's routes and bodies.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict
from typing_extensions import override

from .continuation import PREFIX_NOT_CONTINUABLE, continue_completion, continue_events, prefill_refused
from .faults import Fault, FaultQueue
from .tool_call_rules import DEFAULT_RULES, TOOL_CALL_ID_RULES, ToolCallIdRule, check_tool_call_ids
from .wire import (
    AZURE_ACCESS_DENIED,
    AZURE_DEPLOYMENT_NOT_FOUND,
    AZURE_RESOURCE_NOT_FOUND,
    AZURE_TOKEN_REJECTED,
    DEFAULT_FIXTURES_DIR,
    DONE,
    FIXTURE_DIRS,
    FLAVORS,
    FixtureSet,
    Flavor,
    SseEvent,
    bad_request,
    choose_scenario,
    continuation_prefix,
    ends_with_assistant,
    generic_error,
    invalid_json_body,
    midstream_error_event,
    normalize_prefix,
    openai_error,
    openrouter_error,
    split_for_writes,
    strip_usage,
    unauthorized_body,
    validate_chat_body,
    wants_usage,
)

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
# Pause between the pieces of a split event, so they leave as separate TCP segments
# instead of being coalesced back into one read on the client side.
SPLIT_PAUSE = 0.002
# Pause between the last event before a ``drop_after_chunks`` cut and the cut itself, so that the
# client reads those events before it learns of the close: aiohttp, for one, discards what it has
# buffered but not yet handed out once the connection is lost, which would move the cut earlier.
HANG_UP_PAUSE = 0.02

# What :meth:`LoopbackChatFake._record` returns for a body that is not JSON.
NOT_JSON = object()


@dataclass
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, or None when absent or not valid JSON


@dataclass(frozen=True)
class StreamPiece:
    """One write of a streamed body. ``kind`` says how faults see it: an ``event`` counts
    towards ``drop_after_chunks``/``error_event_after_chunks``; an ``end`` piece ([DONE], a
    closing bracket) does not count but a due fault still strikes before it; ``extra`` pieces
    (comments) are written as they come."""

    data: bytes
    kind: Literal["event", "end", "extra"] = "event"


class LoopbackChatFake(ABC):
    """What every chat fake shares: start/stop on a loopback port, the request log, the fault
    queue, client hang-up bookkeeping and a fault-aware stream writer.

    Subclasses add their routes (:meth:`_add_routes`) and say where their base URL points
    (:meth:`_url_path`). ``crlf`` switches SSE line endings to CRLF, ``split_writes`` cuts every
    streamed piece into 2-3 writes, and ``chunk_delay`` paces streams when no fault says
    otherwise (demo mode uses it to look like a real model).
    """

    def __init__(self, fixtures: FixtureSet, *, crlf: bool, split_writes: bool, chunk_delay: float) -> None:
        self.fixtures = fixtures
        self.crlf = crlf
        self.split_writes = split_writes
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self.stream_disconnects = 0
        self.active_streams = 0
        # Set on every client hang-up mid-stream; the condition supports waiting for counts.
        self.disconnected = threading.Event()
        self._disconnect_cond = threading.Condition()
        self._disconnect_signal: asyncio.Event | None = None  # wakes async waiters (same loop)
        self._faults = FaultQueue()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._port: int | None = None
        self._closing = False

    # ------------------------------------------------------------------ subclass hooks

    @abstractmethod
    def _add_routes(self, app: web.Application) -> None:
        """Register the fake's routes on `app`."""

    def _url_path(self) -> str:
        """Path appended to ``http://host:port`` to form :attr:`url`."""
        return ""

    @abstractmethod
    def _generic_error(self, status: int) -> bytes:
        """The error body for a faulted status that has no ``error_<status>.json`` fixture."""

    def _check_fault(self, fault: Fault) -> None:
        """Reject, at :meth:`inject` time, a fault naming a fixture this fake does not have."""
        if fault.fixture is not None and fault.status is None:
            self.fixtures.answer_for("text", fault.fixture)  # raises for an unknown fixture

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = any free port) inside the running event loop."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        app = web.Application()
        self._add_routes(app)
        # handler_cancellation: aiohttp only cancels a handler whose client went away when
        # asked to, and that cancellation is how a hang-up mid-stream is noticed.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._closing = False
        self._port = int(runner.addresses[0][1])
        url_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{url_host}:{self._port}{self._url_path()}"

    async def close(self) -> None:
        if self._runner is None:
            return
        self._closing = True  # handlers cancelled by the shutdown are not client hang-ups
        runner, self._runner = self._runner, None
        await runner.cleanup()

    @property
    def url(self) -> str:
        """The base URL a client is configured with (see the subclass for what it includes)."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._url

    @property
    def fixtures_dir(self) -> Path:
        """The directory holding one fixture sub-directory per provider."""
        return self.fixtures.root

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._port

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next chat request(s). Safe to call from any thread."""
        self._check_fault(fault)
        self._faults.put(fault)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def reset(self) -> None:
        """Forget recorded requests, queued faults and disconnect counts."""
        self.requests.clear()
        self._faults.clear()
        with self._disconnect_cond:
            self.stream_disconnects = 0
            self.disconnected.clear()

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:
        """Block until at least ``count`` client hang-ups mid-stream were seen in total.

        For other threads only: calling it on the fake's own event loop would block the loop.
        """
        with self._disconnect_cond:
            return self._disconnect_cond.wait_for(lambda: self.stream_disconnects >= count, timeout)

    async def wait_for_disconnect_async(self, count: int = 1) -> None:
        """Event-loop friendly variant of :meth:`wait_for_disconnect`; bound it with
        ``asyncio.timeout``."""
        while self.stream_disconnects < count:
            if self._disconnect_signal is None:
                self._disconnect_signal = asyncio.Event()
            await self._disconnect_signal.wait()

    # ------------------------------------------------------------------ shared handling

    @property
    def _newline(self) -> bytes:
        return b"\r\n" if self.crlf else b"\n"

    async def _take_fault(self) -> Fault | None:
        """Consume the next fault and sit out its ``delay_before_headers``."""
        fault = self._faults.take()
        if fault is not None and fault.delay_before_headers > 0:
            try:
                await asyncio.sleep(fault.delay_before_headers)
            except asyncio.CancelledError:
                # The client hung up before the headers: count it like a hang-up mid-stream.
                if not self._closing:
                    self._note_disconnect()
                raise
        return fault

    def _fault_error_body(self, fault: Fault) -> bytes:
        if fault.body is not None:
            return fault.body
        assert fault.status is not None
        fixture = self.fixtures.errors.get(fault.fixture or f"error_{fault.status}")
        return fixture if fixture is not None else self._generic_error(fault.status)

    async def _truncated(self, request: web.Request, body: bytes, headers: CIMultiDict[str]) -> web.StreamResponse:
        """Announce the full length, send half, hang up: a truncated non-stream body."""
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._hang_up(request)
        return response

    async def _stream(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        pieces: Sequence[StreamPiece],
        fault: Fault | None,
        error_piece: bytes,
    ) -> web.StreamResponse:
        """Write ``pieces`` as a chunked body, applying the fault's drop / mid-stream error /
        pacing. ``error_piece`` is what a due ``error_event_after_chunks`` writes before the
        stream ends cleanly."""
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.active_streams += 1
        try:
            if await self._write_pieces(request, response, pieces, fault, error_piece):
                await response.write_eof()
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client disconnects (handler_cancellation).
            if not self._closing:
                self._note_disconnect()
            raise
        except ConnectionError:
            # A write to a connection the client already closed (ConnectionResetError or
            # aiohttp's ClientConnectionResetError, both ConnectionErrors).
            self._note_disconnect()
        finally:
            self.active_streams -= 1
        return response

    async def _write_pieces(
        self,
        request: web.Request,
        response: web.StreamResponse,
        pieces: Sequence[StreamPiece],
        fault: Fault | None,
        error_piece: bytes,
    ) -> bool:
        """Write the pieces; False when the connection was cut (no clean end to write)."""
        drop_after = fault.drop_after_chunks if fault is not None else None
        error_after = fault.error_event_after_chunks if fault is not None else None
        delay = fault.delay_per_chunk if fault is not None and fault.delay_per_chunk else self.chunk_delay
        sent = 0  # events written
        # A trailing None stands for the end of the body, where a due fault still strikes.
        for position, piece in enumerate([*pieces, None]):
            if piece is None or piece.kind != "extra":
                if drop_after is not None and sent >= drop_after:
                    await asyncio.sleep(HANG_UP_PAUSE)
                    self._hang_up(request)
                    return False
                if error_after is not None and sent >= error_after:
                    await self._write_event(response, error_piece)
                    return True
            if piece is None:
                break
            if position and delay > 0:
                await asyncio.sleep(delay)
            await self._write_event(response, piece.data)
            sent += piece.kind == "event"
        return True

    async def _write_event(self, response: web.StreamResponse, data: bytes) -> None:
        if not self.split_writes:
            await response.write(data)
            return
        for index, piece in enumerate(split_for_writes(data)):
            if index:
                await asyncio.sleep(SPLIT_PAUSE)
            await response.write(piece)

    def _record(self, request: web.Request, raw: bytes) -> Any:
        """Append the request to :attr:`requests` (before any response) and return the parsed
        body, or the ``NOT_JSON`` marker when it is not JSON."""
        parsed: Any
        try:
            parsed = orjson.loads(raw) if raw else NOT_JSON
        except orjson.JSONDecodeError:
            parsed = NOT_JSON
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=headers,
                body=raw,
                json=None if parsed is NOT_JSON else parsed,
            )
        )
        return parsed

    def _hang_up(self, request: web.Request) -> None:
        """Close the connection without finishing the response. ``close`` (unlike ``abort``)
        still flushes what was written, so the client gets exactly the events sent so far
        followed by EOF in the middle of the chunked body."""
        transport = request.transport
        if transport is not None:
            transport.close()

    def _note_disconnect(self) -> None:
        with self._disconnect_cond:
            self.stream_disconnects += 1
            self.disconnected.set()
            self._disconnect_cond.notify_all()
        if self._disconnect_signal is not None:
            self._disconnect_signal.set()
            self._disconnect_signal = None


class FakeUpstream(LoopbackChatFake):
    """An OpenAI-compatible upstream on a loopback port, driven by fixtures and faults.

    Flavours: ``openai``, ``openrouter`` and ``remote`` (a vLLM server) serve ``POST /v1/chat/completions``
    (and ``GET /v1/models``) with ``Authorization: Bearer <api_key>``; :attr:`url` ends in ``/v1``.
    ``remote`` replays the ``openai/`` fixtures and continues a final assistant message when asked
    with vLLM's ``continue_final_message`` (see ``tests/fixtures/README.md``).
    ``azure_openai`` serves ``POST {path_prefix}/openai/deployments/{deployment}/chat/completions
    ?api-version=...`` for the names in ``deployments``, accepting ``api-key: <api_key>`` or
    ``Authorization: Bearer <bearer_token>`` (an Entra ID token); its :attr:`url` is
    ``http://host:port{path_prefix}``, what a user sets as ``AZURE_OPENAI_ENDPOINT``.
    ``api_key=None`` (and no ``bearer_token``) turns authentication off. ``bearer_token``,
    ``deployments`` and ``path_prefix`` matter to ``azure_openai`` only.

    ``tool_call_ids`` picks the rule the fake holds tool-call ids and call/result pairs to
    (:mod:`.tool_call_rules`): ``openai`` (default for ``openai`` and ``azure_openai``: at most 40
    characters, every call answered, every result answering a call), ``alnum9`` (Mistral: exactly 9
    letters and digits) or ``none`` (default for ``openrouter`` and ``remote``).

    ``fixtures_dir`` is the directory holding one sub-directory per flavour (default: the
    repository's ``tests/fixtures``).
    """

    def __init__(
        self,
        flavor: Flavor = "openai",
        *,
        api_key: str | None = "test-key",
        bearer_token: str | None = None,
        deployments: Sequence[str] = ("gpt-4o-mini",),
        path_prefix: str = "",
        fixtures_dir: Path | None = None,
        crlf: bool = False,
        split_writes: bool = False,
        chunk_delay: float = 0.0,
        tool_call_ids: ToolCallIdRule | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}")
        if tool_call_ids is not None and tool_call_ids not in TOOL_CALL_ID_RULES:
            raise ValueError(f"unknown tool_call_ids rule {tool_call_ids!r}")
        fixtures = FixtureSet(FIXTURE_DIRS[flavor], fixtures_dir or DEFAULT_FIXTURES_DIR)
        super().__init__(fixtures, crlf=crlf, split_writes=split_writes, chunk_delay=chunk_delay)
        self.flavor: Flavor = flavor
        self.api_key = api_key
        self.bearer_token = bearer_token
        self.deployments = tuple(deployments)
        self.path_prefix = normalize_prefix(path_prefix)
        self.tool_call_ids: ToolCallIdRule = tool_call_ids or DEFAULT_RULES[flavor]

    # ------------------------------------------------------------------ hooks

    @override
    def _add_routes(self, app: web.Application) -> None:
        if self.flavor == "azure_openai":
            route = f"{self.path_prefix}/openai/deployments/{{deployment}}/chat/completions"
            app.router.add_post(route, self._handle_azure_chat)
        else:
            app.router.add_post("/v1/chat/completions", self._handle_chat)
            app.router.add_get("/v1/models", self._handle_models)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)

    @override
    def _url_path(self) -> str:
        return self.path_prefix if self.flavor == "azure_openai" else "/v1"

    @override
    def _generic_error(self, status: int) -> bytes:
        return generic_error(self.flavor, status)

    # ------------------------------------------------------------------ handlers

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        parsed = self._record(request, await request.read())
        return await self._serve_chat(request, parsed, self._check_auth(request))

    async def _handle_azure_chat(self, request: web.Request) -> web.StreamResponse:
        parsed = self._record(request, await request.read())
        if not request.query.get("api-version"):
            # Azure routes on api-version: without it the operation does not exist.
            return self._error(404, AZURE_RESOURCE_NOT_FOUND, {})
        denied = self._check_azure_auth(request)
        if denied is None and request.match_info["deployment"] not in self.deployments:
            return await self._serve_chat(request, parsed, (404, AZURE_DEPLOYMENT_NOT_FOUND))
        return await self._serve_chat(request, parsed, None if denied is None else (401, denied))

    async def _serve_chat(
        self, request: web.Request, parsed: Any, denied: tuple[int, bytes] | None
    ) -> web.StreamResponse:
        """The chat answer once the route matched: faults first (as a real outage precedes any
        validation), then the refusal ``denied`` if any, then body checks, then the fixture."""
        fault = await self._take_fault()
        extra = fault.headers if fault is not None else {}
        if fault is not None and fault.status is not None:
            return self._error(fault.status, self._fault_error_body(fault), extra)
        if denied is not None:
            return self._error(denied[0], denied[1], extra)
        if parsed is NOT_JSON or not isinstance(parsed, dict):
            return self._error(400, invalid_json_body(self.flavor), extra)
        rejection = validate_chat_body(self.flavor, parsed) or check_tool_call_ids(
            self.flavor, self.tool_call_ids, parsed["messages"]
        )
        if rejection is None and fault is not None and fault.reject_assistant_prefix and ends_with_assistant(parsed):
            rejection = prefill_refused(self.flavor)
        if rejection is not None:
            return self._error(400, rejection, extra)
        answer = self.fixtures.answer_for(choose_scenario(parsed), fault.fixture if fault is not None else None)
        stream = parsed.get("stream") is True
        # vLLM continues the final assistant message: only the rest of the answer is sent.
        prefix = continuation_prefix(parsed) if self.flavor == "remote" else None
        content = self._stream_pieces(answer, parsed, prefix) if stream else self._completion(answer, prefix)
        if content is None:
            return self._error(400, bad_request(self.flavor, PREFIX_NOT_CONTINUABLE, "messages"), extra)
        headers = self._headers(request, answer, SSE_TYPE if stream else JSON_TYPE, extra)
        if fault is not None and fault.body is not None:
            return web.Response(body=fault.body, headers=headers)
        if isinstance(content, list):
            return await self._stream(request, headers, content, fault, self._error_event(answer))
        if fault is None or fault.drop_after_chunks is None:
            return web.Response(body=content, headers=headers)
        return await self._truncated(request, content, headers)

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        self._record(request, await request.read())
        # OpenRouter's model list is public; OpenAI's (and a vLLM's started with --api-key) needs the key.
        denied = self._check_auth(request) if self.flavor in ("openai", "remote") else None
        if denied is not None:
            return self._error(401, denied[1], {})
        return web.Response(body=self.fixtures.models, headers=self._headers(request, None, JSON_TYPE, {}))

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        self._record(request, await request.read())
        if self.flavor == "openrouter":
            body = openrouter_error(404, "Not Found")
        elif self.flavor == "azure_openai":
            body = AZURE_RESOURCE_NOT_FOUND
        elif self.flavor == "remote":
            body = b'{"detail":"Not Found"}'  # FastAPI's own 404
        else:
            body = openai_error(f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        return self._error(404, body, {})

    # ------------------------------------------------------------------ responses

    def _stream_pieces(self, answer: str, body: dict[str, Any], prefix: str | None) -> list[StreamPiece] | None:
        """The stream's writes; None when ``prefix`` (a continuation's) does not start the answer."""
        events = self.fixtures.streams[answer]
        if prefix is not None:
            continued = continue_events(events, prefix)
            if continued is None:
                return None
            events = continued
        # OpenRouter always reports usage (include_usage is deprecated there); OpenAI, Azure and vLLM
        # only when asked. vLLM leaves unset fields out: no "usage": null on the other chunks.
        if self.flavor == "remote":
            events = strip_usage(events, keep_usage_chunk=wants_usage(body, self.flavor))
        elif self.flavor != "openrouter" and not wants_usage(body):
            events = strip_usage(events)
        return [StreamPiece(event.render(self._newline), _piece_kind(event)) for event in events]

    def _completion(self, answer: str, prefix: str | None) -> bytes | None:
        """The non-stream body; None when ``prefix`` (a continuation's) does not start the answer."""
        body = self.fixtures.completions[answer]
        return body if prefix is None else continue_completion(body, prefix)

    def _error_event(self, answer: str) -> bytes:
        payload = midstream_error_event(self.flavor, self.fixtures.first_chunk(answer))
        event = SseEvent(data=payload).render(self._newline)
        if self.flavor == "remote":
            # vLLM ends its stream with [DONE] after an error event, as after an answer.
            event += SseEvent(data=DONE).render(self._newline)
        return event

    def _error(self, status: int, body: bytes, extra: dict[str, str]) -> web.Response:
        headers = self._headers(None, None, JSON_TYPE, {})
        if status == 429 and self.flavor in ("openai", "azure_openai"):
            headers["x-ratelimit-remaining-requests"] = "0"
        headers.update(extra)  # retry-after & co. only when the fault asks for them
        return web.Response(status=status, body=body, headers=headers)

    # ------------------------------------------------------------------ helpers

    def _check_auth(self, request: web.Request) -> tuple[int, bytes] | None:
        if self.api_key is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() == self.api_key:
            return None
        return 401, unauthorized_body(self.flavor, token.strip() or None)

    def _check_azure_auth(self, request: web.Request) -> bytes | None:
        """Azure: an ``api-key`` header decides when present; else a Bearer token (Entra ID)."""
        if self.api_key is None and self.bearer_token is None:
            return None
        key = request.headers.get("api-key")
        if key is not None:
            return None if self.api_key is not None and key == self.api_key else AZURE_ACCESS_DENIED
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AZURE_ACCESS_DENIED
        return None if self.bearer_token is not None and token.strip() == self.bearer_token else AZURE_TOKEN_REJECTED

    def _headers(
        self, request: web.Request | None, answer: str | None, content_type: str, extra: dict[str, str]
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        if self.flavor == "openai":
            headers.update(_openai_headers())
        elif self.flavor == "azure_openai":
            deployment = request.match_info.get("deployment") if request is not None else None
            headers.update(_azure_headers(deployment))
        elif self.flavor == "remote":
            headers["Server"] = "uvicorn"
        else:
            headers["Server"] = "cloudflare"
            headers["Access-Control-Allow-Origin"] = "*"
            if answer is not None:
                headers["X-Generation-Id"] = self.fixtures.ids[answer]
        headers.update(extra)
        return headers


def _piece_kind(event: SseEvent) -> Literal["event", "end", "extra"]:
    if not event.is_data:
        return "extra"
    return "end" if event.is_done else "event"


def _openai_headers() -> dict[str, str]:
    return {
        "Server": "cloudflare",
        "x-request-id": f"req_{secrets.token_hex(16)}",
        "openai-organization": "user-fakeupstream0000000",
        "openai-processing-ms": str(random.randint(150, 900)),
        "openai-project": "proj_FakeUpstream0000000000",
        "openai-version": "2020-10-01",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-remaining-tokens": "199970",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "9ms",
    }


def _azure_headers(deployment: str | None) -> dict[str, str]:
    # Reference section 2.6 plus what captured Azure responses carry. No reset headers.
    request_id = str(uuid.uuid4())
    headers = {
        "apim-request-id": request_id,
        "x-request-id": request_id,
        "x-ms-region": "East US",
        "x-ms-rai-invoked": "true",
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-requests": "999",
        "x-ratelimit-remaining-tokens": "999970",
        "x-content-type-options": "nosniff",
        "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    }
    if deployment is not None:
        headers["x-ms-deployment-name"] = deployment
    return headers
