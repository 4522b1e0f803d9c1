"""Time limits on the hot path, without a timer per request or per chunk.

`asyncio.timeout` schedules a timer and cancels it every time it is entered: about 13 µs on uvloop. The
dispatcher enters one per request (its budget) and a stream waited once per chunk (its idle limit).

- `next_within()`: one wait (the first chunk of an attempt), with `asyncio.timeout`.
- `IdleWatchdog`: every wait of one stream, by one timer per stream that is looked at only when it fires.
- `Deadlines` (core/aio.py): the budget of every request, all of one length, so they end in the order
  they began: one timer for all of them, set for the oldest unfinished one.

Both cancel the waiting task when its time is up and turn that cancellation into the caller's error, as
`asyncio.timeout` does (a cancellation from elsewhere at the same time wins).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

from llm_service.core.aio import current_task_of
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
        """The stream's next chunk within the limit. `begin()`, `silent()` and `end()` are the same
        wait spelled out, for a caller that awaits the stream itself (HeldStream: a coroutine less a chunk)."""
        cancelling = self.begin()
        try:
            return await anext(stream)
        except asyncio.CancelledError:
            if self.silent(cancelling):
                raise self.timeout_error() from None
            raise
        finally:
            self.end()

    def begin(self) -> int:
        """A wait starts (in the running task); its count of cancellations so far, for `silent()`."""
        if self._seconds == math.inf:
            return 0
        task = current_task_of(self._loop)  # with the loop: no getpid(), no Python call (see core/aio.py)
        assert task is not None
        self._waiting, self._since = task, self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._seconds, self._fire)
        return task.cancelling()

    def silent(self, cancelling: int) -> bool:
        """After a CancelledError in the wait: whether it was this limit's (then taken back, so that the
        caller raises the provider's timeout instead); False for a cancellation from elsewhere too."""
        if not self._expired or self._waiting is None:
            return False
        self._expired = False
        return self._waiting.uncancel() <= cancelling  # cancelled from elsewhere as well: that one wins

    def end(self) -> None:
        self._waiting = None

    def timeout_error(self) -> ProviderTimeoutError:
        return silence_error(self._provider, "next chunk", self._seconds)

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
