"""The running task, without asking the operating system for the process id every time.

CPython 3.11 checks `getpid()` (a system call: 1-3 µs on the benchmark machine's VMs) inside every
`asyncio.get_running_loop()` and every `asyncio.current_task()` without a loop, to catch a loop carried
over a fork. The hot path asks for the running task a few times a request and twice a chunk. Asked with
the loop given, `current_task(loop)` is a dictionary lookup: `running_task()` tries the loop it found last
and asks the slow way only when that loop is not the one running (another loop in tests, a new process).
"""

from __future__ import annotations

import asyncio
from typing import Any

_last_loop: asyncio.AbstractEventLoop | None = None


def running_task() -> asyncio.Task[Any]:
    """The task running now (it must be called inside one): `asyncio.current_task()`, cheaper."""
    global _last_loop
    task = asyncio.current_task(_last_loop) if _last_loop is not None else None
    if task is None:
        _last_loop = asyncio.get_running_loop()
        task = asyncio.current_task(_last_loop)
        if task is None:
            raise RuntimeError("running_task() called outside a task")
    return task
