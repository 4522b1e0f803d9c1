"""Resumable streams' events in Redis (`StreamLog`), so that any replica serves a resumption.

One Redis stream per resumable stream, `<prefix>stream:<stream id>`. Event `i` is the entry `0-<i + 1>`
(the index is the entry id: a reader sees where it is, and a gap when there is one), its one field `e`
the encoded SSE event; the entry after the last event has the field `end`. Each write is
`XADD ... MAXLEN ~ keep` (at least the last `keep` events stay), and every batch renews the key's
`PEXPIRE` to the resume TTL, so an ended stream, or one whose replica died, goes `ttl` after its last write.

Writes are never awaited by the stream: `append()` queues the event, and what is queued goes out in one
pipeline (an `XADD` per event, one `PEXPIRE` per stream) sent by one writer task per process at the end
of the event loop's turn, or as soon as the pipeline before it is answered: one at a time, so that a
stream's events reach Redis in order (the `RedisLink`, with several pipelines in flight, would not keep
it). While Redis is unreachable nothing is written; a stream that missed an event (Redis unreachable, or
refusing the write: out of memory) is not written any more but for its end marker, which a reader finds
after the gap (it then stops).

Readers `XRANGE` what is kept after their index, and when they have caught up wait for more with
`XREAD BLOCK` (shorter than the socket timeout) on a connection of their own from the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from llm_service.core.llm.dispatch.redis_link import Command, RedisLink
from llm_service.core.llm.dispatch.state import StateUnavailable, StreamPage

#: Entries read at most per call.
PAGE = 500
_EVENT, _END = b"e", b"end"


class RedisStreamLog:
    def __init__(
        self,
        client: Redis,
        link: RedisLink,
        *,
        prefix: str,
        keep: int,
        ttl: float,
        timeout: float,
        shared: Callable[[], bool],
        failed: Callable[[BaseException], None],
    ) -> None:
        """`shared()`: whether Redis is reachable now; `failed(error)`: a command failed (the link, or
        Redis answering it with an error: `link_down()`)."""
        self._client = client
        self._link = link
        self._prefix = prefix + "stream:"
        self._keep = max(keep, 1)
        self._ttl_ms = max(math.ceil(ttl * 1000), 1)
        self._block_ms = max(int(timeout * 1000) // 2, 1)  # a blocked read must end before the socket times out
        self._shared = shared
        self._failed = failed
        self._queued: list[tuple[str, int, bytes | None]] = []
        self._scheduled = False
        self._writing: asyncio.Future[None] | None = None  # the one pipeline of writes in flight
        #: Streams with an event that never reached Redis: only their end is written (readers stop at the gap).
        self._broken: set[str] = set()

    def append(self, key: str, index: int, event: bytes) -> None:
        if not self._shared():
            self._broken.add(key)
        elif not self._broken or key not in self._broken:
            self._queue(key, index, event)

    def end(self, key: str, count: int) -> None:
        self._broken.discard(key)
        if self._shared():
            self._queue(key, count, None)

    async def read(self, key: str, after: int, *, wait: float) -> StreamPage | None:
        if not self._shared():
            raise StateUnavailable("shared state unreachable")
        name = self._prefix + key
        try:
            oldest, entries = await self._both(
                ("XRANGE", name, "-", "+", "COUNT", 1), ("XRANGE", name, _entry_id(after + 1), "+", "COUNT", PAGE)
            )
            if not oldest:
                return None
            if not entries and wait > 0:
                block = max(min(math.ceil(wait * 1000), self._block_ms), 1)
                reply: Any = await self._client.xread({name: _entry_id(after)}, count=PAGE, block=block)
                entries = (list(reply.values()) if isinstance(reply, dict) else reply)[0][1] if reply else []
        except Exception as exc:
            self._failed(exc)
            raise StateUnavailable("shared state unreachable") from None
        return _page(oldest, entries)

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) until what was appended so far is written (at close)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._writing is not None or self._queued:
                    if self._writing is None:
                        self._flush()
                    assert self._writing is not None
                    await asyncio.shield(self._writing)

    def _queue(self, key: str, index: int, event: bytes | None) -> None:
        self._queued.append((key, index, event))
        if self._writing is None:
            self._queue_flush()

    def _flush(self) -> None:
        self._scheduled = False
        if self._writing is None and self._queued:
            queued, self._queued = self._queued, []
            self._writing = asyncio.ensure_future(self._write(queued))

    async def _write(self, queued: list[tuple[str, int, bytes | None]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        names: dict[str, None] = {}
        for key, index, event in queued:
            name = self._prefix + key
            field = (_EVENT, event) if event is not None else (_END, b"")
            pipe.execute_command("XADD", name, "MAXLEN", "~", self._keep, _entry_id(index), *field)
            names[name] = None
        for name in names:
            pipe.execute_command("PEXPIRE", name, self._ttl_ms)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: none of it was written
            replies = [exc] * len(queued)
        finally:
            self._writing = None
            if self._queued:
                self._queue_flush()
        ended = {key for key, _, event in queued if event is None}
        for (key, _, _), reply in zip(queued, replies, strict=False):
            if isinstance(reply, Exception):
                self._failed(reply)  # a link down degrades; an event refused (out of memory) is lost, its stream stops
                if key not in ended:
                    self._broken.add(key)

    def _queue_flush(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _both(self, first: Command, second: Command) -> tuple[Any, Any]:
        """Two commands in one pipeline; the first failure raised (neither left unretrieved)."""
        replies = await asyncio.gather(self._link.call(first), self._link.call(second), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies[0], replies[1]


def _entry_id(index: int) -> str:
    return f"0-{index + 1}"


def _page(oldest: list[Any], entries: list[Any]) -> StreamPage:
    events: list[tuple[int, bytes]] = []
    end = None
    for entry_id, fields in entries:
        if _END in fields:
            end = _index(entry_id)
            break
        events.append((_index(entry_id), fields[_EVENT]))
    return StreamPage(oldest=_index(oldest[0][0]), events=events, end=end)


def _index(entry_id: bytes) -> int:
    return int(entry_id.rpartition(b"-")[2]) - 1
