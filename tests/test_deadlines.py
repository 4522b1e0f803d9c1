"""The hot path's time limits without a timer each (core/aio.py, dispatch/deadlines.py), on a loop whose clock the
test moves: `Deadlines` (request budgets, one timer for all) and `IdleWatchdog` (a stream's silences)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVarTuple

import pytest

from llm_service.core.aio import Deadlines, running_task
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.dispatch.deadlines import IdleWatchdog
from llm_service.core.llm.models import LLMChunk, ProviderTimeoutError

Ts = TypeVarTuple("Ts")


class FakeTime:
    """The running loop's clock, moved by the test; timers whose time has come run at the next yield."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], object], asyncio.TimerHandle]] = []
        real_call_at = loop.call_at

        def call_at(
            when: float, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
        ) -> asyncio.TimerHandle:
            handle = real_call_at(1e12, callback, *args)  # never fires by itself
            self.timers.append((when, lambda: callback(*args), handle))
            return handle

        loop.time = lambda: self.now  # type: ignore[method-assign]
        loop.call_at = call_at  # type: ignore[method-assign]

    def pending(self) -> int:
        return sum(1 for _, _, handle in self.timers if not handle.cancelled())

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now and not t[2].cancelled()]
        self.timers = [t for t in self.timers if t not in due]
        for _, run, handle in due:
            handle.cancel()
            run()
        for _ in range(5):
            await asyncio.sleep(0)


def run(test: Callable[[FakeTime], Awaitable[None]]) -> None:
    async def main() -> None:
        await test(FakeTime(asyncio.get_running_loop()))

    asyncio.run(main())


async def _budgeted(deadlines: Deadlines, work: Awaitable[Any]) -> str:
    deadline = deadlines.start()
    try:
        await work
        return "done"
    except asyncio.CancelledError:
        if deadline is None or not deadline.expired():
            raise
        return "expired"
    finally:
        deadlines.finish(deadline)


def test_deadlines_expire_each_task_at_its_own_time_with_one_timer() -> None:
    async def scenario(clock: FakeTime) -> None:
        deadlines = Deadlines(10.0)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(_budgeted(deadlines, loop.create_future()))
        await clock.advance(0)
        await clock.advance(4)
        second = asyncio.create_task(_budgeted(deadlines, loop.create_future()))
        await clock.advance(0)
        assert clock.pending() == 1  # one timer for both
        await clock.advance(6)  # the first one's time
        assert first.done() and first.result() == "expired"
        assert not second.done()
        await clock.advance(3.9)
        assert not second.done()
        await clock.advance(0.1)
        assert second.result() == "expired"
        assert clock.pending() == 0

    run(scenario)


def test_deadlines_that_outlive_their_event_loop_still_limit_tasks_on_the_next_one() -> None:
    deadlines = Deadlines(10.0)

    async def left_pending(clock: FakeTime) -> None:  # the loop closes with the timer still set
        task = asyncio.create_task(_budgeted(deadlines, asyncio.get_running_loop().create_future()))
        await clock.advance(1)
        task.cancel()
        await clock.advance(0)

    async def next_loop(clock: FakeTime) -> None:
        task = asyncio.create_task(_budgeted(deadlines, asyncio.get_running_loop().create_future()))
        await clock.advance(0)
        assert clock.pending() == 1  # a timer on this loop, not only the dead one's
        await clock.advance(10)
        assert task.result() == "expired"

    run(left_pending)
    run(next_loop)


def test_running_task_is_the_task_of_this_thread_even_while_another_threads_loop_runs_one() -> None:
    inside = threading.Event()
    release = threading.Event()
    found: list[object] = []

    async def other_thread() -> None:
        running_task()  # its loop is the one remembered now
        inside.set()
        release.wait(10)  # a task step in progress on that loop, holding no await

    thread = threading.Thread(target=asyncio.run, args=(other_thread(),))
    thread.start()
    try:
        assert inside.wait(10)

        async def here() -> None:
            found.append(running_task() is asyncio.current_task())

        asyncio.run(here())
    finally:
        release.set()
        thread.join(10)
    assert found == [True]


def test_a_finished_task_is_not_cancelled_and_its_entry_lets_go_of_it() -> None:
    async def scenario(clock: FakeTime) -> None:
        deadlines = Deadlines(10.0)
        quick = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(_budgeted(deadlines, quick))
        await clock.advance(0)
        await clock.advance(1)
        quick.set_result(None)
        await clock.advance(0)
        assert task.result() == "done"
        assert all(entry.task is None for entry in deadlines._entries)
        await clock.advance(20)  # the timer passes the finished entry: nothing to cancel
        assert not deadlines._entries and clock.pending() == 0

    run(scenario)


def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    async def scenario(clock: FakeTime) -> None:
        deadlines = Deadlines(10.0)
        never = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(_budgeted(deadlines, never))
        await clock.advance(0)
        await clock.advance(1)
        task.cancel()
        await clock.advance(0)
        assert task.cancelled()

    run(scenario)


def test_the_queue_of_deadlines_stays_about_as_long_as_the_running_tasks() -> None:
    async def scenario(clock: FakeTime) -> None:
        deadlines = Deadlines(600.0)
        never = asyncio.get_running_loop().create_future()
        slow = asyncio.create_task(_budgeted(deadlines, never))  # holds the head for 600 s
        await clock.advance(0)
        for _ in range(1000):
            await _budgeted(deadlines, asyncio.sleep(0))
        assert len(deadlines._entries) <= 4 * 2 + 64
        slow.cancel()
        await clock.advance(0)

    run(scenario)


def test_no_limit_means_no_deadline_and_no_timer() -> None:
    async def scenario(clock: FakeTime) -> None:
        deadlines = Deadlines(float("inf"))
        assert await _budgeted(deadlines, asyncio.sleep(0)) == "done"
        assert clock.pending() == 0

    run(scenario)


class _Silent:
    """An upstream stream: a chunk whenever the test releases one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[LLMChunk] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[LLMChunk]:
        return self

    async def __anext__(self) -> LLMChunk:
        return await self.queue.get()


def _chunk() -> LLMChunk:
    return LLMChunk(id="c", created=0, model="m", provider=ProviderID.OPENAI, choices=[])


def test_the_idle_watchdog_lets_a_steady_stream_go_on_with_one_timer_per_limit() -> None:
    async def scenario(clock: FakeTime) -> None:
        watchdog = IdleWatchdog(10.0, ProviderID.OPENAI)
        stream = _Silent()
        for _ in range(30):  # a chunk every 3 s for 90 s, each wait well inside the limit
            waiting = asyncio.create_task(watchdog.next(stream))
            await clock.advance(0)
            await clock.advance(3)
            stream.queue.put_nowait(_chunk())
            await clock.advance(0)
            assert waiting.result().id == "c"
        assert len(clock.timers) <= 10  # rescheduled only when it fired: about once per 10 s
        watchdog.close()

    run(scenario)


def test_the_idle_watchdog_ends_a_wait_past_its_limit_with_the_providers_timeout() -> None:
    async def scenario(clock: FakeTime) -> None:
        watchdog = IdleWatchdog(10.0, ProviderID.OPENAI)
        stream = _Silent()
        stream.queue.put_nowait(_chunk())
        assert (await watchdog.next(stream)).id == "c"
        await clock.advance(8)  # between waits: time spent elsewhere does not count
        waiting = asyncio.create_task(watchdog.next(stream))
        await clock.advance(0)
        await clock.advance(9.9)
        assert not waiting.done()
        await clock.advance(0.2)
        with pytest.raises(ProviderTimeoutError, match="no next chunk within 10s"):
            waiting.result()

    run(scenario)
