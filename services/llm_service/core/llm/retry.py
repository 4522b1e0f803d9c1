"""Retry policy as small pure functions, `retry_async()` which applies them to a call, and
`retry_async_generator()` which recovers a stream that breaks after its first chunk.

`parse_retry_after()` reads what upstreams send (`retry-after-ms`, `retry-after` in seconds or as an
HTTP date); `should_retry()` decides from our error types; `backoff_delay()` is exponential with
jitter. Sleeping and randomness are injected so tests never wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from llm_service.core.llm.models import LLMChunk, LLMServiceError, ProviderError, StreamInterruptedError
from llm_service.core.llm.streaming import Splice, SpliceMismatch, Transcript

log = logging.getLogger("llm_service.replay")

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_retries` extra attempts; waits grow from `backoff_base` to `backoff_max` seconds.

    An upstream that asks for a wait longer than `max_retry_after` is not retried: its error (with
    its Retry-After) goes back to the caller, who can schedule better than a held connection.
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 10.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait as the upstream asked, or None when it did not say (or said nonsense)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < math.inf:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
        return max(seconds, 0.0)
    return seconds if 0 <= seconds < math.inf else None


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """`6m0s`, `1.5s`, `12ms` (Go's duration format, as OpenAI's x-ratelimit-reset-*) -> seconds."""
    text = text.strip()
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """When the exhausted rate-limit window resets, from `x-ratelimit-remaining/reset-*` headers."""
    resets = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_go_duration(reset) if reset else None
        if seconds is None:
            continue
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0":
            return seconds
        resets.append(seconds)
    return max(resets) if resets else None


def should_retry(error: BaseException, attempt: int, policy: RetryPolicy) -> bool:
    """Whether attempt number `attempt` (0-based) that failed with `error` deserves another."""
    if attempt >= policy.max_retries or not isinstance(error, ProviderError) or not error.retryable:
        return False
    return error.retry_after is None or error.retry_after <= policy.max_retry_after


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Wait before retry `attempt` (0-based): base * 2^attempt, capped, minus up to `jitter` of it."""
    delay = min(policy.backoff_base * (2.0**attempt), policy.backoff_max)
    return delay * (1.0 - policy.jitter * rand())


def retry_delay(error: BaseException, attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """The upstream's own Retry-After when it gave one, else our backoff."""
    if isinstance(error, ProviderError) and error.retry_after is not None:
        return error.retry_after
    return backoff_delay(attempt, policy, rand)


async def retry_async(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Run `call` until it succeeds or `should_retry` says stop; the last error propagates."""
    attempt = 0
    while True:
        try:
            return await call()
        except ProviderError as error:
            if not should_retry(error, attempt, policy):
                raise
            await sleep(retry_delay(error, attempt, policy, rand))
            attempt += 1


#: Re-establishes a broken stream: given what was delivered and the failure, a new stream and whether
#: it continues the partial answer (True) or starts it again (False).
Reopen = Callable[[Transcript, ProviderError], Awaitable[tuple[AsyncIterator[LLMChunk], bool]]]


def retry_async_generator(
    first: AsyncIterator[LLMChunk], reopen: Reopen, *, max_buffer_chunks: int, max_replays: int
) -> ReplayingStream:
    """`first`'s chunks; when it fails with a retryable error after its first chunk, `reopen` gives a new
    stream that is joined to what was delivered without a duplicate or a gap (`Splice`), up to
    `max_replays` times. See `ReplayingStream`."""
    return ReplayingStream(first, reopen, max_buffer_chunks=max_buffer_chunks, max_replays=max_replays)


class ReplayingStream:
    """A stream that survives upstream failures after its first chunk.

    It keeps a `Transcript` of what it delivered while that is at most `max_buffer_chunks` chunks. On a
    retryable failure it closes the broken stream and asks `reopen` for a new one, then:
    - a re-generated answer is checked against the transcript and only its new part passes; an answer
      that differs ends the stream with `StreamInterruptedError` (never two answers spliced);
    - a continued answer passes as it comes (its usage moved to count the continued prefix as output).
    Past `max_buffer_chunks` chunks, with replays used up, for a failure that is not retryable, or when
    `reopen` fails, the original failure is raised: the client gets one error event.
    Every chunk keeps the first chunk's `id` and `created`, so the client sees one completion.
    """

    def __init__(
        self, first: AsyncIterator[LLMChunk], reopen: Reopen, *, max_buffer_chunks: int, max_replays: int
    ) -> None:
        self._stream = first
        self._reopen = reopen
        self._max_buffer = max_buffer_chunks
        self._replays_left = max_replays
        self._transcript: Transcript | None = Transcript() if max_replays > 0 and max_buffer_chunks > 0 else None
        self._splice: Splice | None = None
        #: Chunks a splice released at once, delivered one by one.
        self._ready: deque[LLMChunk] = deque()
        self._pinned: tuple[str, int] | None = None
        self._prefix_tokens = 0
        #: Streams re-established so far.
        self.replays = 0

    def __aiter__(self) -> ReplayingStream:
        return self

    async def __anext__(self) -> LLMChunk:
        if self._ready:
            chunk = self._ready.popleft()
        else:
            while True:
                try:
                    chunk = await anext(self._stream)
                except ProviderError as error:
                    await self._replace(error)
                    continue
                if self._splice is None:
                    break
                self._ready.extend(self._join(chunk))
                if self._ready:
                    chunk = self._ready.popleft()
                    break
        # Delivered here rather than by a method of its own: a call less at every chunk.
        pinned = self._pinned
        if pinned is None:
            self._pinned = (chunk.id, chunk.created)
        elif chunk.id != pinned[0] or chunk.created != pinned[1]:  # another attempt's
            chunk.id, chunk.created = pinned
            chunk.wire = None
        if self._prefix_tokens and chunk.usage is not None:
            usage = chunk.usage
            moved = min(self._prefix_tokens, usage.prompt_tokens)
            usage.prompt_tokens -= moved
            usage.completion_tokens += moved
        transcript = self._transcript
        if transcript is not None:
            transcript.add(chunk)
            if transcript.chunks > self._max_buffer:
                self._transcript = None  # past the buffer: no replay from here on (documented)
        return chunk

    def _join(self, chunk: LLMChunk) -> list[LLMChunk]:
        splice = self._splice
        assert splice is not None
        try:
            joined = splice.feed(chunk)
        except SpliceMismatch as exc:
            raise StreamInterruptedError(
                f"The upstream stream broke and the new attempt's answer did not match what was already "
                f"sent ({exc}); the stream ends here rather than join two different answers.",
                provider=chunk.provider,
            ) from None
        if splice.caught_up:
            self._splice = None
        return joined

    async def _replace(self, error: ProviderError) -> None:
        transcript = self._transcript
        if transcript is None or not error.retryable or self._replays_left <= 0:
            raise error
        self._replays_left -= 1
        await close_stream(self._stream)
        try:
            stream, continuing = await self._reopen(transcript, error)
        except LLMServiceError as failure:  # refused (a 400 to the prefix), at capacity, all open-circuited
            log.warning(
                "stream replay failed",
                extra={"fields": {"error": type(error).__name__, "replay_error": type(failure).__name__}},
            )
            raise error from failure
        self.replays += 1
        log.info(
            "stream replayed",
            extra={"fields": {"error": type(error).__name__, "continuing": continuing, "chunks": transcript.chunks}},
        )
        self._stream = stream
        self._splice = Splice(transcript, continuing=continuing)
        # A continuation is billed the whole prefix as prompt; a re-generation bills it as output itself.
        self._prefix_tokens = _estimate_tokens(transcript) if continuing else 0

    async def aclose(self) -> None:
        await close_stream(self._stream)


def _estimate_tokens(transcript: Transcript) -> int:
    """The tokens of a continued prefix, as the provider now counts them as prompt: ~4 characters each."""
    return math.ceil(sum(len(text) for text in transcript.channels().values()) / 4)


async def close_stream(stream: AsyncIterator[LLMChunk]) -> None:
    """Close `stream` if it can be closed (an async generator, a HeldStream), ending what it holds."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
