"""Admission limits of one deployment: concurrency, requests per minute, tokens per minute, 429 pauses.

`DeploymentLimiter.try_acquire(tokens)` admits a request now or refuses it (it never waits: the queue
decides what to do with a refusal), and `room_in(tokens)` says how long until the time-based limits
would let it in. RPM and TPM are one sliding 60-second window of admissions, each `(time, tokens)`:
an admission at `t` counts during `[t, t + 60)`. TPM counts the estimate from `estimate_tokens` at
admission; `Permit.release(used_tokens)` replaces it by what the provider reported, keeping the
admission time. Memory is one entry per request in the last minute (at most `rpm` of them).

Time comes only from the injected `clock`. The service is single-threaded asyncio and nothing here
awaits, so each call is atomic without a lock.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_service.core.llm.models import LLMRequest, TextPart, Usage

if TYPE_CHECKING:
    from llm_service.core.config.settings import Deployment

WINDOW_SECONDS = 60.0
#: Chat formats wrap every message in a few tokens of role and separators.
MESSAGE_OVERHEAD_TOKENS = 4
#: The completion reserve when the request sets neither max_completion_tokens nor max_tokens.
DEFAULT_COMPLETION_RESERVE = 256
#: An image (or other non-text part: audio, file) counts as OpenAI's high-detail 1024x1024 image.
#: Its bytes would be useless: a base64 data URL is megabytes for a few hundred tokens.
MEDIA_PART_TOKENS = 765
_BYTES_PER_TOKEN = 4


def estimate_tokens(request: LLMRequest) -> int:
    """Tokens to reserve for `request` in a TPM window: a deliberate over-estimate, corrected later.

    UTF-8 bytes / 4 (rounded up) over the messages' text, refusals and tool calls, the tool
    definitions' and response schema's JSON; plus `MESSAGE_OVERHEAD_TOKENS` per message,
    `MEDIA_PART_TOKENS` per non-text part, and the completion reserve once per requested choice (`n`).
    """
    size = 0
    media = 0
    for message in request.messages:
        content = message.content
        if type(content) is str and not (message.refusal or message.tool_calls):
            # The usual message, its text alone. An ASCII text (known without looking at it) is as long in
            # UTF-8: no copy to count its bytes.
            size += len(content) if content.isascii() else len(content.encode("utf-8"))
            continue
        text = content if type(content) is str else message.text()
        size += _utf8_len(text)
        if message.refusal:
            size += _utf8_len(message.refusal)
        for call in message.tool_calls:
            size += _utf8_len(call.name) + _utf8_len(call.arguments)
        if isinstance(content, list):
            media += sum(1 for part in content if not isinstance(part, TextPart))
    for tool in request.tools:
        size += _utf8_len(_json({"name": tool.name, "description": tool.description, "parameters": tool.parameters}))
    if request.response_format is not None and request.response_format.schema is not None:
        size += _utf8_len(_json(request.response_format.schema))
    prompt = -(-size // _BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(request.messages)
    return prompt + MEDIA_PART_TOKENS * media + _completion_reserve(request) * max(request.n or 1, 1)


def _completion_reserve(request: LLMRequest) -> int:
    if request.max_completion_tokens is not None:
        return request.max_completion_tokens
    if request.max_tokens is not None:
        return request.max_tokens
    return DEFAULT_COMPLETION_RESERVE


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def tokens_used(usage: Usage | None) -> int | None:
    """The tokens a response consumed, for `Permit.release`; None when the provider reported nothing."""
    if usage is None:
        return None
    return usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens) or None


@dataclass(frozen=True, slots=True)
class Limits:
    """A deployment's capacity; None means unlimited."""

    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    @classmethod
    def of(cls, deployment: Deployment) -> Limits:
        return cls(max_concurrency=deployment.max_concurrency, rpm=deployment.rpm, tpm=deployment.tpm)

    def share(self, replicas: int) -> Limits:
        """One of `replicas` replicas' part of these limits: each divided by the count, rounded down (at
        least 1), so that the replicas together stay within them."""
        if replicas <= 1:
            return self
        return Limits(*(None if value is None else max(value // replicas, 1) for value in self._values()))

    def _values(self) -> tuple[int | None, int | None, int | None]:
        return self.max_concurrency, self.rpm, self.tpm


@dataclass(slots=True)
class _Admission:
    at: float
    tokens: int
    in_window: bool = True


class Permit:
    """One admitted request: holds a concurrency slot until released.

    `release()` frees the slot once; the first call that passes `used_tokens` (before or after the
    slot was freed) replaces the estimate in the TPM window, so a `finally: permit.release()` and a
    `permit.release(tokens_used(usage))` on the success path may both run, in either order.
    """

    __slots__ = ("_admission", "_corrected", "_limiter", "_released")

    def __init__(self, limiter: DeploymentLimiter, admission: _Admission) -> None:
        self._limiter = limiter
        self._admission = admission
        self._released = False
        self._corrected = False

    @property
    def tokens(self) -> int:
        """The tokens this request counts for in the TPM window: the estimate, or the reported usage."""
        return self._admission.tokens

    @property
    def released(self) -> bool:
        return self._released

    def release(self, used_tokens: int | None = None) -> None:
        if not self._released:
            self._released = True
            self._limiter._free_slot()
        if used_tokens is not None and not self._corrected:
            self._corrected = True
            # Never raises: this runs on exit paths, where an error would hide the original one.
            self._limiter._correct(self._admission, max(used_tokens, 0))


class DeploymentLimiter:
    """Concurrency, RPM and TPM limits and 429 pauses of one deployment. Never blocks, never sleeps."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._window: deque[_Admission] = deque()
        self._window_tokens = 0
        self._in_flight = 0
        self._paused_until = -math.inf

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def fits(self, tokens: int) -> bool:
        """Whether a request of `tokens` can ever be admitted: False when it exceeds the whole TPM."""
        return self.limits.tpm is None or tokens <= self.limits.tpm

    def try_acquire(self, tokens: int) -> Permit | None:
        """Admit a request estimated at `tokens` now, or return None if any limit has no room."""
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, got {tokens}")
        if self.room_in(tokens) > 0:
            return None
        return Permit(self, self._count(tokens))

    def record(self, tokens: int) -> Permit:
        """Count a request admitted without asking this limiter again: by the replicas' shared state (so
        that it still knows this replica's own traffic), or right after `room_in` said yes."""
        return Permit(self, self._count(tokens))

    def room_in(self, tokens: int) -> float:
        """Seconds until `try_acquire(tokens)` could succeed if nothing else changes.

        0 when it would succeed now; `math.inf` when only a release can help (concurrency full) or
        nothing can (`tokens` above the whole TPM, see `fits`).
        """
        max_concurrency = self.limits.max_concurrency
        if (max_concurrency is not None and self._in_flight >= max_concurrency) or not self.fits(tokens):
            return math.inf
        now = self._clock()
        self._prune(now)
        return max(self._paused_until - now, self._rpm_wait(now), self._tpm_wait(now, tokens), 0.0)

    def pause(self, seconds: float) -> None:
        """Admit nothing for `seconds` (an upstream 429's Retry-After); never shortens a longer pause."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        return max(self._paused_until - self._clock(), 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The limiter's state for /health and /metrics."""
        self._prune(self._clock())
        return {
            "limits": {
                "max_concurrency": self.limits.max_concurrency,
                "rpm": self.limits.rpm,
                "tpm": self.limits.tpm,
            },
            "in_flight": self._in_flight,
            "requests_last_minute": len(self._window),
            "tokens_last_minute": self._window_tokens,
            "paused_for": self.paused_for(),
        }

    def _rpm_wait(self, now: float) -> float:
        rpm = self.limits.rpm
        if rpm is None or len(self._window) < rpm:
            return 0.0
        # The count drops below rpm when the admission at this index leaves the window.
        return self._window[len(self._window) - rpm].at + WINDOW_SECONDS - now

    def _tpm_wait(self, now: float, tokens: int) -> float:
        tpm = self.limits.tpm
        if tpm is None:
            return 0.0
        excess = self._window_tokens + tokens - tpm
        if excess <= 0:
            return 0.0
        for admission in self._window:
            excess -= admission.tokens
            if excess <= 0:
                return admission.at + WINDOW_SECONDS - now
        return math.inf  # unreachable for tokens that fit(): an empty window has room for them

    def _prune(self, now: float) -> None:
        cutoff = now - WINDOW_SECONDS
        window = self._window
        while window and window[0].at <= cutoff:
            admission = window.popleft()
            admission.in_window = False
            self._window_tokens -= admission.tokens

    def _count(self, tokens: int) -> _Admission:
        admission = _Admission(self._clock(), tokens)
        self._window.append(admission)
        self._window_tokens += tokens
        self._in_flight += 1
        return admission

    def _free_slot(self) -> None:
        self._in_flight -= 1

    def _correct(self, admission: _Admission, used_tokens: int) -> None:
        self._prune(self._clock())
        if admission.in_window:
            self._window_tokens += used_tokens - admission.tokens
        admission.tokens = used_tokens
