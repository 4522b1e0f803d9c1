"""Noticing a client that hangs up, before and during a response, and cancelling the upstream work.

Starlette's StreamingResponse (ASGI spec 2.4) only learns of a disconnect when its next write fails,
so a stalled upstream would be kept open. Here a watcher waits for `http.disconnect`: before the
response starts, `with watch:` (a `DisconnectWatch`) cancels the pending upstream call (retries
included); during a stream, `SSEResponse` cancels the body iterator, which closes the upstream request
through the iterators' `finally` blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from typing_extensions import override

from llm_service.api.errors import RawHeaders, raw_headers
from llm_service.api.resume import DONE_EVENT
from llm_service.core.aio import running_task


class ClientGone(Exception):
    """The client disconnected before the response started; the upstream work was cancelled."""


class DisconnectWatch:
    """Learns that the client hung up, for the whole of one request, in one watcher task.

    While armed, a disconnect cancels the request's task (`with watch:`; a stream) or is told to
    `on_disconnect` (a resumable stream, which reads on). The watcher is never cancelled: once the
    response is complete the server answers `receive()` with `http.disconnect` (ASGI spec; uvicorn wakes
    the waiting call at once), and the watcher, disarmed by then, ends by itself. Cancelling it instead
    left a CancelledError whose traceback and frames form a reference cycle: about 15 objects a request
    for the garbage collector, and most of its time in the benchmark (20-60 µs a request). One watch
    serves both the wait for the upstream and the streamed response: one task a request, not two.
    """

    __slots__ = ("_armed", "_cancelled", "_on_disconnect", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        task = running_task()
        self._task = task
        self._armed = False
        self._cancelled = False
        self._on_disconnect: Callable[[], None] | None = None
        self.gone = False
        self._watcher = task.get_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._armed:
            self._fire()

    def arm(self, on_disconnect: Callable[[], None] | None = None) -> None:
        """From now on a disconnect cancels the request's task, or is told to `on_disconnect` (then
        the task goes on, see SSEResponse); at once if the client has already gone."""
        self._on_disconnect = on_disconnect
        self._armed = True
        if self.gone:
            self._fire()

    def disarm(self) -> None:
        self._armed = False
        self._on_disconnect = None

    def _fire(self) -> None:
        self._armed = False
        if self._on_disconnect is not None:
            self._on_disconnect()
            return
        self._cancelled = True
        self._task.cancel()

    def client_gone(self) -> bool:
        """After a CancelledError: whether it was this watch's (then taken back, so that the task can go
        on cleaning up) rather than the server's."""
        if not self._cancelled:
            return False
        self._cancelled = False
        self._task.uncancel()
        return True

    def __enter__(self) -> None:
        """`with watch: await work`: the work is cancelled if the client hangs up first, and ClientGone
        raised instead (at once if it has already gone). A `with` rather than a coroutine wrapping the
        work: every coroutine level of a request is passed at each of its suspensions."""
        if self.gone:
            raise ClientGone
        self.arm()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.disarm()
        if kind is asyncio.CancelledError and self.client_gone():
            raise ClientGone from None


SSE_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


_RAW_SSE_HEADERS = raw_headers(SSE_HEADERS)


class SSEResponse(Response):
    """A Response (so FastAPI passes it through untouched) whose body is an async iterator of events."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        watch: DisconnectWatch | None = None,
        raw: RawHeaders = (),
    ) -> None:
        # Response.__init__ is not called: it would render a body and set a content-length.
        self._body = body
        # Runs once the response is over, however it ended, even if the body was never started.
        self._on_close = on_close
        # Given (a resumable stream): a disconnect is told to it, and the body is read on to its end,
        # with nowhere to send, instead of being cancelled.
        self._on_disconnect = on_disconnect
        # The request's watch when it has one already (it waited for the upstream under it).
        self._watch = watch
        self.status_code = 200
        self.background = None
        self.raw_headers = [*_RAW_SSE_HEADERS, *raw, *raw_headers(headers)]

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A disconnect cancels the stream (and so the upstream); a write to a gone client ends it quietly.
        watch = self._watch if self._watch is not None else DisconnectWatch(receive)
        watch.arm(self._on_disconnect)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            body_send = getattr(send, "body_send", send)  # past the access log's, which only looks at the start
            async for piece in self._body:
                if piece is DONE_EVENT:  # always the last: it ends the body too, in one write instead of two
                    await body_send({"type": "http.response.body", "body": piece, "more_body": False})
                    break
                await body_send({"type": "http.response.body", "body": piece, "more_body": True})
            else:
                await body_send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.client_gone():
                raise
        except OSError:
            if self._on_disconnect is not None:
                self._on_disconnect()
                async for _ in self._body:  # read on, as after a disconnect
                    pass
        finally:
            watch.disarm()
            try:
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if self._on_close is not None:
                    await self._on_close()
