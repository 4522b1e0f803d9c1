"""Admission queue: a bounded, first-come-first-served wait for capacity, with backpressure hints.

A caller asks `AdmissionQueue.admit()` for something only the caller knows how to obtain (a
deployment slot, say) through a `try_admit` callable that returns it or None. When nobody is waiting
and `try_admit` succeeds, the value comes back at once. Otherwise the caller waits in FIFO order;
whoever frees capacity calls `notify()`, which retries the head of the queue and keeps draining while
heads are served. A wait ends in exactly one way: served, `QueueFullError` (no room to wait),
`QueueTimeoutError` (waited `timeout` seconds), an error from `try_admit`, or cancellation.

`admit_async()` is the same line for a `try_admit` that must be awaited (a round trip to state shared
with other replicas, whose releases no `notify()` here announces): the head of the line asks for itself,
when notified or after `retry_in()` seconds, whichever comes first; the others wait to be the head.

Errors::

    AdmissionError (retry_after: whole seconds to suggest to the caller)
     ├── QueueFullError      max_size waiters were already queued
     └── QueueTimeoutError   the wait passed the timeout

Time comes from the injected `clock` (service rate) and `sleep` (the wait timer), so tests never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: The longest Retry-After ever suggested: beyond this an estimate says little and callers give up.
DEFAULT_MAX_RETRY_AFTER = 60.0
#: How far back admissions count towards the recent service rate.
DEFAULT_RATE_WINDOW = 10.0
_RATE_BUCKETS = 10


class AdmissionError(Exception):
    """The request was not admitted; `retry_after` is whole seconds (>= 1) to suggest to the caller."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(AdmissionError):
    """Raised at once when `max_size` waiters are already queued."""


class QueueTimeoutError(AdmissionError):
    """The wait for capacity passed the queue timeout."""


class _RateWindow:
    """Events per second over a sliding window, in a fixed number of buckets (bounded memory at any rate)."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._width = window / _RATE_BUCKETS
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket index, count], oldest first

    def record(self) -> None:
        index = self._prune()
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([index, 1])

    def count(self) -> int:
        self._prune()
        return sum(count for _, count in self._buckets)

    def per_second(self) -> float:
        return self.count() / self.window

    def _prune(self) -> int:
        index = math.floor(self._clock() / self._width)
        while self._buckets and self._buckets[0][0] <= index - _RATE_BUCKETS:
            self._buckets.popleft()
        return index


@dataclass(eq=False)
class _Waiter(Generic[T]):
    #: None: a waiter of `admit_async`, which asks for itself when its `turn` is set.
    try_admit: Callable[[], T | None] | None
    future: asyncio.Future[T]
    turn: asyncio.Event | None = None


class AdmissionQueue(Generic[T]):
    """A bounded FIFO of callers waiting for capacity; see the module docstring."""

    def __init__(
        self,
        *,
        max_size: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rate_window: float = DEFAULT_RATE_WINDOW,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if not rate_window > 0:
            raise ValueError(f"rate_window must be > 0, got {rate_window}")
        if not max_retry_after >= 1:
            raise ValueError(f"max_retry_after must be >= 1, got {max_retry_after}")
        self._max_size = max_size
        self._timeout = timeout
        self._sleep = sleep
        self._max_retry_after = float(math.ceil(max_retry_after))
        self._rate = _RateWindow(rate_window, clock)
        self._waiters: deque[_Waiter[T]] = deque()

    @property
    def depth(self) -> int:
        """Callers waiting now."""
        return len(self._waiters)

    def admit_now(self, try_admit: Callable[[], T | None]) -> T | None:
        """What `try_admit` yields if nobody waits ahead of the caller, without waiting (None: wait in
        line with `admit`). The common case, without `admit`'s coroutine and timer."""
        if self._waiters:
            return None
        value = try_admit()
        if value is not None:
            self._rate.record()
        return value

    async def admit(
        self,
        try_admit: Callable[[], T | None],
        *,
        on_abandoned: Callable[[T], None] | None = None,
    ) -> T:
        """Return what `try_admit` yields, waiting in line for it if needed.

        `on_abandoned` receives a value obtained for this caller after it was cancelled (it can no
        longer use it): pass it whenever the value holds capacity, so that capacity is not lost.
        """
        value = self.admit_now(try_admit)
        if value is not None:
            return value
        if len(self._waiters) >= self._max_size:
            raise QueueFullError(f"admission queue is full ({self._max_size} waiting)", retry_after=self.retry_after())
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(try_admit, future)
        self._waiters.append(waiter)
        timer = asyncio.ensure_future(self._expire(waiter))
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter, on_abandoned)
            raise
        finally:
            timer.cancel()

    async def admit_async(
        self,
        try_admit: Callable[[], Awaitable[T | None]],
        *,
        retry_in: Callable[[], float],
        before_waiting: Callable[[], None] | None = None,
    ) -> T:
        """`admit` for a `try_admit` that awaits; see the module docstring. `before_waiting` runs when the
        caller is about to wait, and may raise to refuse it instead. `try_admit` must itself hand back what
        it obtained when cancelled."""
        if not self._waiters:
            value = await try_admit()
            if value is not None:
                self._rate.record()
                return value
        if before_waiting is not None:
            before_waiting()
        if len(self._waiters) >= self._max_size:
            raise QueueFullError(f"admission queue is full ({self._max_size} waiting)", retry_after=self.retry_after())
        waiter: _Waiter[T] = _Waiter(None, asyncio.get_running_loop().create_future(), asyncio.Event())
        turn = waiter.turn
        assert turn is not None
        self._waiters.append(waiter)
        timer = asyncio.ensure_future(self._expire(waiter))
        try:
            while True:
                await self._my_turn(waiter, turn, retry_in)
                value = await try_admit()
                if value is not None:
                    self._rate.record()
                    return value
                if before_waiting is not None:
                    before_waiting()  # what this try learnt (a window full elsewhere) may make waiting hopeless
        finally:
            timer.cancel()
            if not waiter.future.done():
                waiter.future.cancel()
            elif not waiter.future.cancelled():
                waiter.future.exception()  # a timeout that came while the last try was served: retrieved
            if self._leave(waiter):
                self.notify()

    async def _my_turn(self, waiter: _Waiter[T], turn: asyncio.Event, retry_in: Callable[[], float]) -> None:
        """Return when `waiter`, at the head of the line, is notified or has waited `retry_in()` seconds;
        raise its `QueueTimeoutError` when the wait timed out."""
        while True:
            if self._waiters and self._waiters[0] is waiter:
                delay = retry_in()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay if delay < math.inf else None):
                        await turn.wait()
            else:
                await turn.wait()
            turn.clear()
            if waiter.future.done():
                waiter.future.result()  # raises the QueueTimeoutError
            if self._waiters and self._waiters[0] is waiter:
                return

    def notify(self) -> None:
        """Capacity may have been freed: retry waiters from the head while they are served."""
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # cancelled; its task has not yet run to take itself out
                self._waiters.popleft()
                continue
            if head.try_admit is None:  # a waiter of admit_async asks for itself
                assert head.turn is not None
                head.turn.set()
                return
            try:
                value = head.try_admit()
            except Exception as exc:  # the error is this waiter's answer, not the notifier's problem
                self._waiters.popleft()
                head.future.set_exception(exc)
                continue
            if value is None:
                return
            self._waiters.popleft()
            self._rate.record()
            head.future.set_result(value)

    def admission_rate(self) -> float:
        """Admissions per second over the recent window."""
        return self._rate.per_second()

    def retry_after(self) -> float:
        """Whole seconds (>= 1, capped) a rejected caller should wait: the time to serve everyone ahead.

        With no recent admissions the rate is taken as one per window, so the hint still grows with
        the depth instead of collapsing to a constant.
        """
        rate = max(self._rate.count(), 1) / self._rate.window
        seconds = math.ceil(round((self.depth + 1) / rate, 6))
        return float(min(max(seconds, 1), self._max_retry_after))

    def snapshot(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "max_size": self._max_size,
            "timeout": self._timeout,
            "admissions_per_second": self.admission_rate(),
        }

    async def _expire(self, waiter: _Waiter[T]) -> None:
        await self._sleep(self._timeout)
        if waiter.future.done():
            return
        was_head = self._leave(waiter)
        waiter.future.set_exception(
            QueueTimeoutError(f"no capacity within {self._timeout:g}s", retry_after=self.retry_after())
        )
        if waiter.turn is not None:
            waiter.turn.set()
        if was_head:
            self.notify()

    def _abandon(self, waiter: _Waiter[T], on_abandoned: Callable[[T], None] | None) -> None:
        """The waiting task was cancelled: leave the line, and hand back anything obtained for it."""
        was_head = self._leave(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
        # exception() also marks a stored error as retrieved, so it is not reported as lost.
        if future.cancelled() or future.exception() is not None:
            if was_head:
                self.notify()
            return
        if on_abandoned is not None:
            on_abandoned(future.result())
        self.notify()

    def _leave(self, waiter: _Waiter[T]) -> bool:
        """Take `waiter` out of the line if it is still there; True when it was the head."""
        if not self._waiters:
            return False
        was_head = self._waiters[0] is waiter
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        return was_head
