"""Resumable SSE: a client whose connection broke reconnects with `Last-Event-ID` and gets the rest.

Every event of a resumable stream carries `id: <stream id>:<index>`; the response also names the
stream in `x-llm-stream-id`. `GET /v1/chat/completions/{stream_id}/stream` with a `Last-Event-ID`
header (or `?after=<index>`) answers with the events after it, then the live remainder, then
`[DONE]`.

A `StreamSession` decouples the upstream from the client: the encoded events go into the session,
pulled by whichever reader (the original response, then any resumption) has caught up, and the others
follow. When the last reader's client leaves, its task reads on for `grace` seconds in case the client
comes back; then the generation is cancelled (its slot and upstream connection freed). An ended stream
is kept `ttl` seconds for late resumptions, at most `max_streams` of them and `max_bytes` of events in
all, in memory. Where the state
backend has a `StreamLog` (Redis), every event and the end also go there, so that another replica serves
a resumption (`resume_store.py`); without one, nothing more is done per event.

Sessions hold encoded SSE events, not chunks: a resumption re-sends bytes, and bytes are what is
smallest to keep. Past `keep` events a stream drops its oldest ones that every reader already has;
resuming before them is a 410.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from llm_service.api.errors import error_body
from llm_service.core.aio import running_task
from llm_service.core.config.settings import StreamingSettings
from llm_service.core.llm.dispatch.state import StateBackend, StreamLog
from llm_service.core.llm.streaming import Clock, TTLStore

log = logging.getLogger("llm_service.resume")

DONE_EVENT = b"data: [DONE]\n\n"


class StreamGone(Exception):
    """The events asked for are no longer kept (expired, evicted, or past the stream's buffer)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class EventSource(Protocol):
    """What a session streams: `items`, each made an event by `render` (None: not sent), and `failed`'s
    one event when `items` raise. The reader awaits `items` itself: a generator of events in between
    would be one more async level for every event."""

    @property
    def items(self) -> AsyncIterator[Any]: ...

    def render(self, item: Any) -> bytes | None: ...

    def failed(self, error: Exception) -> bytes: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Ended:
    """What is kept of a stream after its end: its last `keep` events from index `first`."""

    events: list[bytes]
    first: int

    def size(self) -> int:
        return sum(map(len, self.events))


class StreamSession:
    """One stream's events, produced once from `source`, read by one reader at a time or several.

    No task of its own: a reader that has caught up and finds nobody pulling pulls the next event itself
    (`SessionReader.__anext__`), and every other reader waits for it. The original client's request task
    thus carries its own stream, one task step per chunk (a producer task beside it cost about 15 µs a
    chunk more).

    A reader whose client left is no longer counted (`detach`), but its task goes on pulling, with
    nowhere to send, for the grace period; when no attached reader is left at its end, the pull in
    progress is cancelled (or the next one refused) and the stream ends with the `abandoned` event.
    """

    def __init__(
        self,
        key: str,
        source: EventSource,
        *,
        keep: int,
        grace: float,
        on_end: Callable[[StreamSession], None],
        abandoned: bytes,
        log: StreamLog | None = None,
    ) -> None:
        self.key = key
        self.event_ids = event_ids(key)
        self._log = log  # where other replicas read the events, if anywhere
        self._abandoned = abandoned
        self._source = source
        self._keep = keep
        self._grace = grace
        self._on_end = on_end
        self._events: deque[bytes] = deque()
        self._first = 0  # index of _events[0]
        self._count = 0
        self.ended = False
        # Readers waiting for the next event; woken all at once (a future each: cheaper than an Event).
        self._waiters: list[asyncio.Future[None]] = []
        self._readers: set[SessionReader] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._puller: asyncio.Task[object] | None = None  # the task inside `anext(source)`, if any
        self._stopping = False  # abandoned (grace over, or shutdown): no more pulls
        self._failed = False  # the source raised: its error event was the last

    def event_id(self, index: int) -> bytes:
        return b"%b%d\n" % (self.event_ids, index)

    def _pulled(self, event: bytes) -> None:
        """The event a reader pulled from the source (`SessionReader.__anext__`): kept, told to the others."""
        self._events.append(event)
        self._count += 1
        if self._log is not None:
            self._log.append(self.key, self._count - 1, event)
        if len(self._events) > self._keep:
            self._trim()
        if self._waiters:  # one reader, the usual case: nobody waits while it pulls (no call to _notify)
            self._notify()

    async def _end(self, *, abandoned: bool) -> None:
        if self.ended:
            return
        if abandoned:
            # Its client left and did not come back: whoever resumes later learns it ended here.
            log.info("stream abandoned", extra={"fields": {"stream_id": self.key, "events": self._count}})
            self._events.append(self.event_id(self._count) + self._abandoned)
            self._count += 1
            if self._log is not None:
                self._log.append(self.key, self._count - 1, self._events[-1])
        if self._log is not None:
            self._log.end(self.key, self._count)
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._notify()
        with contextlib.suppress(Exception):
            await self._source.aclose()
        self._on_end(self)

    def _notify(self) -> None:
        if not self._waiters:
            return  # one reader, the usual case: nobody waits while it pulls
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # done: its reader was cancelled while waiting
                waiter.set_result(None)

    def _trim(self) -> None:
        """Drop the oldest events past `keep` that every reader has already read."""
        oldest_needed = min((r.index for r in self._readers), default=self._count)
        while len(self._events) > self._keep and self._first < oldest_needed:
            self._events.popleft()
            self._first += 1

    def read(self, after: int) -> SessionReader:
        """The events after index `after` (-1: all), live as they come, then `[DONE]`; `StreamGone`
        (raised here, before any byte) when they are no longer kept. The reader counts from now, so
        nothing it still needs is dropped before it starts; `aclose()` it when done (it works unstarted)."""
        index = after + 1
        if index < self._first:
            raise StreamGone(TOO_OLD, status=410)
        reader = SessionReader(self, index)
        self._readers.add(reader)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return reader

    def _wait(self) -> asyncio.Future[None]:
        """A future done when the reader pulling now has pulled (or the session ended)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def _detached(self, reader: SessionReader) -> None:
        self._readers.discard(reader)
        if not self._readers and not self.ended:
            self._leave_alone()

    def _leave_alone(self) -> None:
        """No reader left: generation goes on for the grace period, then stops."""
        if self._grace <= 0:
            self._stop()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._grace, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self._readers:
            self._stop()

    def _stop(self) -> None:
        """No more pulls; the one in progress is cancelled (its reader ends the stream as abandoned)."""
        self._stopping = True
        if self._puller is not None:
            self._puller.cancel()

    def snapshot(self) -> _Ended:
        """The last `keep` events (a reader that was behind may have held more)."""
        kept = list(self._events)[-self._keep :]
        return _Ended(kept, self._count - len(kept))

    async def aclose(self) -> None:
        """Stop generation now (shutdown): the stream ends as abandoned."""
        self._stop()
        if self._puller is None:
            await self._end(abandoned=True)


class SessionReader:
    """One reader's position in a session: an async iterator of its events, then `[DONE]`. A reader
    whose client went away is `detach`ed: it reads on (pulling for the others) without being counted."""

    __slots__ = ("_closed", "_detached", "_session", "_task", "index")

    def __init__(self, session: StreamSession, index: int) -> None:
        self._session = session
        self.index = index
        self._closed = False
        self._detached = False
        # The task that reads it (a response's: one task from its first event to its last), found once.
        self._task: asyncio.Task[object] | None = None

    def __aiter__(self) -> SessionReader:
        return self

    async def __anext__(self) -> bytes:
        # The pull is written out here rather than in a method of its own: a chunk passes one coroutine
        # fewer on its way out (every coroutine level costs again at each chunk).
        session = self._session
        while not self._closed:
            index = self.index
            if index < session._count:  # an event it has not read yet (a resumed reader's, one another pulled)
                self.index = index + 1
                return session._events[index - session._first]
            if session.ended:
                await self.aclose()
                return DONE_EVENT
            if session._puller is not None:
                await session._wait()  # another reader pulls
                continue
            # Caught up and nobody pulling: this reader pulls the next event from the source.
            if session._stopping or session._failed:  # abandoned; or the source's error event was the last
                await session._end(abandoned=session._stopping)
                continue
            task = self._task
            if task is None:
                task = self._task = running_task()
            session._puller = task
            cancelling = task.cancelling()
            source = session._source
            try:
                event = None
                while event is None:
                    event = source.render(await anext(source.items))
            except StopAsyncIteration:
                await session._end(abandoned=False)
                continue
            except asyncio.CancelledError:
                # The source has ended with it. Ours (grace over): taken back, the stream ends here.
                # Anyone else's (shutdown): the stream ends too, and the cancellation goes on.
                ours = session._stopping and task.uncancel() <= cancelling
                await session._end(abandoned=True)
                if not ours:
                    raise
                continue
            except Exception as error:  # the source's one error event ends the stream
                event = source.failed(error)
                session._failed = True
            finally:
                session._puller = None
            session._pulled(event)
            self.index += 1  # it was caught up: the event is its own next one
            return event
        raise StopAsyncIteration

    def detach(self) -> None:
        """Its client went away: not counted as a reader any longer (it may still pull)."""
        if not self._detached:
            self._detached = True
            self._session._detached(self)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.detach()


#: The start of a stream's SSE `id:` lines, `id: <stream id>:`; each event's index and a newline follow.
EventIds = bytes


def event_ids(key: str) -> EventIds:
    return b"id: %b:" % key.encode()


NOT_FOUND = "No resumable stream with this id: it never existed, or it ended longer ago than the resume TTL."
TOO_OLD = "The events after this Last-Event-ID are no longer kept: the stream outgrew its resume buffer."


class StreamSessions:
    """The resumable streams of this process: live ones, and ended ones for `ttl` seconds."""

    def __init__(
        self,
        *,
        ttl: float,
        max_streams: int,
        keep: int,
        grace: float,
        clock: Clock,
        abandoned: bytes,
        max_bytes: int | None = None,
    ) -> None:
        self._abandoned = abandoned
        self._live: dict[str, StreamSession] = {}
        self._ended: TTLStore[_Ended] = TTLStore(
            ttl=ttl, max_entries=max_streams, clock=clock, weigh=_Ended.size, max_weight=max_bytes
        )
        self._keep = keep
        self._grace = grace
        self.ttl = ttl

    @classmethod
    def of(cls, settings: StreamingSettings, clock: Clock) -> StreamSessions | None:
        """The sessions `settings` ask for; None when resumption is off."""
        if not settings.stream_resume_enabled:
            return None
        grace = settings.stream_resume_grace_seconds
        abandoned = error_body(
            f"The stream was stopped: its client left and did not resume it within {grace:g}s.",
            "server_error",
            code="stream_abandoned",
        )
        return cls(
            ttl=settings.stream_resume_ttl_seconds,
            max_streams=settings.max_resumable_streams,
            keep=max(settings.max_buffer_chunks, 1),
            grace=grace,
            clock=clock,
            abandoned=b"data: " + orjson.dumps(abandoned) + b"\n\n",
            max_bytes=settings.stream_resume_max_bytes,
        )

    def start(self, events: Callable[[EventIds], EventSource], shared: StateBackend | None = None) -> StreamSession:
        """A new session producing `events(event_ids)`, whose events are named `<event_ids><index>`; also
        written to `shared`'s stream log, when it has one."""
        key = secrets.token_urlsafe(16)
        session = StreamSession(
            key,
            events(event_ids(key)),
            keep=self._keep,
            grace=self._grace,
            on_end=self._ended_one,
            abandoned=self._abandoned,
            log=None if shared is None else self.log_of(shared),
        )
        self._live[key] = session
        return session

    def log_of(self, shared: StateBackend) -> StreamLog | None:
        """Where `shared` keeps streams for every replica, with this service's keep and TTL; None: nowhere."""
        return shared.stream_log(keep=self._keep, ttl=self.ttl)

    def _ended_one(self, session: StreamSession) -> None:
        self._live.pop(session.key, None)
        self._ended.put(session.key, session.snapshot())

    def read(self, key: str, after: int) -> SessionReader | AsyncGenerator[bytes, None]:
        """The events of stream `key` after index `after`; `StreamGone` (404/410) when they are not kept."""
        live = self._live.get(key)
        if live is not None:
            return live.read(after)
        ended = self._ended.get(key)
        if ended is None:
            raise StreamGone(NOT_FOUND, status=404)
        index = after + 1
        if index < ended.first:
            raise StreamGone(TOO_OLD, status=410)
        return _replay(ended.events[index - ended.first :])

    @property
    def live(self) -> int:
        return len(self._live)

    async def aclose(self) -> None:
        for session in list(self._live.values()):
            await session.aclose()


async def _replay(events: list[bytes]) -> AsyncGenerator[bytes, None]:
    for event in events:
        yield event
    yield DONE_EVENT


def parse_last_event_id(value: str, key: str) -> int:
    """`<stream id>:<index>` -> index (it must name this stream); ValueError otherwise."""
    stream, sep, index = value.strip().rpartition(":")
    if not sep or stream != key or not index.isdigit():
        raise ValueError(value)
    return int(index)
