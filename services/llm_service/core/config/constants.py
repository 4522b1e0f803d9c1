"""Names and numbers every layer shares: provider IDs, retryable statuses, default timeouts.

Provider names and HTTP status codes are spelled here once; `factory.py` and `retry.py` refer to
these constants, never to literals.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Literal


class ProviderID(StrEnum):
    """The providers the service can route to; the value is the `<provider>/` model prefix."""

    OPENAI = "openai"
    OPENROUTER = "openrouter"
    AZURE_OPENAI = "azure_openai"
    VERTEX_AI = "vertex_ai"
    REMOTE = "remote"


RetryableStatusCodes: frozenset[int] = frozenset(
    {
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.INTERNAL_SERVER_ERROR,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.GATEWAY_TIMEOUT,
    }
)
"""Upstream statuses worth another attempt (same or next deployment)."""


@dataclass(frozen=True, slots=True)
class DefaultTimeouts:
    """Upstream timeouts in seconds: connect, between reads, and for a whole non-streamed call."""

    connect: float = 10.0
    read: float = 120.0
    total: float = 600.0


#: How tool-call ids sent to a provider must look: `any` (the OpenAI family, Anthropic) or `alnum9`
#: (exactly 9 letters and digits, as Mistral demands). See core/llm/tool_ids.py.
ToolCallIdFormat = Literal["any", "alnum9"]
