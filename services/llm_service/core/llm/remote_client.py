"""Any OpenAI-compatible server: vLLM, Ollama, or another instance of this service.

The key is optional (a local server often has none), and the usage chunk is only requested when the
client asks for it, since older servers reject `stream_options`.
"""

from __future__ import annotations

from typing import ClassVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class RemoteClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.REMOTE
    always_include_usage: ClassVar[bool] = False
    api_key_required: ClassVar[bool] = False
