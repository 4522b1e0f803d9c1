"""The benchmark's upstream: a minimal HTTP/1.1 server on raw asyncio (uvloop when installed).

`POST .../chat/completions` answers as OpenAI does (see `wire.py`), JSON or SSE by the request's
`stream`, with the scenario (chunks, delay to the first byte, interval between chunks) named by the
model; `GET /health` answers `ok`. Connections are kept alive. Bodies are built once per scenario and
cached, and a response without delays goes out in one write, so the upstream costs a few
microseconds of CPU per request and is never what limits a run (the benchmark reports its CPU too).

    python -m benchmarks.upstream --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
from functools import cache
from typing import cast

import orjson
from typing_extensions import override

from benchmarks.wire import Scenario, completion_body, stream_events

_MAX_HEAD = 64 * 1024
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"connection: keep-alive\r\n"
    b"cache-control: no-cache, must-revalidate\r\n"
    b"x-request-id: req_0123456789abcdef0123456789abcdef\r\n"
    b"openai-processing-ms: 87\r\n"
    b"\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def _framed(event: bytes) -> bytes:
    """One piece of a chunked transfer-encoded body."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _plain(status: int, reason: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: keep-alive\r\n"
        b"x-request-id: req_0123456789abcdef0123456789abcdef\r\nopenai-processing-ms: 87\r\n\r\n"
    )
    return head % (status, reason.encode(), content_type, len(body)) + body


@cache
def _json_response(model: str) -> bytes:
    return _plain(200, "OK", completion_body(model))


@cache
def _stream_pieces(model: str, chunks: int, include_usage: bool) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """(what goes out at the first byte: head, role and first content chunk; each later content chunk;
    the tail: finish reason, usage, [DONE] and the end of the chunked body)."""
    events = [_framed(e) for e in stream_events(model, chunks, include_usage=include_usage)]
    content = events[1 : 1 + chunks]
    first = _SSE_HEAD + events[0] + (content[0] if content else b"")
    tail = b"".join(events[1 + chunks :]) + _LAST_CHUNK
    return first, tuple(content[1:]), tail


_BAD_REQUEST = _plain(400, "Bad Request", b'{"error":{"message":"bad request","type":"invalid_request_error"}}')
_NOT_FOUND = _plain(404, "Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
_HEALTH = _plain(200, "OK", b"ok", b"text/plain")


class _Connection(asyncio.Protocol):
    """One client connection: requests answered in order, one at a time (no pipelining needed)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None

    @override
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._task is not None:
            self._task.cancel()

    @override
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._fail()
                return
            head = bytes(self._buffer[:end]).lower()
            length = _content_length(head)
            if length is None:
                self._fail()
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            if not self._answer(head, body):
                return  # a delayed answer runs as a task; it serves what is buffered when done

    def _fail(self) -> None:
        if self._transport is not None:
            self._transport.write(_BAD_REQUEST)
            self._transport.close()

    def _answer(self, head: bytes, body: bytes) -> bool:
        """Answer one request; False when the answer goes on in a task."""
        assert self._transport is not None
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"get /health"):
            self._transport.write(_HEALTH)
            return True
        if not (line.startswith(b"post ") and b"/chat/completions" in line):
            self._transport.write(_NOT_FOUND)
            return True
        try:
            request = orjson.loads(body)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._transport.write(_BAD_REQUEST)
            return True
        scenario = Scenario.of(model)
        if not request.get("stream"):
            if scenario.first_byte_ms:
                self._task = asyncio.get_running_loop().create_task(self._later(_json_response(model), scenario))
                return False
            self._transport.write(_json_response(model))
            return True
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        first, rest, tail = _stream_pieces(model, scenario.chunks, include_usage)
        if not scenario.first_byte_ms and not scenario.interval_ms:
            self._transport.write(first + b"".join(rest) + tail)
            return True
        self._task = asyncio.get_running_loop().create_task(self._paced(first, rest, tail, scenario))
        return False

    async def _later(self, response: bytes, scenario: Scenario) -> None:
        await asyncio.sleep(scenario.first_byte_ms / 1000)
        self._write_then_next(response)

    async def _paced(self, first: bytes, rest: tuple[bytes, ...], tail: bytes, scenario: Scenario) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + scenario.first_byte_ms / 1000
        await asyncio.sleep(scenario.first_byte_ms / 1000)
        if self._transport is None:
            return
        self._transport.write(first)
        interval = scenario.interval_ms / 1000
        for i, piece in enumerate(rest, start=1):
            # Paced against the start, so that a late wake-up does not stretch the whole stream.
            await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
            if self._transport is None:
                return
            self._transport.write(piece)
        self._write_then_next(tail)

    def _write_then_next(self, data: bytes) -> None:
        self._task = None
        if self._transport is not None:
            self._transport.write(data)
            self._serve_buffered()


def _content_length(head: bytes) -> int | None:
    """The body length of a request head (lower-cased); None for a body this server does not read."""
    if b"transfer-encoding:" in head:
        return None
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    value = head[start : stop if stop >= 0 else len(head)]
    try:
        return int(value.strip())
    except ValueError:
        return None


def raise_fd_limit() -> None:
    """As many open files as the hard limit allows: thousands of concurrent streams need them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=8192, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_fd_limit()
    use_uvloop()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
