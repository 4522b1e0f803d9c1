"""OpenRouter: OpenAI-compatible, plus attribution headers.

Its stream quirks (`: OPENROUTER PROCESSING` comment lines, an error event with a string code inside
a 200 stream, an `error` key in a 200 body, a usage chunk with an empty choice) are handled by the
shared SSE decoder and codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class OpenRouterClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.OPENROUTER
    header_settings: ClassVar[Mapping[str, str]] = {"HTTP-Referer": "http_referer", "X-Title": "app_title"}
