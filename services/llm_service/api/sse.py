"""Noticing a client that hangs up, before and during a response, and cancelling the upstream work.

Starlette's StreamingResponse (ASGI spec 2.4) only learns of a disconnect when its next write fails,
so a stalled upstream would be kept open. Here a watcher waits for `http.disconnect`: before the
response starts, `unless_disconnected()` cancels the pending upstream call (retries included); during
a stream, `SSEResponse` cancels the body iterator, which closes the upstream request through the
iterators' `finally` blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from typing_extensions import override

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started; the upstream work was cancelled."""


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` (the request body already read); cancel it if the client hangs up first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    return task.result()


SSE_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class SSEResponse(Response):
    """A Response (so FastAPI passes it through untouched) whose body is an async iterator of events."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Response.__init__ is not called: it would render a body and set a content-length.
        self._body = body
        # Runs once the response is over, however it ended, even if the body was never started.
        self._on_close = on_close
        self.status_code = 200
        self.background = None
        raw = {**SSE_HEADERS, **headers}
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()]

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A disconnect cancels the stream (and so the upstream); a write to a gone client ends it quietly.
        try:
            with contextlib.suppress(ClientGone, OSError):
                await unless_disconnected(receive, self._stream(send))
        finally:
            if self._on_close is not None:
                await self._on_close()

    async def _stream(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for piece in self._body:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
