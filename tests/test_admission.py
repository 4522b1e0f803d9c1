"""Admission queue: fast path, FIFO, backpressure, timeout, cancellation and Retry-After, with no real waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llm_service.core.llm.dispatch.admission import (
    AdmissionQueue,
    QueueFullError,
    QueueTimeoutError,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ManualSleep:
    """Records each requested delay and blocks until the test fires it; counts cancelled sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.cancelled = 0
        self._events: list[asyncio.Event] = []

    async def __call__(self, delay: float) -> None:
        event = asyncio.Event()
        self.delays.append(delay)
        self._events.append(event)
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def fire(self, index: int) -> None:
        self._events[index].set()


class Slots:
    """Capacity as numbered tokens; `release` frees one and notifies the queue, as the dispatcher would."""

    def __init__(self, queue: AdmissionQueue[int], free: int = 0) -> None:
        self.queue = queue
        self.free = free
        self.issued = 0

    def try_take(self) -> int | None:
        if self.free == 0:
            return None
        self.free -= 1
        self.issued += 1
        return self.issued

    def release(self, _token: int | None = None) -> None:
        self.free += 1
        self.queue.notify()


async def cancel(tasks: list[asyncio.Task[int]]) -> None:
    """End waiters a test no longer needs, so no task is left pending."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (a bounded number of loop turns, never wall time)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def outcome(task: asyncio.Task[Any]) -> Any:
    """The task's result once it has finished: a test that would hang fails instead."""
    await until(task.done)
    return task.result()


@pytest.fixture
def sleep() -> ManualSleep:
    return ManualSleep()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_queue(sleep: ManualSleep, clock: Clock) -> Callable[..., AdmissionQueue[int]]:
    def make(max_size: int = 10, **kwargs: Any) -> AdmissionQueue[int]:
        return AdmissionQueue[int](max_size=max_size, timeout=TIMEOUT, clock=clock, sleep=sleep, **kwargs)

    return make


async def enqueue(queue: AdmissionQueue[int], try_admit: Callable[[], int | None], **kwargs: Any) -> asyncio.Task[int]:
    """Start a waiter and return once it stands in the queue."""
    depth = queue.depth
    task = asyncio.ensure_future(queue.admit(try_admit, **kwargs))
    await until(lambda: queue.depth == depth + 1)
    return task


# --------------------------------------------------------------------------------------------------
# Fast path and FIFO
# --------------------------------------------------------------------------------------------------


async def test_fast_path_returns_at_once_without_queueing_or_a_timer(make_queue, sleep) -> None:
    queue = make_queue()
    slots = Slots(queue, free=1)
    assert await queue.admit(slots.try_take) == 1
    assert queue.depth == 0
    assert sleep.delays == []


async def test_waiters_are_served_in_arrival_order(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    served: list[str] = []

    async def client(name: str) -> None:
        await queue.admit(slots.try_take)
        served.append(name)

    tasks = []
    for name in "abcde":
        tasks.append(asyncio.ensure_future(client(name)))
        await until(lambda: queue.depth == len(tasks))
    for _ in range(5):
        slots.release()
    for task in tasks:
        await outcome(task)
    assert served == list("abcde")
    assert queue.depth == 0


async def test_a_newcomer_does_not_jump_the_line_even_when_capacity_is_free(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    first = await enqueue(queue, slots.try_take)
    slots.free = 1  # freed without notify(): the head has not been retried yet
    calls: list[str] = []

    def newcomer_try() -> int | None:
        calls.append("newcomer")
        return slots.try_take()

    second = await enqueue(queue, newcomer_try)
    assert calls == []  # it queued behind the head instead of taking the free slot
    queue.notify()
    assert await outcome(first) == 1
    assert not second.done()
    slots.release()
    assert await outcome(second) == 2


async def test_only_the_head_is_retried_and_only_on_notify(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    attempts = {"head": 0, "second": 0}

    def counting(name: str) -> Callable[[], int | None]:
        def attempt() -> int | None:
            attempts[name] += 1
            return slots.try_take()

        return attempt

    head = await enqueue(queue, counting("head"))
    second = await enqueue(queue, counting("second"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert attempts == {"head": 1, "second": 0}  # the head's one try was its fast path, on arrival
    queue.notify()  # no capacity: the head is tried again, the one behind it not at all
    assert attempts == {"head": 2, "second": 0}
    slots.release()
    assert attempts == {"head": 3, "second": 1}  # head served, next head tried in the same pass
    assert await outcome(head) == 1
    slots.release()
    assert await outcome(second) == 2


async def test_one_notify_drains_as_many_waiters_as_capacity_allows(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    tasks = [await enqueue(queue, slots.try_take) for _ in range(4)]
    slots.free = 3
    queue.notify()
    assert queue.depth == 1
    assert [await outcome(task) for task in tasks[:3]] == [1, 2, 3]
    assert not tasks[3].done()
    slots.release()
    assert await outcome(tasks[3]) == 4


async def test_an_error_from_try_admit_goes_to_that_waiter_and_the_next_head_is_served(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)

    arrived = False

    def broken() -> int | None:
        nonlocal arrived
        if not arrived:  # no room on arrival; by the retry every deployment has opened its breaker
            arrived = True
            return None
        raise LookupError("every deployment is open")

    failing = await enqueue(queue, broken)
    healthy = await enqueue(queue, slots.try_take)
    slots.release()  # the notifier is not hurt by the head's error
    with pytest.raises(LookupError, match="every deployment is open"):
        await outcome(failing)
    assert await outcome(healthy) == 1
    assert queue.depth == 0


# --------------------------------------------------------------------------------------------------
# Backpressure: full queue and timeout
# --------------------------------------------------------------------------------------------------


async def test_a_full_queue_rejects_at_once_with_a_retry_after(make_queue) -> None:
    queue = make_queue(max_size=2)
    slots = Slots(queue)
    waiting = [await enqueue(queue, slots.try_take) for _ in range(2)]
    with pytest.raises(QueueFullError) as caught:
        await queue.admit(slots.try_take)
    assert caught.value.retry_after >= 1
    assert caught.value.retry_after == int(caught.value.retry_after)
    assert queue.depth == 2
    slots.free = 2
    queue.notify()
    assert [await outcome(task) for task in waiting] == [1, 2]


async def test_a_zero_size_queue_only_admits_on_the_fast_path(make_queue) -> None:
    queue = make_queue(max_size=0)
    slots = Slots(queue, free=1)
    assert await queue.admit(slots.try_take) == 1
    with pytest.raises(QueueFullError):
        await queue.admit(slots.try_take)


async def test_a_wait_past_the_timeout_raises_and_leaves_the_queue(make_queue, sleep) -> None:
    queue = make_queue()
    slots = Slots(queue)
    task = await enqueue(queue, slots.try_take)
    await until(lambda: len(sleep.delays) == 1)
    assert sleep.delays == [TIMEOUT]
    sleep.fire(0)
    with pytest.raises(QueueTimeoutError) as caught:
        await outcome(task)
    assert caught.value.retry_after >= 1
    assert queue.depth == 0
    slots.release()  # the capacity is not handed to the departed waiter
    assert slots.free == 1


async def test_when_the_head_times_out_the_next_head_is_tried(make_queue, sleep) -> None:
    queue = make_queue()
    picky_attempts: list[int] = []

    def picky() -> int | None:  # e.g. waits for a different, busier deployment
        picky_attempts.append(1)
        return None

    head = await enqueue(queue, picky)
    behind = await enqueue(queue, lambda: 7)
    await until(lambda: len(sleep.delays) == 2)
    sleep.fire(0)
    with pytest.raises(QueueTimeoutError):
        await outcome(head)
    assert await outcome(behind) == 7
    assert picky_attempts == [1]  # its fast path on arrival; never retried after it left
    await until(lambda: sleep.cancelled == 1)  # the served waiter's timer was stopped


async def test_a_served_waiter_stops_its_timer(make_queue, sleep) -> None:
    queue = make_queue()
    slots = Slots(queue)
    task = await enqueue(queue, slots.try_take)
    await until(lambda: len(sleep.delays) == 1)
    slots.release()
    assert await outcome(task) == 1
    await until(lambda: sleep.cancelled == 1)


# --------------------------------------------------------------------------------------------------
# Cancellation (client disconnect)
# --------------------------------------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_at_once_and_the_next_is_served(make_queue, sleep) -> None:
    queue = make_queue()
    slots = Slots(queue)
    leaving = await enqueue(queue, slots.try_take)
    staying = await enqueue(queue, slots.try_take)
    slots.free = 1  # capacity freed but not yet announced
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome(leaving)
    assert await outcome(staying) == 1  # the head's departure let the next head try
    assert queue.depth == 0
    await until(lambda: sleep.cancelled == 2)


async def test_notify_between_a_cancel_and_its_cleanup_skips_the_departed_head(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    head_retries: list[int] = []

    def head_try() -> int | None:
        head_retries.append(1)
        return slots.try_take()

    head = await enqueue(queue, head_try)
    behind = await enqueue(queue, slots.try_take)
    head.cancel()  # its task has not run yet, so it still stands in the queue
    slots.release()
    assert head_retries == [1]  # only its fast path on arrival: no slot is taken for a departed waiter
    assert await outcome(behind) == 1
    with pytest.raises(asyncio.CancelledError):
        await outcome(head)
    assert (queue.depth, slots.free) == (0, 0)


async def test_a_cancelled_waiter_behind_the_head_just_leaves(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    head = await enqueue(queue, slots.try_take)
    middle = await enqueue(queue, slots.try_take)
    tail = await enqueue(queue, slots.try_take)
    middle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome(middle)
    assert queue.depth == 2
    slots.free = 2
    queue.notify()
    assert (await outcome(head), await outcome(tail)) == (1, 2)


async def test_a_value_obtained_for_a_waiter_cancelled_after_admission_is_handed_back(make_queue) -> None:
    queue = make_queue()
    slots = Slots(queue)
    abandoned: list[int] = []

    def give_back(token: int) -> None:
        abandoned.append(token)
        slots.free += 1  # release without notify: the queue itself passes the slot on

    first = await enqueue(queue, slots.try_take, on_abandoned=give_back)
    second = await enqueue(queue, slots.try_take)
    slots.free = 1
    queue.notify()  # the slot goes to `first`, whose task has not resumed yet
    assert queue.depth == 1
    first.cancel()  # ...and the client disconnects before it does
    with pytest.raises(asyncio.CancelledError):
        await outcome(first)
    assert abandoned == [1]
    assert await outcome(second) == 2  # the slot was not lost
    assert slots.free == 0
    assert queue.depth == 0


async def test_a_timeout_racing_a_cancellation_reports_no_lost_error(make_queue, sleep) -> None:
    queue = make_queue()
    task = await enqueue(queue, lambda: None, on_abandoned=pytest.fail)
    await until(lambda: len(sleep.delays) == 1)
    sleep.fire(0)
    await until(lambda: queue.depth == 0)  # timed out; the waiter's task has not resumed yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome(task)


# --------------------------------------------------------------------------------------------------
# Retry-After and the service rate
# --------------------------------------------------------------------------------------------------


async def admit_now(queue: AdmissionQueue[int], times: int) -> None:
    for _ in range(times):
        await queue.admit(lambda: 1)


async def test_retry_after_grows_with_depth(make_queue) -> None:
    queue = make_queue(max_size=50)
    await admit_now(queue, 10)  # 1 admission/s over the 10 s window
    hints = [queue.retry_after()]
    waiting = []
    for _ in range(3):
        waiting += [await enqueue(queue, lambda: None) for _ in range(3)]
        hints.append(queue.retry_after())
    assert hints == [1.0, 4.0, 7.0, 10.0]
    await cancel(waiting)


async def test_retry_after_shrinks_with_a_higher_service_rate(make_queue) -> None:
    slow, fast = make_queue(), make_queue()
    await admit_now(slow, 2)
    await admit_now(fast, 40)
    waiting = [await enqueue(queue, lambda: None) for queue in (slow, fast) for _ in range(4)]
    assert slow.retry_after() > fast.retry_after() >= 1
    assert (slow.retry_after(), fast.retry_after()) == (25.0, 2.0)
    await cancel(waiting)


async def test_retry_after_is_whole_seconds_at_least_one_and_capped(make_queue) -> None:
    busy = make_queue()
    await admit_now(busy, 1000)
    assert busy.retry_after() == 1.0
    idle = make_queue(max_size=20, max_retry_after=45.5)
    waiting = [await enqueue(idle, lambda: None) for _ in range(20)]
    assert idle.retry_after() == 46.0
    await cancel(waiting)


async def test_the_service_rate_forgets_admissions_older_than_the_window(make_queue, clock) -> None:
    queue = make_queue()
    await admit_now(queue, 30)
    assert queue.admission_rate() == 3.0
    clock.now += 5
    await admit_now(queue, 10)
    assert queue.admission_rate() == 4.0
    clock.now += 6  # the first 30 have aged out
    assert queue.admission_rate() == 1.0
    clock.now += 100
    assert queue.admission_rate() == 0.0
    assert queue.retry_after() == 10.0  # no recent service: one admission per window is assumed


async def test_snapshot_reports_depth_limits_and_rate(make_queue) -> None:
    queue = make_queue(max_size=5)
    await admit_now(queue, 20)
    task = await enqueue(queue, lambda: None)
    assert queue.snapshot() == {"depth": 1, "max_size": 5, "timeout": TIMEOUT, "admissions_per_second": 2.0}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome(task)
    assert queue.snapshot()["depth"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_size": -1}, id="negative-size"),
        pytest.param({"timeout": 0}, id="zero-timeout"),
        pytest.param({"rate_window": 0}, id="zero-window"),
        pytest.param({"max_retry_after": 0.5}, id="cap-below-one"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"max_size": 1, "timeout": 1.0} | kwargs
    with pytest.raises(ValueError, match="must be"):
        AdmissionQueue[int](**settings)
