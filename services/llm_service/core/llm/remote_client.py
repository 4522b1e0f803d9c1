"""Any OpenAI-compatible server: vLLM, Ollama, or another instance of this service.

The key is optional (a local server often has none), and the usage chunk is only requested when the
client asks for it, since older servers reject `stream_options`. A deployment declared to accept an
assistant prefix is asked to continue one with vLLM's `continue_final_message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class RemoteClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.REMOTE
    always_include_usage: ClassVar[bool] = False
    api_key_required: ClassVar[bool] = False
    #: vLLM's (and SGLang's) way to continue the final assistant message instead of answering it.
    continuation_fields: ClassVar[Mapping[str, Any]] = {"continue_final_message": True, "add_generation_prompt": False}
