"""OpenRouter: OpenAI-compatible, plus attribution headers.

Its stream quirks (`: OPENROUTER PROCESSING` comment lines, an error event with a string code inside
a 200 stream, an `error` key in a 200 body) are handled by the shared SSE decoder and codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import OpenRouterSettings
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class OpenRouterClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.OPENROUTER
    settings: OpenRouterSettings

    @override
    def _extra_headers(self) -> Mapping[str, str]:
        headers = {}
        if self.settings.http_referer:
            headers["HTTP-Referer"] = self.settings.http_referer
        if self.settings.app_title:
            headers["X-Title"] = self.settings.app_title
        return headers
