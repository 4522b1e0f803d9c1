"""Resumption through any replica: a stream this process does not hold, read from the shared stream log.

With a state backend that has a `StreamLog` (Redis), the replica running a stream appends each of its
events there and, at the end, its end (`StreamSession`). A resumption this process cannot serve from its
own sessions (the stream ran elsewhere, or its copy here was dropped) is served from the log: the events
after the client's `Last-Event-ID`, then the live ones as they are written, until the end, then
`[DONE]`. 404 and 410 mean what they mean locally; while the log does not answer, a stream not held
here is 404 (the backend logs the outage once).

A reader here is not a reader of the producing replica's session: that replica keeps generating for its
grace period after its own client left and then stops, whoever follows the stream elsewhere (they then
get its `stream_abandoned` event through the log, as a local reader would). Route reconnections to the
replica that ran the stream, or raise the grace period, where streams outlive it.

A reader that cannot go on (the log stopped answering, forgot the stream, lost events of it, or nothing
came for the resume TTL) ends with a `stream_interrupted` error event without an id, then `[DONE]`: its
last `Last-Event-ID` still stands for another try.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import orjson

from llm_service.api.errors import error_body
from llm_service.api.resume import DONE_EVENT, NOT_FOUND, TOO_OLD, SessionReader, StreamGone, StreamSessions
from llm_service.core.llm.dispatch.state import StateBackend, StateUnavailable, StreamLog, StreamPage

#: How long one read waits for the next event (the log may wait less: see `StreamLog.read`).
WAIT_SECONDS = 1.0

INTERRUPTED_EVENT = (
    b"data: "
    + orjson.dumps(
        error_body(
            "The stream could not be followed to its end from the shared store; resume it again with the "
            "same Last-Event-ID.",
            "server_error",
            code="stream_interrupted",
        )
    )
    + b"\n\n"
)


async def open_stream(
    sessions: StreamSessions, shared: StateBackend, key: str, after: int
) -> SessionReader | AsyncGenerator[bytes, None]:
    """The events of stream `key` after index `after`, from this process or else from `shared`'s stream
    log; `StreamGone` (404/410) before any byte when neither keeps them."""
    try:
        return sessions.read(key, after)
    except StreamGone as gone:
        log = sessions.log_of(shared) if gone.status == 404 else None
        if log is None:
            raise
    try:
        page = await log.read(key, after, wait=0)
    except StateUnavailable:
        page = None
    if page is None:
        raise StreamGone(NOT_FOUND, status=404)
    if after + 1 < page.oldest:
        raise StreamGone(TOO_OLD, status=410)
    return _follow(log, key, after + 1, page, idle=sessions.ttl)


async def _follow(
    log: StreamLog, key: str, index: int, page: StreamPage, *, idle: float
) -> AsyncGenerator[bytes, None]:
    """The events from `index` on, `page` first, then `[DONE]`. Bounded: each turn either sends an event,
    or waits at most WAIT_SECONDS, and at most `idle` seconds of those in a row."""
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + idle
    while True:
        for at, event in page.events:
            if at != index:
                break  # events lost or trimmed before this reader had them
            yield event
            index += 1
        else:
            if page.end == index:
                yield DONE_EVENT
                return
            if page.end is None:
                if page.events:
                    quiet_until = loop.time() + idle
                if loop.time() < quiet_until:
                    next_page = await _read(log, key, index - 1)
                    if next_page is not None:
                        page = next_page
                        continue
        yield INTERRUPTED_EVENT
        yield DONE_EVENT
        return


async def _read(log: StreamLog, key: str, after: int) -> StreamPage | None:
    try:
        return await log.read(key, after, wait=WAIT_SECONDS)
    except StateUnavailable:
        return None
