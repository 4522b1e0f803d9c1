"""Commands to Redis in batches: whatever is asked within one turn of the event loop goes out together.

A burst of admissions arriving at once is one pipeline, one round trip, on one connection, instead of a
connection each. `call()` answers with a future; `send()` is fire-and-forget (the end of an admission,
a breaker opening), each failure reported to `on_error`. At most `max_batch` commands go in one
pipeline and `max_in_flight` pipelines at once; the rest wait for the next. Scripts go by SHA; one
Redis does not know (restarted, flushed) is sent again whole, in a second pipeline.

A command fails in one of two ways, told apart by `link_down()`:

    Exception
    ├── redis.exceptions.ResponseError   Redis answered this command with an error (out of memory
    │                                    under `noeviction`, a read-only replica, a script error):
    │                                    the link is fine, and so are the other commands of the batch
    └── anything else                    the link is down: refused, dropped, timed out (redis-py's
                                         ConnectionError and TimeoutError, OSError, ...); every command
                                         of the batch failed with it
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from llm_service.core.llm.dispatch.redis_scripts import SCRIPTS, Script

Command = tuple[Any, ...]


def script_command(script: Script, keys: Sequence[str], args: Sequence[Any]) -> Command:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def link_down(error: BaseException) -> bool:
    """Whether `error` says the link to Redis is down, rather than that Redis answered the command with an
    error. What is not known to be an answer counts as the link down, as every failure did before."""
    return not isinstance(error, ResponseError)


class RedisLink:
    def __init__(
        self,
        client: Redis,
        *,
        on_error: Callable[[BaseException], None],
        max_batch: int = 256,
        max_in_flight: int = 4,
    ) -> None:
        self._client = client
        self._on_error = on_error
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: deque[tuple[Command, asyncio.Future[Any] | None]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def call(self, command: Command) -> asyncio.Future[Any]:
        """The command's reply (or its error), once its batch has been answered."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(ConnectionError("the link to Redis is closed"))
            return future
        self._pending.append((command, future))
        self._schedule()
        return future

    def send(self, command: Command) -> None:
        """Send without waiting for the reply; a failure goes to `on_error`. Nothing, once closed (what
        ends at shutdown expires in Redis by itself)."""
        if self._closed:
            return
        self._pending.append((command, None))
        self._schedule()

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) until what was asked so far has been sent and answered."""
        deadline = asyncio.get_running_loop().time() + within
        while self._pending or self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=remaining)
            else:
                await asyncio.sleep(0)

    def cancel(self) -> None:
        """Give up on everything pending, and take nothing more (at close)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        while self._pending:
            _, future = self._pending.popleft()
            if future is not None and not future.done():
                future.cancel()

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any] | None]]) -> None:
        try:
            replies = await self._execute([command for command, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if future is not None:
                    future.cancel()
            raise
        except Exception as exc:  # the connection failed: every command of the batch failed with it
            replies = [exc] * len(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule()
        for (_, future), reply in zip(batch, replies, strict=True):
            failed = isinstance(reply, Exception)
            if future is None:
                if failed:  # each one: an error answer is about its command only
                    self._on_error(reply)
            elif future.done():
                continue
            elif failed:
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        replies = await self._pipeline(commands)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            again = await self._pipeline([_as_eval(commands[i]) for i in unknown])
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)


def _as_eval(command: Command) -> Command:
    """An EVALSHA the server did not know, as an EVAL of the script's source (which also caches it)."""
    if command[0] != "EVALSHA":
        return command
    return ("EVAL", SCRIPTS[command[1]].source, *command[2:])
