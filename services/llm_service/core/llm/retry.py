"""Retry policy as small pure functions, and `retry_async()` which applies them.

`parse_retry_after()` reads what upstreams send (`retry-after-ms`, `retry-after` in seconds or as an
HTTP date); `should_retry()` decides from our error types; `backoff_delay()` is exponential with
jitter. Sleeping and randomness are injected so tests never wait.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from llm_service.core.llm.models import ProviderError

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
