"""OpenRouter: OpenAI-compatible, plus attribution headers.

Its stream quirks (`: OPENROUTER PROCESSING` comment lines, an error event with a string code inside
a 200 stream, an `error` key in a 200 body, a usage chunk with an empty choice) are handled by the
shared SSE decoder and codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import ClassVar

from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.base import ErrorDetail
from llm_service.core.llm.openai_compat import OpenAICompatibleClient

# What OpenRouter's moderation puts in `error.metadata` when it flags a request (403).
_MODERATION_KEYS = ("reasons", "flagged_input")


class OpenRouterClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.OPENROUTER
    header_settings: ClassVar[Mapping[str, str]] = {"HTTP-Referer": "http_referer", "X-Title": "app_title"}

    @override
    def _is_content_filter(self, status: int | None, detail: ErrorDetail | None) -> bool:
        metadata = detail.metadata if detail is not None else None
        flagged = (
            status == HTTPStatus.FORBIDDEN and metadata is not None and any(k in metadata for k in _MODERATION_KEYS)
        )
        return flagged or super()._is_content_filter(status, detail)
