"""OpenAI: the reference OpenAI-compatible provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class OpenAIClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.OPENAI
    header_settings: ClassVar[Mapping[str, str]] = {
        "OpenAI-Organization": "org_id",
        "OpenAI-Project": "project_id",
    }
