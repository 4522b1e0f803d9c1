"""Fake OpenAI Chat Completions upstream (plain OpenAI or the OpenRouter flavour of it).

An aiohttp.web server that replays fixture files byte for byte, records every request it
receives and misbehaves on demand (see :class:`~llm_service.fakes.faults.Fault`). The test
suite points the real gateway at it over HTTP; the gateway's demo mode starts it inside its
own event loop when no provider keys are configured.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .faults import Fault, FaultQueue
from .wire import (
    DEFAULT_FIXTURES_DIR,
    FixtureSet,
    Flavor,
    Scenario,
    SseEvent,
    choose_scenario,
    generic_error,
    invalid_json_body,
    midstream_error_event,
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

_INVALID = object()


@dataclass
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, or None when absent or not valid JSON


class FakeUpstream:
    """An OpenAI-compatible upstream on a loopback port, driven by fixtures and faults.

    ``fixtures_dir`` is the directory holding one sub-directory per flavour (default: the
    repository's ``tests/fixtures``). ``crlf`` switches SSE line endings to CRLF,
    ``split_writes`` cuts every SSE event into 2-3 writes, and ``chunk_delay`` paces
    streams when no fault says otherwise (demo mode uses it to look like a real model).
    """

    def __init__(
        self,
        flavor: Literal["openai", "openrouter"] = "openai",
        *,
        api_key: str | None = "test-key",
        fixtures_dir: Path | None = None,
        crlf: bool = False,
        split_writes: bool = False,
        chunk_delay: float = 0.0,
    ) -> None:
        if flavor not in ("openai", "openrouter"):
            raise ValueError(f"unknown flavor {flavor!r}")
        self.flavor: Flavor = flavor
        self.api_key = api_key
        self.crlf = crlf
        self.split_writes = split_writes
        self.chunk_delay = chunk_delay
        self.fixtures = FixtureSet(flavor, fixtures_dir or DEFAULT_FIXTURES_DIR)
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

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = any free port) inside the running event loop."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream already started")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
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
        self._url = f"http://{url_host}:{self._port}/v1"

    async def close(self) -> None:
        if self._runner is None:
            return
        self._closing = True  # handlers cancelled by the shutdown are not client hang-ups
        runner, self._runner = self._runner, None
        await runner.cleanup()

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, e.g. ``http://127.0.0.1:41234/v1``."""
        if self._url is None:
            raise RuntimeError("FakeUpstream not started")
        return self._url

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream not started")
        return self._port

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next chat request(s). Safe to call from any thread."""
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

    # ------------------------------------------------------------------ handlers

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        parsed = self._record(request, raw)
        fault = self._faults.take()
        extra = fault.headers if fault is not None else {}
        if fault is not None and fault.delay_before_headers > 0:
            try:
                await asyncio.sleep(fault.delay_before_headers)
            except asyncio.CancelledError:
                # The client hung up before the headers: count it like a hang-up mid-stream.
                if not self._closing:
                    self._note_disconnect()
                raise
        if fault is not None and fault.status is not None:
            return self._error(fault.status, self._fault_error_body(fault), extra)
        denied = self._check_auth(request)
        if denied is not None:
            return self._error(401, denied, extra)
        if parsed is _INVALID or not isinstance(parsed, dict):
            return self._error(400, invalid_json_body(self.flavor), extra)
        rejection = validate_chat_body(self.flavor, parsed)
        if rejection is not None:
            return self._error(400, rejection, extra)
        scenario = choose_scenario(parsed)
        stream = parsed.get("stream") is True
        if fault is not None and fault.body is not None:
            content_type = SSE_TYPE if stream else JSON_TYPE
            return web.Response(body=fault.body, headers=self._headers(scenario, content_type, extra))
        if stream:
            return await self._stream(request, scenario, parsed, fault, extra)
        return await self._complete(request, scenario, fault, extra)

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        self._record(request, await request.read())
        # OpenRouter's model list is public; OpenAI's needs the key.
        denied = self._check_auth(request) if self.flavor == "openai" else None
        if denied is not None:
            return self._error(401, denied, {})
        return web.Response(body=self.fixtures.models, headers=self._headers(None, JSON_TYPE, {}))

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        self._record(request, await request.read())
        if self.flavor == "openrouter":
            body = openrouter_error(404, "Not Found")
        else:
            body = openai_error(f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        return self._error(404, body, {})

    # ------------------------------------------------------------------ responses

    async def _complete(
        self, request: web.Request, scenario: Scenario, fault: Fault | None, extra: dict[str, str]
    ) -> web.StreamResponse:
        body = self.fixtures.completions[scenario]
        headers = self._headers(scenario, JSON_TYPE, extra)
        if fault is None or fault.drop_after_chunks is None:
            return web.Response(body=body, headers=headers)
        # Announce the full length, send half, hang up: a truncated non-stream body.
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._hang_up(request)
        return response

    async def _stream(
        self,
        request: web.Request,
        scenario: Scenario,
        body: dict[str, Any],
        fault: Fault | None,
        extra: dict[str, str],
    ) -> web.StreamResponse:
        events = self.fixtures.streams[scenario]
        # OpenRouter always reports usage (include_usage is deprecated there); OpenAI only
        # when asked.
        if self.flavor == "openai" and not wants_usage(body):
            events = strip_usage(events)
        drop_after = fault.drop_after_chunks if fault is not None else None
        error_after = fault.error_event_after_chunks if fault is not None else None
        delay = fault.delay_per_chunk if fault is not None and fault.delay_per_chunk else self.chunk_delay
        newline = b"\r\n" if self.crlf else b"\n"

        response = web.StreamResponse(headers=self._headers(scenario, SSE_TYPE, extra))
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.active_streams += 1
        sent = 0  # data events written ([DONE] excluded)
        try:
            for position, event in enumerate(events):
                if event.is_data and drop_after is not None and sent >= drop_after:
                    self._hang_up(request)
                    return response
                if event.is_data and error_after is not None and sent >= error_after:
                    payload = midstream_error_event(self.flavor, self.fixtures.first_chunk(scenario))
                    await self._write_event(response, SseEvent(data=payload).render(newline))
                    break
                if position and delay > 0:
                    await asyncio.sleep(delay)
                await self._write_event(response, event.render(newline))
                if event.is_data and not event.is_done:
                    sent += 1
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

    async def _write_event(self, response: web.StreamResponse, data: bytes) -> None:
        if not self.split_writes:
            await response.write(data)
            return
        for index, piece in enumerate(split_for_writes(data)):
            if index:
                await asyncio.sleep(SPLIT_PAUSE)
            await response.write(piece)

    def _error(self, status: int, body: bytes, extra: dict[str, str]) -> web.Response:
        headers = self._headers(None, JSON_TYPE, {})
        if status == 429 and self.flavor == "openai":
            headers["x-ratelimit-remaining-requests"] = "0"
        headers.update(extra)  # retry-after & co. only when the fault asks for them
        return web.Response(status=status, body=body, headers=headers)

    # ------------------------------------------------------------------ helpers

    def _record(self, request: web.Request, raw: bytes) -> Any:
        """Append the request to :attr:`requests` (before any response) and return the parsed
        body, or the ``_INVALID`` marker when it is not JSON."""
        parsed: Any
        try:
            parsed = orjson.loads(raw) if raw else _INVALID
        except orjson.JSONDecodeError:
            parsed = _INVALID
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
                json=None if parsed is _INVALID else parsed,
            )
        )
        return parsed

    def _check_auth(self, request: web.Request) -> bytes | None:
        if self.api_key is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() == self.api_key:
            return None
        return unauthorized_body(self.flavor, token.strip() or None)

    def _fault_error_body(self, fault: Fault) -> bytes:
        if fault.body is not None:
            return fault.body
        assert fault.status is not None
        stem = fault.fixture or f"error_{fault.status}"
        fixture = self.fixtures.errors.get(stem)
        return fixture if fixture is not None else generic_error(self.flavor, fault.status)

    def _headers(self, scenario: Scenario | None, content_type: str, extra: dict[str, str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type, "Server": "cloudflare"})
        if self.flavor == "openai":
            headers.update(
                {
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
            )
        else:
            headers["Access-Control-Allow-Origin"] = "*"
            if scenario is not None:
                headers["X-Generation-Id"] = self.fixtures.ids[scenario]
        headers.update(extra)
        return headers

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
