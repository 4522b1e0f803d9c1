"""Time limits on the hot path, without a timer per request or per chunk.

`asyncio.timeout` schedules a timer and cancels it every time it is entered: about 13 µs on uvloop. The
dispatcher enters one per request (its budget) and a stream waited once per chunk (its idle limit).

- `next_within()`: one wait (the first chunk of an attempt), with `asyncio.timeout`.
- `IdleWatchdog`: every wait of one stream, by one timer per stream that is looked at only when it fires.
- `Deadlines`: the budget of every request, all of one length, so they end in the order they began:
  one timer for all of them, set for the oldest unfinished one.

Both cancel the waiting task when its time is up and turn that cancellation into the caller's error, as
`asyncio.timeout` does (a cancellation from elsewhere at the same time wins).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator

from llm_service.core.aio import running_task
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import LLMChunk, ProviderTimeoutError


def silence_error(provider: ProviderID, what: str, seconds: float) -> ProviderTimeoutError:
    return ProviderTimeoutError(
        f"{provider.value} sent no {what} within {seconds:g}s",
        provider=provider,
        retryable=True,
        code="upstream_timeout",
    )


async def next_within(stream: AsyncIterator[LLMChunk], seconds: float, provider: ProviderID, what: str) -> LLMChunk:
    """The stream's next chunk, or a retryable timeout naming the provider when it stays silent."""
    try:
        async with asyncio.timeout(seconds if seconds < math.inf else None):
            return await anext(stream)
    except TimeoutError:
        raise silence_error(provider, what, seconds) from None


class IdleWatchdog:
    """Every wait for a next chunk ends within `seconds`, by one timer per stream.

    Each wait only notes when it began and which task waits. The timer fires at the earliest moment a
    wait could be over its limit; then it either finds the current wait younger than that and sets
    itself for when that one would be, or cancels the waiting task, which `next()` turns into the
    provider's timeout. A stream that is read steadily thus costs one timer per `seconds`, not one
    per chunk."""

    __slots__ = ("_expired", "_handle", "_loop", "_provider", "_seconds", "_since", "_waiting")

    def __init__(self, seconds: float, provider: ProviderID) -> None:
        self._seconds = seconds
        self._provider = provider
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._waiting: asyncio.Task[object] | None = None
        self._since = 0.0
        self._expired = False

    async def next(self, stream: AsyncIterator[LLMChunk]) -> LLMChunk:
        if self._seconds == math.inf:
            return await anext(stream)
        task = asyncio.current_task(self._loop)  # with the loop: no getpid() (see core/aio.py)
        assert task is not None
        self._waiting, self._since = task, self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._seconds, self._fire)
        cancelling = task.cancelling()
        try:
            return await anext(stream)
        except asyncio.CancelledError:
            if not self._expired:
                raise
            self._expired = False
            if task.uncancel() > cancelling:
                raise  # cancelled from elsewhere as well: that one wins, as with asyncio.timeout
            raise silence_error(self._provider, "next chunk", self._seconds) from None
        finally:
            self._waiting = None

    def _fire(self) -> None:
        self._handle = None
        if self._waiting is None:
            return  # between waits: the next wait sets the timer again
        due = self._since + self._seconds
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._expired = True
        self._waiting.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Deadline:
    """One task's time limit in `Deadlines`; `expired()` after a CancelledError says whether it was this."""

    __slots__ = ("_cancelling", "_expired", "at", "task")

    def __init__(self, at: float, task: asyncio.Task[object]) -> None:
        self.at = at
        self.task: asyncio.Task[object] | None = task  # None once finished
        self._cancelling = task.cancelling()
        self._expired = False

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this deadline's (then taken back, so that the task
        can raise its own error instead); False for a cancellation from elsewhere."""
        if not self._expired or self.task is None:
            return False
        self._expired = False
        return self.task.uncancel() <= self._cancelling


class Deadlines:
    """Time limits of one length for many tasks, with one timer for all of them.

    `start()` when a task begins, `finish()` when it is done (always: in a `finally`). Since every limit
    has the same length, they expire in the order they were started: a queue, and one timer set for its
    oldest entry. Finished entries are dropped from the head as the timer passes, and the queue is
    compacted when mostly finished, so it holds about as many entries as tasks are running.
    """

    __slots__ = ("_entries", "_handle", "_live", "_loop", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: deque[Deadline] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the latest start()
        self._live = 0

    def start(self) -> Deadline | None:
        """The current task's deadline (None: no limit)."""
        if self.seconds == math.inf:
            return None
        task = running_task()
        loop = self._loop = task.get_loop()
        deadline = Deadline(loop.time() + self.seconds, task)
        entries = self._entries
        if len(entries) > 64 and len(entries) > 4 * self._live:
            self._entries = entries = deque(d for d in entries if d.task is not None)
        entries.append(deadline)
        self._live += 1
        if self._handle is None:
            self._handle = loop.call_at(entries[0].at, self._fire)
        return deadline

    def finish(self, deadline: Deadline | None) -> None:
        if deadline is not None and deadline.task is not None:
            deadline.task = None  # not kept alive by its entry until the timer passes it
            self._live -= 1

    def _fire(self) -> None:
        self._handle = None
        entries = self._entries
        loop = self._loop
        assert loop is not None  # set by the start() that set this timer
        now = loop.time()
        while entries and (entries[0].task is None or entries[0].at <= now):
            deadline = entries.popleft()
            if deadline.task is not None:  # over its time: its task ends it (and calls finish)
                deadline._expired = True
                deadline.task.cancel()
        if entries:
            self._handle = loop.call_at(entries[0].at, self._fire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
