"""OpenAI: the reference OpenAI-compatible provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import OpenAISettings
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class OpenAIClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.OPENAI
    settings: OpenAISettings

    @override
    def _extra_headers(self) -> Mapping[str, str]:
        headers = {}
        if self.settings.org_id:
            headers["OpenAI-Organization"] = self.settings.org_id
        if self.settings.project_id:
            headers["OpenAI-Project"] = self.settings.project_id
        return headers
