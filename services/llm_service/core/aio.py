"""asyncio on the hot path: the running task without a system call, and time limits without a timer each.

`running_task()`: the running task, without asking the operating system for the process id every time.

CPython 3.11 checks `getpid()` (a system call: 1-3 µs on the benchmark machine's VMs) inside every
`asyncio.get_running_loop()` and every `asyncio.current_task()` without a loop, to catch a loop carried
over a fork. The hot path asks for the running task a few times a request and twice a chunk. Asked with
the loop given, `current_task(loop)` is a dictionary lookup: `running_task()` tries the loop it found last
and asks the slow way only when that loop is not the one running (another loop in tests, a new process).

`Deadlines`: time limits of one length for many tasks, by one timer for all of them (`asyncio.timeout`
schedules a timer and cancels it every time it is entered, about 13 µs on uvloop): the dispatcher's
request budgets.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

_last_loop: asyncio.AbstractEventLoop | None = None
_last_thread = 0  # the thread that ran `_last_loop`: another thread's loop may be mid-task too
#: The running task of each loop, as asyncio keeps it: `current_task(loop)` is only a Python function
#: around `.get(loop)` in 3.11 (a call less, each time the hot path asks). An interpreter that keeps it
#: elsewhere gets `current_task` itself.
_CURRENT_TASKS = getattr(asyncio.tasks, "_current_tasks", None)
#: `asyncio.current_task(loop)` for a loop known to run in this thread, without a Python call of its own.
current_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _CURRENT_TASKS.get if isinstance(_CURRENT_TASKS, dict) else asyncio.current_task
)


def running_loop() -> asyncio.AbstractEventLoop:
    """`asyncio.get_running_loop()`, cheaper (RuntimeError outside one): a loop that runs in this thread
    is the one running here."""
    global _last_loop, _last_thread
    loop, thread = _last_loop, threading.get_ident()
    if loop is None or _last_thread != thread or not loop.is_running():
        loop = _last_loop = asyncio.get_running_loop()
        _last_thread = thread
    return loop


def running_task() -> asyncio.Task[Any]:
    """The task running now (it must be called inside one): `asyncio.current_task()`, cheaper."""
    global _last_loop, _last_thread
    loop, thread = _last_loop, threading.get_ident()
    task = current_task_of(loop) if loop is not None and _last_thread == thread else None
    if task is None:
        loop = _last_loop = asyncio.get_running_loop()
        _last_thread = thread
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("running_task() called outside a task")
    return task


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
        loop = task.get_loop()
        if loop is not self._loop:  # a first start, or a new loop: what the last one held died with it
            self._loop, self._handle, self._entries, self._live = loop, None, deque(), 0
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
