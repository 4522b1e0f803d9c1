"""Graceful shutdown: requests and streams in flight finish, up to a deadline, before the service stops.

`Drain.run()` (started by `llm-service serve` on SIGTERM, cli.py) stops accepting connections, turns
`/health/ready` to 503 and waits until nothing is in flight or `LLM_DRAIN_SECONDS` have passed. What is
still running then is cancelled and ended properly by `DrainMiddleware`: a stream with one error event
(code `server_shutting_down`) then `[DONE]`, a request whose answer has not started with a 503 in
OpenAI's shape that says to retry. Meanwhile a new request on a connection kept open is refused the
same way (with `connection: close`), and the health and metrics endpoints go on answering. Only then
is uvicorn told to exit; its own shutdown finds nothing left to wait for, and the lifespan closes the
shared resources (main.py).

uvicorn alone would stop listening, wait `timeout_graceful_shutdown` and then cancel what is left, which
cuts a stream mid-body: the client sees a broken chunked response rather than an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_service.api.auth import resumed_stream_id
from llm_service.api.errors import error_body, json_response
from llm_service.api.resume import DONE_EVENT
from llm_service.core.aio import running_task

log = logging.getLogger("llm_service.shutdown")
SHUTTING_DOWN = "server_shutting_down"
#: After the deadline, how long the requests cut off get to write their last event and end (s).
CUT_GRACE_SECONDS = 5.0
#: Served while draining: an orchestrator's probes and the metrics scraper see the drain.
_OPEN_WHILE_DRAINING = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})
_MESSAGE = "The service is shutting down; retry the request."
_REFUSAL = json_response(
    503,
    error_body(_MESSAGE, "server_error", code=SHUTTING_DOWN),
    {"retry-after": "1", "x-should-retry": "true", "connection": "close"},
)
_CUT_EVENT = b"data: " + orjson.dumps(error_body(_MESSAGE, "server_error", code=SHUTTING_DOWN)) + b"\n\n"


class Drain:
    """The service's shutdown state: the requests in flight, and whether it is draining or cutting them."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        #: The deadline has passed: a request cancelled now is ended by `DrainMiddleware`.
        self.cutting = False
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None

    async def run(self, stop_accepting: Callable[[], None]) -> None:
        """Drain: stop accepting, let what is in flight finish until the deadline, then end the rest."""
        self.draining = True
        stop_accepting()
        idle = self._idle = asyncio.Event()
        if not self.in_flight:
            idle.set()
        log.info("draining", extra={"fields": {"in_flight": len(self.in_flight), "drain_seconds": self.seconds}})
        try:
            await asyncio.wait_for(idle.wait(), self.seconds)
        except TimeoutError:
            self.cutting = True
            log.warning(
                "drain deadline passed: ending what is in flight", extra={"fields": {"ended": len(self.in_flight)}}
            )
            for task in list(self.in_flight):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), CUT_GRACE_SECONDS)
        log.info("drained", extra={"fields": {"left": len(self.in_flight)}})

    def done(self, task: asyncio.Task[Any]) -> None:
        self.in_flight.discard(task)
        if self._idle is not None and not self.in_flight:
            self._idle.set()


class DrainMiddleware:
    """Counts the requests in flight; while draining refuses new ones, and ends those the drain cuts off.

    Sits inside the access log (main.py), whose record tells whether the response has started and
    whether it is a stream; so the refusals and cut-off requests keep their request id and access line.
    """

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = self.drain
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if drain.draining:
            if scope["path"] in _OPEN_WHILE_DRAINING:
                await self.app(scope, receive, send)
            else:
                _note(scope, SHUTTING_DOWN, stream=False)
                await _REFUSAL(scope, receive, send)
            return
        task = running_task()
        drain.in_flight.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not drain.cutting:
                raise  # the server's or the client's, not the drain's
            task.uncancel()
            with contextlib.suppress(OSError):  # the client may be gone too
                await _end(scope, receive, send)
        finally:
            drain.done(task)


async def _end(scope: Scope, receive: Receive, send: Send) -> None:
    """End a request the drain cut off: a started stream with an error event and [DONE], a request not
    yet answered with a 503 (a plain answer already started cannot be ended well: it is left cut)."""
    access = scope.get("state", {}).get("access")
    started = access is not None and access.status != 0
    if not started:
        _note(scope, SHUTTING_DOWN, stream=False)
        await _REFUSAL(scope, receive, send)
    elif _is_stream(scope, access):
        _note(scope, SHUTTING_DOWN, stream=True)
        await send({"type": "http.response.body", "body": _CUT_EVENT + DONE_EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_stream(scope: Scope, access: Any) -> bool:
    """A chat request that streams, or the resumption of a stream (GET .../{id}/stream) that answered 200."""
    if access.stream:
        return True
    return scope["method"] == "GET" and access.status == 200 and resumed_stream_id(scope["path"]) is not None


def _note(scope: Scope, code: str, *, stream: bool) -> None:
    access = scope.get("state", {}).get("access")
    if access is not None:
        if stream:
            access.stream_error = code
        else:
            access.error_code = code
